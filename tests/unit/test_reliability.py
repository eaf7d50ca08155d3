"""The real/bogus model: exported trees against scikit-learn, features, loading, the step."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from diffstream.jitcore.measure import MEASURE_DTYPE
from diffstream.stream.alerts.reliability import (
    DEFAULT_MODEL,
    FEATURE_NAMES,
    ReliabilityModelError,
    TreeModel,
    export_trees,
    features,
    load_model,
    model_path,
)
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.steps import score_reliability
from diffstream.stream.provenance.store import full_record
from diffstream.stream.provenance.taskmeta import TaskMetadata

pytestmark = pytest.mark.unit


def _random_features(rng, n, k):
    """Heavy-tailed features with NaNs (the trees' missing-value branches) and exact ties
    on a few values (thresholds sit between bin edges: x == threshold must go left)."""
    x = rng.standard_t(3, size=(n, k))
    x[:, 1] = rng.integers(0, 4, n)  # a few distinct values: ties with the bin thresholds
    x[rng.random((n, k)) < 0.1] = np.nan
    return x


@pytest.mark.parametrize("seed", [0, 1])
def test_exported_trees_equal_sklearn_predict_proba(seed):
    sklearn_ensemble = pytest.importorskip("sklearn.ensemble")
    rng = np.random.default_rng(seed)
    k = 7
    x = _random_features(rng, 3000, k)
    logit = np.nan_to_num(x[:, 0]) - 0.5 * np.nan_to_num(x[:, 1]) + np.isnan(x[:, 2])
    y = (logit + rng.logistic(size=len(x)) > 0).astype(int)
    clf = sklearn_ensemble.HistGradientBoostingClassifier(
        max_iter=40, max_leaf_nodes=15, random_state=seed, early_stopping=False
    ).fit(x, y)
    names = tuple(f"f{i}" for i in range(k))
    model = TreeModel.from_dict(
        json.loads(json.dumps(export_trees(clf, version="t", feature_names=names)))
    )
    test = _random_features(np.random.default_rng(seed + 100), 5000, k)
    # Values exactly at thresholds, and beyond every threshold.
    test[:50, 0] = model.threshold[~model.is_leaf][:50] if model.threshold.size > 50 else 0.0
    test[50:60] = np.inf
    test[60:70] = -np.inf
    ours = model.predict(test)
    theirs = clf.predict_proba(test)[:, 1]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert np.all((ours >= 0) & (ours <= 1))
    # The model must not be trivial: it separates the classes it was fitted on.
    assert np.ptp(ours) > 0.5


def test_shipped_model_loads_and_scores_lie_in_0_1():
    model = load_model()
    assert model.version == DEFAULT_MODEL
    assert model.feature_names == FEATURE_NAMES
    assert model_path().stat().st_size < 200 * 1024
    assert len(model.sha256) == 64
    rng = np.random.default_rng(5)
    x = _random_features(rng, 2000, len(FEATURE_NAMES)) * 10
    p = model.predict(x)
    assert p.shape == (2000,)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    assert model.predict(np.zeros((0, len(FEATURE_NAMES)))).shape == (0,)


def test_predict_checks_the_feature_count():
    with pytest.raises(ValueError, match=r"features must have shape \(n, \d+\)"):
        load_model().predict(np.zeros((3, 2)))


def test_missing_model_file_raises(tmp_path):
    with pytest.raises(ReliabilityModelError, match="cannot read reliability model"):
        load_model(str(tmp_path / "nope.json"))


def test_malformed_model_file_raises(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"version": "x"}')
    with pytest.raises(ReliabilityModelError, match="malformed"):
        load_model(str(path))


def test_model_of_other_features_is_refused(tmp_path):
    data = json.loads(model_path().read_text())
    data["features"] = list(reversed(data["features"]))
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReliabilityModelError, match="trained on features"):
        load_model(str(path))


def test_broken_node_links_are_refused(tmp_path):
    data = json.loads(model_path().read_text())
    tree = data["trees"][0]
    inner = tree["is_leaf"].index(0)
    tree["left"][inner] = 10**6
    path = tmp_path / "links.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReliabilityModelError, match="node links out of range"):
        load_model(str(path))


def _gaussian(shape, x0, y0, sigma, flux):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    norm = flux / (2 * np.pi * sigma**2)
    return norm * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / sigma**2)


def _scene():
    """A point source, a one-pixel spike and a dipole on unit-variance noise."""
    rng = np.random.default_rng(3)
    shape, sigma = (80, 120), 1.5
    img = rng.normal(0.0, 1.0, shape)
    img += _gaussian(shape, 20.0, 40.0, sigma, 400.0)
    img[40, 60] += 120.0
    img += _gaussian(shape, 99.0, 40.0, sigma, 400.0) - _gaussian(shape, 101.0, 40.0, sigma, 400.0)
    var = np.ones(shape)
    rows = np.zeros(3, dtype=MEASURE_DTYPE)
    rows["x"], rows["y"] = [20.0, 60.0, 99.5], [40.0, 40.0, 40.0]
    rows["ixxPSF"] = rows["iyyPSF"] = sigma**2
    srcs = [{"psfFlux": f, "psfFluxErr": 1.0} for f in (400.0, 60.0, 150.0)]
    return rows, srcs, img, var


def test_footprint_features_tell_a_psf_from_a_spike_and_a_dipole():
    rows, srcs, img, var = _scene()
    x = features(rows, srcs, img, var)
    col = {name: x[:, j] for j, name in enumerate(FEATURE_NAMES)}
    # peakConcentration: the central pixel's share of the flux against a Gaussian PSF's.
    assert 0.8 < col["peakConcentration"][0] < 1.2
    assert col["peakConcentration"][1] > 3.0
    assert col["oppositeFluxRatio"][0] < 0.1
    assert col["oppositeFluxRatio"][2] > 0.4
    assert col["negFraction"][0] < 0.05 and col["negFraction"][2] > 0.2
    np.testing.assert_array_equal(col["badPixelFraction"], 0.0)
    # Null fields are NaN, not zero.
    assert np.isnan(col["extendedness"]).all() and np.isnan(col["isDipole"]).all()
    np.testing.assert_allclose(col["psfSnr"], [400.0, 60.0, 150.0])


def test_features_of_a_negative_source_mirror_the_positive_one():
    rows, srcs, img, var = _scene()
    pos = features(rows[:1], srcs[:1], img, var)
    neg_rows = rows[:1].copy()
    neg_rows["isNegative"] = True
    neg_src = [{"psfFlux": -400.0, "psfFluxErr": 1.0, "isNegative": True}]
    neg = features(neg_rows, neg_src, -img, var)
    same = [j for j, n in enumerate(FEATURE_NAMES) if n != "isNegative"]
    np.testing.assert_allclose(neg[:, same], pos[:, same], equal_nan=True)


def test_features_need_aligned_rows():
    rows, srcs, img, var = _scene()
    with pytest.raises(ValueError, match="must be aligned"):
        features(rows[:2], srcs, img, var)


def test_step_fills_the_fields_and_records_the_model():
    rows, srcs, img, var = _scene()
    meta = TaskMetadata()
    score_reliability(rows, srcs, img, var, settings=Settings(), meta=meta)
    item = meta.get("reliability", step=meta.name)
    model = load_model()
    assert item == {"status": "ok", "model": model.version, "sha256": model.sha256,
                    "path": model.path}  # fmt: skip
    assert all(0.0 <= s["reliability"] <= 1.0 for s in srcs)
    assert {s["reliabilityVersion"] for s in srcs} == {DEFAULT_MODEL}
    # The metadata topic's full record names the model too.
    assert full_record(meta)["reliability"] == item


def test_step_without_a_model_warns_flags_and_leaves_null(tmp_path, caplog):
    rows, srcs, img, var = _scene()
    meta = TaskMetadata()
    settings = Settings(reliability_model=str(tmp_path / "gone.json"))
    with caplog.at_level(logging.WARNING):
        score_reliability(rows, srcs, img, var, settings=settings, meta=meta)
    assert any("reliability left null" in r.getMessage() for r in caplog.records)
    item = meta.get("reliability", step=meta.name)
    assert item["status"] == "failed" and item["flag"] == "reliability_model_unavailable"
    assert all("reliability" not in s for s in srcs)


def test_step_off():
    rows, srcs, img, var = _scene()
    meta = TaskMetadata()
    score_reliability(rows, srcs, img, var, settings=Settings(reliability=False), meta=meta)
    assert meta.get("reliability", step=meta.name) == {"status": "off"}
    assert all("reliability" not in s for s in srcs)
