"""Real/bogus scores: the diaSource ``reliability`` and ``reliabilityVersion`` fields.

A gradient-boosted tree ensemble (scikit-learn's HistGradientBoostingClassifier, trained by
``benchmarks/train_reliability.py``) over features the pipeline measures for every diaSource
(:func:`features`).  Gradient boosting, not a CNN on the cutouts: the model is a few tens of KB
of thresholds, a feature's role can be read off its splits, and it trains in minutes on two
cores from a few thousand labelled detections (docs/reliability.md).

Run time needs neither scikit-learn nor pickle: the trees are exported to a JSON file shipped
as package data (``models/<version>.json``) and evaluated here in NumPy (:class:`TreeModel`),
equal to scikit-learn's ``predict_proba`` to float64 rounding (tests/unit/test_reliability.py).
:func:`features` is the one place features are computed, for training and at run time alike.

A model that cannot be loaded is never a silent fallback: :func:`load_model` raises
:class:`ReliabilityModelError` and the pipeline step (stream/pipeline/steps.py) logs a WARNING,
flags the task metadata and leaves ``reliability`` null.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from diffstream.jitcore.stampstats import stamp_stats
from diffstream.jitcore.trees import leaf_sums

__all__ = [
    "DEFAULT_MODEL",
    "FEATURE_NAMES",
    "ReliabilityModelError",
    "TreeModel",
    "export_trees",
    "features",
    "load_model",
    "model_path",
]

DEFAULT_MODEL = "diffstream-gbt-1"

# Every feature is a ratio, a flag or an S/N: nothing depends on the flux unit (counts or
# nJy) or the pixel scale, so one model serves calibrated and uncalibrated exposures.
FEATURE_NAMES: tuple[str, ...] = (
    "snr",  # detection S/N (score peak)
    "psfSnr",  # |psfFlux| / psfFluxErr
    "apOverPsf",  # apFlux / psfFlux (12 px aperture against the PSF fit)
    "psfChi2Red",  # psfChi2 / psfNdata
    "sizeRatio",  # (ixx + iyy) / (ixxPSF + iyyPSF): sharp cosmic rays < 1, blends > 1
    "ellipticity",  # |(ixx - iyy, 2 ixy)| / (ixx + iyy): columns and trails
    "shapeFlag",
    "centroidFlag",
    "isNegative",
    "isDipole",
    "dipoleBalance",  # |dipoleFluxDiff| / (2 dipoleMeanFlux): 0 balanced lobes, 1 one lobe
    "dipoleLengthPsf",  # dipoleLength / PSF sigma (both from the schema's arcsec fields)
    "dipoleChi2Red",  # dipoleChi2 / dipoleNdata
    "templateSnr",  # templateFlux / templateFluxErr, signed: the light under the source
    "scienceSnr",  # scienceFlux / scienceFluxErr, signed
    "fluxFraction",  # |psfFlux| / (|psfFlux| + |templateFlux|): a star residual is small
    "extendedness",
    "pixelFlags_bad",
    "pixelFlags_cr",
    "pixelFlags_saturated",
    "pixelFlags_saturatedCenter",
    "pixelFlags_interpolated",
    "pixelFlags_interpolatedCenter",
    "pixelFlags_edge",
    "pixelFlags_suspect",
    "negFraction",  # footprint pixels of the opposite polarity below -2 sigma, fraction
    "oppositeFluxRatio",  # opposite-polarity over same-polarity S/N sum within 3 PSF sigma
    "peakConcentration",  # brightest pixel / (PSF peak fraction x psfFlux): ~1 for a PSF
    "badPixelFraction",  # unusable (non-finite or zero-variance) pixels in the stamp
)

# Footprint statistics reach this many PSF sigmas (the stamp's half-size is capped so that a
# very wide PSF cannot make it huge).
_CORE_SIGMAS = 2.0
_OUTER_SIGMAS = 3.0
_MAX_HALF = 15


class ReliabilityModelError(RuntimeError):
    """The model file is missing, unreadable or inconsistent with :data:`FEATURE_NAMES`."""


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a / b
    r[~np.isfinite(r)] = np.nan  # a zero or missing denominator is "not measured"
    return r


def features(
    rows: np.ndarray,
    dia_sources: Sequence[Mapping[str, Any]],
    difference: np.ndarray,
    difference_variance: np.ndarray,
) -> np.ndarray:
    """The (n, len(FEATURE_NAMES)) float64 feature matrix of ``dia_sources`` (schema dicts)
    on the difference image they were measured on; ``rows`` are the same sources'
    measurement rows (jitcore.measure.MEASURE_DTYPE, pixel units), which give the stamp's
    centre and the PSF's size in pixels.  Fields that are null give NaN, which the trees
    route as they learned to."""
    n = len(dia_sources)
    if len(rows) != n:
        raise ValueError(f"rows ({len(rows)}) and dia_sources ({n}) must be aligned")
    cols: dict[str, np.ndarray] = {}

    def col(key: str) -> np.ndarray:
        # A null field (None) and a missing key become NaN: NumPy converts None so.
        return np.array([s.get(key) for s in dia_sources], dtype=np.float64)

    psf_flux, psf_err = col("psfFlux"), col("psfFluxErr")
    cols["snr"] = col("snr")
    cols["psfSnr"] = _ratio(np.abs(psf_flux), psf_err)
    cols["apOverPsf"] = _ratio(col("apFlux"), psf_flux)
    cols["psfChi2Red"] = _ratio(col("psfChi2"), col("psfNdata"))
    ixx, iyy, ixy = col("ixx"), col("iyy"), col("ixy")
    pxx, pyy = col("ixxPSF"), col("iyyPSF")
    cols["sizeRatio"] = _ratio(ixx + iyy, pxx + pyy)
    cols["ellipticity"] = _ratio(np.hypot(ixx - iyy, 2.0 * ixy), ixx + iyy)
    for name, key in (
        ("shapeFlag", "shape_flag"),
        ("centroidFlag", "centroid_flag"),
        ("isNegative", "isNegative"),
        ("isDipole", "isDipole"),
    ):
        cols[name] = col(key)
    mean, diff = col("dipoleMeanFlux"), col("dipoleFluxDiff")
    cols["dipoleBalance"] = _ratio(np.abs(diff), 2.0 * np.abs(mean))
    psf_sigma_sky = np.sqrt(0.5 * (pxx + pyy))  # arcsec (the schema's moments are arcsec^2)
    cols["dipoleLengthPsf"] = _ratio(col("dipoleLength"), psf_sigma_sky)
    cols["dipoleChi2Red"] = _ratio(col("dipoleChi2"), col("dipoleNdata"))
    tflux = col("templateFlux")
    cols["templateSnr"] = _ratio(tflux, col("templateFluxErr"))
    cols["scienceSnr"] = _ratio(col("scienceFlux"), col("scienceFluxErr"))
    cols["fluxFraction"] = _ratio(np.abs(psf_flux), np.abs(psf_flux) + np.abs(tflux))
    cols["extendedness"] = col("extendedness")
    for name in FEATURE_NAMES:
        if name.startswith("pixelFlags_"):
            cols[name] = col(name)
    cols.update(_footprint_stats(rows, psf_flux, difference, difference_variance))
    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    for j, name in enumerate(FEATURE_NAMES):
        out[:, j] = cols[name]
    return out


def _footprint_stats(
    rows: np.ndarray,
    psf_flux: np.ndarray,
    difference: np.ndarray,
    difference_variance: np.ndarray,
) -> dict[str, np.ndarray]:
    """Pixel statistics of each source's stamp of the difference, in S/N units of the
    source's own polarity (so a negative source is measured like a positive one):
    diffstream.jitcore.stampstats, one Numba pass over all stamps (a NumPy loop per source
    was 0.08 s of a crowded 4k exposure)."""
    sigma = np.sqrt(0.5 * (rows["ixxPSF"] + rows["iyyPSF"]))
    return stamp_stats(difference, difference_variance, rows["x"], rows["y"], sigma,
                       rows["isNegative"], psf_flux, core_sigmas=_CORE_SIGMAS,
                       outer_sigmas=_OUTER_SIGMAS, max_half=_MAX_HALF)  # fmt: skip


@dataclass(frozen=True)
class TreeModel:
    """Boosted binary trees as flat arrays (all trees' nodes concatenated, ``roots`` the
    first node of each); P(real) = sigmoid(baseline + sum of the leaves reached)."""

    version: str
    feature_names: tuple[str, ...]
    baseline: float
    roots: np.ndarray  # int64 (n_trees,)
    feature: np.ndarray  # int64, the feature a node splits on
    threshold: np.ndarray  # float64: go left when x <= threshold
    missing_left: np.ndarray  # bool: where NaN goes
    left: np.ndarray  # int64 global node index
    right: np.ndarray
    is_leaf: np.ndarray  # bool
    value: np.ndarray  # float64 leaf values (learning rate included)
    depth: int
    sha256: str = ""
    path: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, sha256: str = "", path: str = "") -> TreeModel:
        trees = data["trees"]
        if not trees:
            raise ReliabilityModelError(f"{path or 'model'}: no trees")
        keys = ("feature", "threshold", "missing_left", "left", "right", "is_leaf", "value")
        flat: dict[str, list[Any]] = {k: [] for k in keys}
        roots = []
        offset = 0
        for t in trees:
            size = len(t["is_leaf"])
            if any(len(t[k]) != size for k in keys):
                raise ReliabilityModelError(f"{path or 'model'}: ragged tree arrays")
            roots.append(offset)
            for k in keys:
                if k in ("left", "right"):
                    flat[k].extend(int(v) + offset for v in t[k])
                else:
                    flat[k].extend(t[k])
            offset += size
        model = cls(
            version=str(data["version"]),
            feature_names=tuple(data["features"]),
            baseline=float(data["baseline"]),
            roots=np.asarray(roots, dtype=np.int64),
            feature=np.asarray(flat["feature"], dtype=np.int64),
            threshold=np.asarray(flat["threshold"], dtype=np.float64),
            missing_left=np.asarray(flat["missing_left"], dtype=bool),
            left=np.asarray(flat["left"], dtype=np.int64),
            right=np.asarray(flat["right"], dtype=np.int64),
            is_leaf=np.asarray(flat["is_leaf"], dtype=bool),
            value=np.asarray(flat["value"], dtype=np.float64),
            depth=int(max(t.get("depth", 0) for t in trees)) or _max_depth(trees),
            sha256=sha256,
            path=path,
        )
        model.check()
        return model

    def check(self) -> None:
        n_nodes = self.is_leaf.size
        inner = ~self.is_leaf
        links_ok = (
            np.all((self.left[inner] >= 0) & (self.left[inner] < n_nodes))
            and np.all((self.right[inner] >= 0) & (self.right[inner] < n_nodes))
            and np.all((self.feature[inner] >= 0) & (self.feature[inner] < len(self.feature_names)))
        )
        if not links_ok:
            raise ReliabilityModelError(f"{self.path or 'model'}: node links out of range")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(real) for each row of ``x`` (n, n_features), in [0, 1]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            msg = f"features must have shape (n, {len(self.feature_names)}), got {x.shape}"
            raise ValueError(msg)
        n = x.shape[0]
        if n == 0:
            return np.zeros(0)
        # Every row down every tree in one Numba pass (jitcore.trees), the same sums as
        # NumPy walking all trees a level at a time.
        raw = self.baseline + leaf_sums(
            x, roots=self.roots, feature=self.feature, threshold=self.threshold,
            missing_left=self.missing_left, left=self.left, right=self.right,
            is_leaf=self.is_leaf, value=self.value, depth=self.depth,
        )  # fmt: skip
        return 1.0 / (1.0 + np.exp(-raw))


def _max_depth(trees: Sequence[Mapping[str, Any]]) -> int:
    depth = 0
    for t in trees:
        stack = [(0, 0)]
        while stack:
            i, d = stack.pop()
            if t["is_leaf"][i]:
                depth = max(depth, d)
            else:
                stack += [(int(t["left"][i]), d + 1), (int(t["right"][i]), d + 1)]
    return depth


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Where the shipped model ``name`` lives (package data)."""
    return Path(str(resources.files("diffstream.stream.alerts") / "models" / f"{name}.json"))


@functools.lru_cache(maxsize=4)
def load_model(path: str | None = None) -> TreeModel:
    """The model at ``path`` (None: the shipped :data:`DEFAULT_MODEL`), cached per path.
    Raises ReliabilityModelError naming the file and the reason."""
    p = Path(path) if path else model_path()
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise ReliabilityModelError(f"cannot read reliability model {p}: {exc}") from exc
    try:
        data = json.loads(blob)
        model = TreeModel.from_dict(data, sha256=hashlib.sha256(blob).hexdigest(), path=str(p))
    except ReliabilityModelError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ReliabilityModelError(f"reliability model {p} is malformed: {exc!r}") from exc
    if model.feature_names != FEATURE_NAMES:
        msg = (
            f"reliability model {p} was trained on features {list(model.feature_names)}, "
            f"this code computes {list(FEATURE_NAMES)}"
        )
        raise ReliabilityModelError(msg)
    return model


def export_trees(clf: Any, *, version: str, feature_names: Sequence[str], **extra: Any) -> dict:
    """A fitted binary ``sklearn.ensemble.HistGradientBoostingClassifier`` as the plain dict
    that :meth:`TreeModel.from_dict` reads (and the JSON file holds): no pickle, and nothing
    of scikit-learn is imported here.  ``extra`` items (figures, parameters) ride along.

    It reads the estimator's fitted trees (``_predictors``, ``_baseline_prediction``), which
    scikit-learn does not promise to keep: tests/unit/test_reliability.py compares the
    result with ``predict_proba`` on every installed version."""
    trees = []
    for (pred,) in clf._predictors:  # binary: one tree per boosting iteration
        nodes = pred.nodes
        if np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits are not supported by TreeModel")
        leaf = nodes["is_leaf"].astype(bool)
        trees.append({
            "feature": np.where(leaf, 0, nodes["feature_idx"]).astype(int).tolist(),
            "threshold": np.where(leaf, 0.0, nodes["num_threshold"]).astype(float).tolist(),
            "missing_left": (nodes["missing_go_to_left"].astype(bool) & ~leaf).astype(int).tolist(),
            "left": np.where(leaf, 0, nodes["left"]).astype(int).tolist(),
            "right": np.where(leaf, 0, nodes["right"]).astype(int).tolist(),
            "is_leaf": leaf.astype(int).tolist(),
            "value": np.where(leaf, nodes["value"], 0.0).astype(float).tolist(),
            "depth": int(nodes["depth"].max()),
        })  # fmt: skip
    return {
        "version": version,
        **extra,
        "features": list(feature_names),
        "baseline": float(np.ravel(clf._baseline_prediction)[0]),
        "trees": trees,
    }
