"""`diffstream subtract` end to end on survey files (issue 12, "done when"): a real DECam
pair and a faithful JWST NIRCam i2d pair, both with string DETECTOR keywords."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffstream.stream.alerts.packets import read_alert_file
from diffstream.stream.cli.main import main
from diffstream.stream.sim.simulate import simulate_pair
from tests.survey_files import write_jwst_i2d

pytestmark = pytest.mark.unit

REAL = Path(__file__).resolve().parents[1] / "data" / "real"


def test_real_decam_pair_runs_end_to_end(tmp_path, caplog):
    """DEC-OBS18c (science) - DEC-OBS04c (template): the files' own headers (DETECTOR a
    string, the long DECam FILTER, no zero point, no EXPNUM), ids from the command line.
    Not the held-out pairing DEC-OBS18e - DEC-OBS04e."""
    out = tmp_path / "out"
    rc = main([
        "subtract", str(REAL / "DEC-OBS18c.fits"), str(REAL / "DEC-OBS04c.fits"),
        "--out", str(out), "--allow-uncalibrated",
        "--visit", "426337", "--exposure-id", "426337",
    ])  # fmt: skip
    assert rc == 0
    assert (out / "alerts.avro").is_file()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "done"
    science = meta["inputs"]["science"]
    assert science["instrument"] == "DECam" and science["band"] == "i"
    assert science["filter"] == "i DECam SDSS c0003 7835.0 1470.0"
    assert science["ids"]["detector"] == 37 and science["ids"]["sources"]["detector"] == "CCDNUM"
    assert science["ids"]["detector_name"] == "S3-177_107419-14-1"
    # The default calibration is a fallback: flagged on both sides, and logged.
    for side in ("science", "template"):
        assert "uncalibrated" in [f["flag"] for f in meta["inputs"][side]["fallbacks"]]
    assert any("no photometric calibration" in r.getMessage() for r in caplog.records)
    alerts = read_alert_file(out / "alerts.avro")
    assert len(alerts) == meta["counts"]["nDiaSources"]
    for alert in alerts:
        src = alert["diaSource"]
        assert (src["band"], src["detector"], src["visit"]) == ("i", 37, 426337)
        assert alert["diaSourceId"] >> 23 == 426337


@pytest.fixture(scope="module")
def jwst_pair(tmp_path_factory):
    pair = simulate_pair(
        seed=21, shape=(256, 256), n_stars=150, star_slope=0.5, n_transients=10,
        n_variables=0, n_saturated=0, n_cosmic_rays=0, n_bad_columns=0, snr_range=(20.0, 60.0),
    )  # fmt: skip
    d = tmp_path_factory.mktemp("jwst")
    sci = write_jwst_i2d(pair.science, d / "jw01234-o001_t001_nircam_clear-f200w_i2d.fits")
    tmpl = write_jwst_i2d(
        pair.template, d / "jw01234-o002_t001_nircam_clear-f200w_i2d.fits", no_data_rows=0
    )
    return pair, sci, tmpl


def test_jwst_i2d_pair_runs_end_to_end_in_njy(jwst_pair, tmp_path):
    """DETECTOR='MULTIPLE', BUNIT='MJy/sr' with PIXAR_SR, SCI/ERR/WHT: exit 0, alerts
    written, and the transients' fluxes come out in nJy (the unit conversion is right)."""
    pair, sci, tmpl = jwst_pair
    out = tmp_path / "out"
    rc = main(["subtract", str(sci), str(tmpl), "--out", str(out), "--exposure-id", "5"])
    assert rc == 0
    meta = json.loads((out / "metadata.json").read_text())
    science = meta["inputs"]["science"]
    assert science["layout"] == "sci-err" and science["calibSource"] == "BUNIT*PIXAR_SR"
    assert science["ids"]["detector"] is None and science["ids"]["detector_name"] == "MULTIPLE"
    assert [f["flag"] for f in science["fallbacks"]] == ["id_ignored"]
    alerts = read_alert_file(out / "alerts.avro")
    assert alerts and all(a["diaSource"]["band"] == "F200W" for a in alerts)
    # Each injected transient found within 2 px: its flux against the truth (nJy).
    xy = np.array([[a["diaSource"]["x"], a["diaSource"]["y"]] for a in alerts])
    ratios, pulls = [], []
    for row in pair.truth:
        d = np.hypot(xy[:, 0] - row["x"], xy[:, 1] - row["y"])
        if d.min() < 2.0:
            src = alerts[int(d.argmin())]["diaSource"]
            ratios.append(src["psfFlux"] / row["flux_diff_njy"])
            pulls.append((src["psfFlux"] - row["flux_diff_njy"]) / src["psfFluxErr"])
    assert len(ratios) >= 8, f"found {len(ratios)} of {len(pair.truth)} transients"
    # A unit error (MJy/sr vs nJy, a missing PIXAR_SR) would be off by orders of magnitude;
    # S/N 20-60 sources measure their flux to 2-5%.
    assert 0.9 < float(np.median(ratios)) < 1.1, ratios
    assert abs(float(np.mean(pulls))) < 5.0 / np.sqrt(len(pulls)), pulls


def test_companion_files_from_the_command_line(tmp_path):
    """--science-variance/--science-variance-kind/--science-mask reach the loader and the
    metadata (DECam CP's oow weight and ood mask beside the image)."""
    from astropy.io import fits

    weight = np.full((256, 256), 1.0 / 45.0**2, dtype=">f4")
    ood = np.zeros((256, 256), dtype=">i2")
    ood[:, :4] = 1
    fits.PrimaryHDU(weight).writeto(tmp_path / "oow.fits")
    fits.PrimaryHDU(ood).writeto(tmp_path / "ood.fits")
    out = tmp_path / "out"
    rc = main([
        "subtract", str(REAL / "DEC-OBS18d.fits"), str(REAL / "DEC-OBS04d.fits"),
        "--out", str(out), "--allow-uncalibrated", "--exposure-id", "9",
        "--science-variance", str(tmp_path / "oow.fits"), "--science-variance-kind", "weight",
        "--science-mask", str(tmp_path / "ood.fits"),
    ])  # fmt: skip
    assert rc == 0
    science = json.loads((out / "metadata.json").read_text())["inputs"]["science"]
    assert science["variance"]["path"] == str(tmp_path / "oow.fits")
    assert science["mask"]["path"] == str(tmp_path / "ood.fits")
    assert len(science["variance"]["sha256"]) == len(science["mask"]["sha256"]) == 64
    with fits.open(out / "difference.fits") as hdul:
        bad = 1 << hdul["MASK"].header["MP_BAD"]
        assert (hdul["MASK"].data[:, :4] & bad).all()


def test_ztf_sciimg_refimg_pair_with_mskimg(tmp_path):
    """ZTF: sciimg (ids from RCID/EXPID, MAGZP, OBSMJD) - refimg, a mskimg for the science."""
    from astropy.io import fits

    from tests.survey_files import ZTF_SOURCE_BIT, write_ztf_refimg, write_ztf_sciimg

    pair = simulate_pair(
        seed=4, shape=(256, 256), n_stars=150, star_slope=0.5, n_transients=6,
        n_variables=0, n_saturated=0, n_cosmic_rays=0, n_bad_columns=0, snr_range=(20.0, 60.0),
    )  # fmt: skip
    sci = write_ztf_sciimg(pair.science, tmp_path / "ztf_sciimg.fits")
    ref = write_ztf_refimg(pair.template, tmp_path / "ztf_refimg.fits")
    bits = np.zeros(pair.science.shape, dtype=">i2")
    for row in pair.truth:  # the pipeline's own source bit on every transient: not a defect
        y, x = int(round(row["y"])), int(round(row["x"]))
        bits[y - 2 : y + 3, x - 2 : x + 3] = ZTF_SOURCE_BIT
    fits.PrimaryHDU(bits).writeto(tmp_path / "ztf_mskimg.fits")
    out = tmp_path / "out"
    rc = main(["subtract", str(sci), str(ref), "--out", str(out),
               "--science-mask", str(tmp_path / "ztf_mskimg.fits")])  # fmt: skip
    assert rc == 0
    meta = json.loads((out / "metadata.json").read_text())
    science = meta["inputs"]["science"]
    assert science["ids"]["sources"] == {"visit": "EXPID", "detector": "RCID",
                                         "exposure_id": "EXPID"}  # fmt: skip
    assert science["fallbacks"] == [] and science["band"] == "r"
    alerts = read_alert_file(out / "alerts.avro")
    xy = np.array([[a["diaSource"]["x"], a["diaSource"]["y"]] for a in alerts]).reshape(-1, 2)
    found = sum(
        bool(len(xy)) and np.hypot(xy[:, 0] - r["x"], xy[:, 1] - r["y"]).min() < 2.0
        for r in pair.truth
    )
    assert found == len(pair.truth)
    assert all(a["diaSource"]["detector"] == 17 for a in alerts)
