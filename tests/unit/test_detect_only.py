"""Detect-only on a pre-subtracted difference: the matched-filter score (NumPy reference),
diffstream.stream.pipeline.detect_only on a simulated difference, and ``diffstream detect``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from diffstream.jitcore.matched_filter import matched_filter_score
from diffstream.jitcore.psf import gaussian_psf
from diffstream.stream.alerts.packets import read_alert_file
from diffstream.stream.cli.main import main
from diffstream.stream.io.outputs import write_planes
from diffstream.stream.ops.errors import (
    EXIT_BAD_INPUT,
    EXIT_NO_WORK,
    EXIT_OK,
    BadExposure,
    NotCalibrated,
)
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.detect_only import detect_difference
from diffstream.stream.sim.simulate import simulate_pair

pytestmark = pytest.mark.unit


# --- matched_filter_score ------------------------------------------------------------------


def score_reference(img, var, bad, psf):
    """Direct sums: S[y, x] = sum_uv P[v, u] D[y+v-h, x+u-h] / sqrt(sum P^2 V), zero outside."""
    ny, nx = img.shape
    k = psf.shape[0]
    h = k // 2
    p = psf / psf.sum()
    use = ~bad & np.isfinite(img) & np.isfinite(var) & (var >= 0)
    d = np.where(use, img, 0.0).astype(np.float64)
    v = np.where(use, var, 0.0).astype(np.float64)
    num = np.zeros((ny, nx))
    den = np.zeros((ny, nx))
    for j in range(ny):
        for i in range(nx):
            for b in range(k):
                for a in range(k):
                    jj, ii = j + b - h, i + a - h
                    if 0 <= jj < ny and 0 <= ii < nx:
                        num[j, i] += p[b, a] * d[jj, ii]
                        den[j, i] += p[b, a] ** 2 * v[jj, ii]
    valid = use & (den > 0)
    return np.where(valid, num / np.sqrt(np.where(valid, den, 1.0)), 0.0), valid


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from([np.float32, np.float64]),
    st.integers(3, 23),
    st.integers(3, 23),
    st.sampled_from([3, 5, 7]),
    st.integers(0, 2**32 - 1),
)
def test_score_matches_reference(dtype, ny, nx, k, seed):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(ny, nx)).astype(dtype)
    var = rng.uniform(0.5, 2.0, (ny, nx)).astype(dtype)
    bad = rng.random((ny, nx)) < 0.1
    img[rng.random((ny, nx)) < 0.05] = np.nan
    psf = gaussian_psf(rng.uniform(0.6, 1.5), k) * rng.uniform(0.5, 3.0)  # any scale
    bad[0, 0] = False
    img[0, 0] = 1.0  # at least one usable pixel
    score, valid = matched_filter_score(img, var, bad, psf)
    ref, ref_valid = score_reference(img, var, bad, psf)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_allclose(score, ref, rtol=1e-4, atol=1e-5)
    assert score.dtype == np.float32


def test_score_is_unit_normal_and_a_source_gives_its_snr():
    """N(0, 1) on noise everywhere, next to masks and at the edges too.  Tolerances are
    5 sigma for ~N/36 independent values (the PSF correlates 4 pi sigma^2 ~ 36 px)."""
    rng = np.random.default_rng(1)
    shape, sigma = (600, 640), 1.7
    var = np.full(shape, 25.0)
    img = rng.normal(size=shape) * 5.0
    bad = np.zeros(shape, bool)
    for y0 in range(100, 600, 100):
        bad[y0 : y0 + 6, :] = True  # masked bands
    psf = gaussian_psf(sigma, 17)
    score, valid = matched_filter_score(img, var, bad, psf)

    def check(values):
        n_eff = values.size / 36.0
        assert abs(values.mean()) < 5 / math.sqrt(n_eff)
        assert abs(values.std() - 1.0) < 5 / math.sqrt(2 * n_eff)

    check(score[valid])
    rows = [y0 + d for y0 in range(100, 600, 100) for d in (-2, -1, 6, 7)]
    check(score[rows, :])  # rows touching the bands
    check(np.concatenate([score[:, :2].ravel(), score[:, -2:].ravel(), score[:2].ravel(),
                          score[-2:].ravel()]))  # fmt: skip
    assert not valid[bad].any() and valid[~bad].all()
    # A noise-free point source at a pixel centre: S = f sqrt(sum P^2) / sigma.
    clean = np.zeros(shape)
    clean[200:217, 150:167] += 1000.0 * psf
    sc, _ = matched_filter_score(clean, var, np.zeros(shape, bool), psf)
    assert sc[208, 158] == pytest.approx(1000.0 * math.sqrt((psf**2).sum()) / 5.0, rel=1e-5)


def test_score_checks():
    img = np.zeros((8, 9))
    bad = np.zeros((8, 9), bool)
    psf = gaussian_psf(1.0, 5)
    with pytest.raises(ValueError, match="image must be 2-D"):
        matched_filter_score(img[0], img[0], bad[0], psf)
    with pytest.raises(TypeError, match="variance must be a float array, got dtype int64"):
        matched_filter_score(img, np.ones((8, 9), np.int64), bad, psf)
    with pytest.raises(ValueError, match=r"shapes must agree: image \(8, 9\), variance \(8, 8\)"):
        matched_filter_score(img, img[:, :8], bad, psf)
    with pytest.raises(TypeError, match="bad must be a bool array"):
        matched_filter_score(img, img, bad.astype(int), psf)
    with pytest.raises(ValueError, match="image must not be empty"):
        matched_filter_score(img[:0], img[:0], bad[:0], psf)
    with pytest.raises(ValueError, match=r"psf must be a square stamp of odd size, got shape"):
        matched_filter_score(img, img, bad, np.ones((4, 4)))
    with pytest.raises(ValueError, match="psf must be finite with a positive sum"):
        matched_filter_score(img, img, bad, -psf)
    with pytest.raises(ValueError, match="no usable pixels"):
        matched_filter_score(img, img, ~bad, psf)


# --- detect_difference on a simulated difference ------------------------------------------


def _write_difference(path, pair, *, psf=True, extra=None, bunit="nJy", mask=None):
    """science - template (same PSF, same grid) in nJy as an LSST-style file."""
    s, t = pair.science, pair.template
    image = s.image * s.photo_calib - t.image * t.photo_calib
    variance = s.variance * s.photo_calib**2 + t.variance * t.photo_calib**2
    header = {"VISIT": 7, "DETECTOR": 3, "EXPID": 4242, "MJD-OBS": 60400.0, "EXPTIME": 30.0}
    header.update(extra or {})
    write_planes(
        path, image=image, variance=variance, mask=s.mask | t.mask if mask is None else mask,
        mask_planes=s.mask_planes, wcs=s.wcs, header=header, bunit=bunit,
    )  # fmt: skip
    if psf:
        with fits.open(path, mode="append") as hdul:
            hdul.append(fits.ImageHDU(s.psf_centre, name="PSF"))
    return path


@pytest.fixture(scope="module")
def sim_difference(tmp_path_factory):
    pair = simulate_pair(
        seed=11, shape=(512, 512), template_shape=(512, 512), science_fwhm=3.0,
        template_fwhm=3.0, template_offset_px=(0.0, 0.0), template_rotation_deg=0.0,
        psf_gradient=0.0, n_transients=40, n_variables=15, n_saturated=0, n_cosmic_rays=0,
        n_bad_columns=0,
    )  # fmt: skip
    # Same grid and PSF: the stars cancel and only the injected sources remain.
    xy = pair.science.wcs.all_world2pix(pair.template.wcs.all_pix2world([[3.0, 500.0]], 0), 0)
    np.testing.assert_allclose(xy, [[3.0, 500.0]], atol=1e-6)
    root = tmp_path_factory.mktemp("detect")
    return pair, _write_difference(root / "difference.fits", pair), root


def test_injected_sources_found_with_correct_fluxes(sim_difference):
    pair, path, _ = sim_difference
    result = detect_difference(path, settings=Settings())
    truth, rows = pair.truth, result.sources
    dist, idx = cKDTree(np.column_stack([rows["x"], rows["y"]])).query(
        np.column_stack([truth["x"], truth["y"]])
    )
    hit = dist < 1.5
    bright = truth["snr_expected"] >= 7
    assert hit[bright].all()  # every injected source above S/N 7
    assert hit.mean() > 0.9
    assert len(rows) - len(set(idx[hit])) <= 1  # false detections in 0.26 Mpx
    pull = (rows["psfFlux"][idx[hit]] - truth["flux_diff_njy"][hit]) / rows["psfFluxErr"][idx[hit]]
    n = pull.size
    assert abs(pull.mean()) < 5 / math.sqrt(n)
    assert 0.75 < pull.std() < 1.25
    neg = truth["flux_diff_njy"][hit] < 0
    np.testing.assert_array_equal(rows["isNegative"][idx[hit]], neg)
    # Alerts: difference cutout only, no science/template fluxes, the file's ids and visit.
    assert len(result.alerts) == len(rows) == len(result.dia_sources)
    alert = result.alerts[0]
    assert alert["cutoutDifference"] and alert["cutoutScience"] is None
    assert alert["cutoutTemplate"] is None
    src = alert["diaSource"]
    assert src["scienceFlux"] is None and src["templateFlux"] is None
    assert src["visit"] == 7 and src["detector"] == 3 and src["diaSourceId"] >> 23 == 4242
    assert alert["diffstreamMetadata"]["templateSha256"] == ""
    meta = result.metadata
    assert meta.get("varianceScale", step=meta.name)["applied"]
    assert meta.get("templateCoverage", step=meta.name) > 0.95


def test_detect_fits_dipoles_on_the_difference(tmp_path):
    """A separated dipole planted in a difference is reported as one diaSource."""
    pair = simulate_pair(
        seed=3, shape=(256, 256), template_shape=(256, 256), science_fwhm=3.0,
        template_fwhm=3.0, template_offset_px=(0.0, 0.0), template_rotation_deg=0.0,
        psf_gradient=0.0, n_saturated=0, n_cosmic_rays=0, n_bad_columns=0, transients=False,
    )  # fmt: skip
    path = _write_difference(tmp_path / "d.fits", pair)
    with fits.open(path, mode="update") as hdul:
        img = hdul["IMAGE"].data
        sig = 3.0 / 2.3548
        for flux, x, y in ((8000.0, 128, 120), (-8000.0, 131, 122)):
            img[y - 8 : y + 9, x - 8 : x + 9] += flux * gaussian_psf(sig, 17)
    result = detect_difference(path, settings=Settings())
    assert result.dipoles.summary["nDipoles"] == 1 and result.dipoles.summary["nMerged"] == 1
    dip = [s for s in result.dia_sources if s["isDipole"]]
    assert len(dip) == 1
    d = dip[0]
    assert d["x"] == pytest.approx(129.5, abs=0.2) and d["y"] == pytest.approx(121.0, abs=0.2)
    assert d["dipoleLength"] == pytest.approx(0.2 * math.hypot(3, 2), rel=0.05)  # arcsec
    assert d["dipoleMeanFlux"] == pytest.approx(8000.0, rel=0.1)
    assert d["dipoleFitAttempted"] and d["dipoleNdata"] > 0


# --- diffstream detect -----------------------------------------------------------------------


def test_cli_detect_writes_products(sim_difference, tmp_path, capsys):
    pair, path, _ = sim_difference
    out = tmp_path / "out"
    assert main(["detect", str(path), "--out", str(out), "--exposure-id", "99"]) == EXIT_OK
    assert "diaSources:" in capsys.readouterr().out
    alerts = read_alert_file(out / "alerts.avro")
    assert len(alerts) > 40 and all(a["diaSource"]["diaSourceId"] >> 23 == 99 for a in alerts)
    with fits.open(out / "score.fits") as hdul:
        assert hdul["IMAGE"].data.shape == (512, 512)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "done" and meta["mode"] == "detect"
    assert meta["counts"]["nDiaSources"] == len(alerts)


def test_external_psf_replaces_the_files(sim_difference, tmp_path):
    pair, _, _ = sim_difference
    # A file whose only PSF information is a wrong keyword (FWHM 5 px instead of 3).
    path = _write_difference(tmp_path / "kw.fits", pair, psf=False, extra={"PSF_FWHM": 5.0})
    psf = tmp_path / "psf.fits"
    fits.PrimaryHDU(pair.science.psf_centre).writeto(psf)
    result = detect_difference(path, settings=Settings(), psf_path=psf)
    assert result.psf.source == "external"
    np.testing.assert_allclose(result.psf.at(0.0, 0.0), pair.science.psf_centre, rtol=1e-12)
    out = tmp_path / "o"
    assert main(["detect", str(path), "--out", str(out), "--psf", str(psf)]) == EXIT_OK
    # Without any PSF information in the file the loader refuses it, and says so.
    bare = _write_difference(tmp_path / "bare.fits", pair, psf=False)
    with pytest.raises(BadExposure, match="with --psf the file still needs a PSF HDU"):
        detect_difference(bare, settings=Settings(psf_from_stars=False), psf_path=psf)


def test_cli_detect_exit_codes(sim_difference, tmp_path, capsys):
    pair, _, _ = sim_difference
    out = tmp_path / "o"
    assert main(["detect", str(tmp_path / "missing.fits"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "file not found" in capsys.readouterr().err
    assert json.loads((out / "metadata.json").read_text())["status"] == "failed"
    # No calibration keyword and no --allow-uncalibrated: bad input.
    raw = _write_difference(tmp_path / "raw.fits", pair, bunit="count")
    assert main(["detect", str(raw), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "no photometric calibration" in capsys.readouterr().err
    assert main(["detect", str(raw), "--out", str(out), "--allow-uncalibrated"]) == EXIT_OK
    # 97% NO_DATA: less usable area than required_template_fraction -> no work.
    mask = np.zeros((512, 512), np.int32)
    mask[:, 15:] = 1 << pair.science.mask_planes["NO_DATA"]
    sparse = _write_difference(tmp_path / "sparse.fits", pair, mask=mask)
    assert main(["detect", str(sparse), "--out", str(out)]) == EXIT_NO_WORK
    assert "no work: difference has usable pixels over" in capsys.readouterr().err
    doc = json.loads((out / "metadata.json").read_text())
    assert doc["status"] == "no_work" and doc["error"]["kind"] == "no_work"


def test_not_calibrated_raises(sim_difference, tmp_path):
    pair, _, _ = sim_difference
    raw = _write_difference(tmp_path / "raw.fits", pair, bunit="count")
    with pytest.raises(NotCalibrated, match="no photometric calibration keyword"):
        detect_difference(raw, settings=Settings())
