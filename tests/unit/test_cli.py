"""`diffstream subtract` end to end on small simulated pairs: outputs, exit codes, messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from diffstream.stream.alerts.packets import read_alert_file
from diffstream.stream.cli.main import main
from diffstream.stream.sim.simulate import simulate_pair, write_pair

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """A small seeded pair (LSST-style MEF) and its truth."""
    pair = simulate_pair(seed=5, shape=(320, 320), n_stars=60, n_transients=8, n_variables=4)
    d = tmp_path_factory.mktemp("pair")
    sci, tmpl = write_pair(pair, d)
    return pair, sci, tmpl


@pytest.fixture(scope="module")
def first_run(pair_files, tmp_path_factory):
    _, sci, tmpl = pair_files
    out = tmp_path_factory.mktemp("out")
    rc = main(["subtract", str(sci), str(tmpl), "--out", str(out), "--exposure-id", "77"])
    return rc, out


def test_subtract_writes_every_product(first_run):
    rc, out = first_run
    assert rc == 0
    for name in ("alerts.avro", "difference.fits", "score.fits", "metadata.json"):
        assert (out / name).is_file(), name
    with fits.open(out / "difference.fits") as hdul:
        assert [h.name for h in hdul[1:]] == ["IMAGE", "MASK", "VARIANCE", "PSF"]
        assert hdul["IMAGE"].header["CTYPE1"].startswith("RA---")
        assert "MP_NO_DATA" in hdul["MASK"].header
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "done"
    assert meta["counts"]["nDiaSources"] >= 8
    for step in ("load", "warp", "zogy", "detection", "measurement", "alerts"):
        assert f"imageDifference.{step}" in meta["timings"]
    assert set(meta["versions"]) >= {"numpy", "numba", "astropy", "fastavro", "python"}
    assert len(meta["inputs"]["science"]["sha256"]) == 64
    assert meta["config"]["detection_threshold"] == 5.0


def test_external_psf_and_background_files_are_recorded_as_inputs(pair_files, tmp_path):
    import hashlib

    pair, sci, tmpl = pair_files
    psf = tmp_path / "psf.fits"
    fits.PrimaryHDU(pair.science.psf_centre).writeto(psf)
    bkg = tmp_path / "bkg.fits"
    fits.PrimaryHDU(np.zeros(pair.science.image.shape)).writeto(bkg)
    out = tmp_path / "out"
    rc = main(["subtract", str(sci), str(tmpl), "--out", str(out), "--science-psf", str(psf),
               "--science-background", str(bkg)])  # fmt: skip
    assert rc == 0
    inputs = json.loads((out / "metadata.json").read_text())["inputs"]
    for key, path in (("psf", psf), ("background", bkg)):
        assert inputs["science"][key] == {
            "path": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    assert "psf" not in inputs["template"] and len(inputs["science"]["sha256"]) == 64


def _gaussian_stamp(fwhm: float, size: int = 31) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    s = fwhm / 2.3548
    g = np.exp(-(x * x + y * y) / (2 * s * s))
    return g / g.sum()


def test_template_psf_file_is_the_template_psf_used(pair_files, tmp_path):
    # A template PSF 2-4 times as wide as the true one: ignored, the run would measure the true
    # one on the warped template (source "measured", the true width).
    pair, sci, tmpl = pair_files
    wide = 12.0  # px; the simulated PSFs are 3-6 px wide
    psf = tmp_path / "tpsf.fits"
    fits.PrimaryHDU(_gaussian_stamp(wide, 61)).writeto(psf)
    out = tmp_path / "out"
    rc = main(["subtract", str(sci), str(tmpl), "--out", str(out), "--template-psf", str(psf)])
    assert rc == 0
    meta = json.loads((out / "metadata.json").read_text())
    used = meta["psf"]["template"]
    assert used["source"] == "warped", used
    # The warp onto the science grid keeps the width up to the small pixel-scale change.
    assert used["fwhm"] == pytest.approx(wide, rel=0.1), used
    assert meta["inputs"]["template"]["psf"]["path"] == str(psf)


def test_science_background_file_is_added_to_the_science_image(pair_files, tmp_path):
    from diffstream.stream.io.fitsio import load_exposure
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.subtract import subtract_files

    _, sci, tmpl = pair_files
    plain = load_exposure(str(sci))
    ny, nx = plain.image.shape
    # A ramp, so that a constant offset elsewhere could not pass for it.
    bkg_img = (np.arange(nx)[None, :] * 0.5 + np.arange(ny)[:, None] * 0.25).astype(np.float32)
    bkg = tmp_path / "bkg.fits"
    fits.PrimaryHDU(bkg_img).writeto(bkg)
    result = subtract_files(str(sci), str(tmpl), settings=Settings(), science_background=str(bkg))
    # result.science is the exposure as subtracted: its BAD/CR pixels were interpolated
    # (INTRP, stream/pipeline/defects.py), so only the others keep their loaded values.
    intrp = (result.science.mask & result.science.bitmask("INTRP")) != 0
    assert intrp.any() and not np.any(plain.mask & plain.bitmask("INTRP"))
    good = np.isfinite(plain.image) & ~intrp
    np.testing.assert_allclose(
        result.science.image[good], (plain.image + bkg_img)[good], rtol=1e-6, atol=1e-3
    )
    assert result.science.info["background_added"]["path"] == str(bkg)


def test_alerts_read_with_the_official_lsst_schema(first_run, pair_files):
    from lsst.alert.packet import Schema

    _, out = first_run
    lsst = Schema.from_file().definition
    ours = read_alert_file(out / "alerts.avro")
    theirs = read_alert_file(out / "alerts.avro", reader_schema=lsst)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert "diffstreamMetadata" not in b
        assert a["diaSource"] == b["diaSource"]
        assert a["diffstreamMetadata"]["exposureId"] == 77
        assert b["cutoutDifference"][:6] == b"SIMPLE"


def test_ids_and_fluxes_are_stable_across_reruns(first_run, pair_files, tmp_path):
    _, out = first_run
    _, sci, tmpl = pair_files
    rc = main(["subtract", str(sci), str(tmpl), "--out", str(tmp_path), "--exposure-id", "77"])
    assert rc == 0
    a = read_alert_file(out / "alerts.avro")
    b = read_alert_file(tmp_path / "alerts.avro")
    assert [x["diaSourceId"] for x in a] == [x["diaSourceId"] for x in b]
    assert [x["diaSource"]["psfFlux"] for x in a] == [x["diaSource"]["psfFlux"] for x in b]
    ids = np.array([x["diaSourceId"] for x in a])
    assert len(set(ids.tolist())) == len(ids)
    assert np.all(ids >> 23 == 77)  # exposure id in the upper bits (40 exposure bits)


def test_no_work_exit_3_with_metadata(pair_files, tmp_path, capsys):
    _, sci, tmpl = pair_files
    moved = tmp_path / "far_template.fits"
    with fits.open(tmpl) as hdul:
        for hdu in hdul[1:]:
            if "CRVAL1" in hdu.header:
                hdu.header["CRVAL1"] = (hdu.header["CRVAL1"] + 2.0) % 360.0
        hdul.writeto(moved)
    out = tmp_path / "out"
    rc = main(["subtract", str(sci), str(moved), "--out", str(out)])
    assert rc == 3
    assert "template covers 0.0% < required 10%" in capsys.readouterr().err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "no_work" and meta["error"]["kind"] == "no_work"
    assert not (out / "alerts.avro").exists()


def test_missing_file_exit_2_names_the_file(pair_files, tmp_path, capsys):
    _, sci, _ = pair_files
    missing = tmp_path / "nope.fits"
    rc = main(["subtract", str(sci), str(missing), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(missing) in err


def test_corrupt_file_exit_2(pair_files, tmp_path, capsys):
    _, sci, tmpl = pair_files
    broken = tmp_path / "broken.fits"
    broken.write_bytes(tmpl.read_bytes()[:5000])
    rc = main(["subtract", str(sci), str(broken), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert str(broken) in capsys.readouterr().err


def test_uncalibrated_refused_unless_allowed(pair_files, tmp_path, capsys):
    _, sci, tmpl = pair_files
    bare = tmp_path / "bare.fits"
    with fits.open(sci) as hdul:
        for hdu in hdul:
            for key in ("PHOTCALIB", "MAGZP", "MAGZERO", "FLUXMAG0"):
                hdu.header.remove(key, ignore_missing=True, remove_all=True)
        hdul.writeto(bare)
    rc = main(["subtract", str(bare), str(tmpl), "--out", str(tmp_path / "a")])
    assert rc == 2
    assert "PHOTCALIB" in capsys.readouterr().err
    rc = main(
        ["subtract", str(bare), str(tmpl), "--out", str(tmp_path / "b"), "--allow-uncalibrated"]
    )
    assert rc == 0


def test_plain_single_hdu_files(tmp_path):
    pair = simulate_pair(seed=9, shape=(320, 320), n_stars=60, n_transients=8, n_variables=4)
    sci, tmpl = write_pair(pair, tmp_path / "in", layout="plain")
    out = tmp_path / "out"
    assert main(["subtract", str(sci), str(tmpl), "--out", str(out)]) == 0
    alerts = read_alert_file(out / "alerts.avro")
    xy = np.array([[a["diaSource"]["x"], a["diaSource"]["y"]] for a in alerts])
    truth = np.column_stack([pair.truth["x"], pair.truth["y"]])
    bright = pair.truth["snr_expected"] > 10
    found = [np.min(np.hypot(*(xy - t).T)) < 2.0 for t in truth[bright]]
    assert np.mean(found) >= 0.9


def test_variance_scaling_factors_in_metadata(pair_files, tmp_path):
    _, sci, tmpl = pair_files
    out = tmp_path / "out"
    env_cfg = tmp_path / "scale.toml"
    env_cfg.write_text("scale_template_variance = true\n")
    assert main(["subtract", str(sci), str(tmpl), "--out", str(out), "--config", str(env_cfg)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    f = meta["inputVarianceScale"]
    # The simulator writes the true variance: the measured factors are close to 1.
    assert 0.9 < f["science"] < 1.1 and 0.8 < f["template"] < 1.1
    assert 0.9 < meta["varianceScale"]["score"] < 1.15
    assert "imageDifference.scaleTemplateVariance" in meta["timings"]


def test_detect_runs_on_subtracts_own_difference(first_run, tmp_path):
    # difference.fits carries the difference's PSF (HDU "PSF"), so it stands on its own.
    _, out = first_run
    with fits.open(out / "difference.fits") as hdul:
        assert hdul["PSF"].data.sum() == pytest.approx(1.0, rel=1e-5)
    assert main(["detect", str(out / "difference.fits"), "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "metadata.json").read_text())
    first = json.loads((out / "metadata.json").read_text())
    # A PSF matched filter on D finds what the score found, give or take the faintest.
    assert abs(meta["counts"]["nDiaSources"] - first["counts"]["nDiaSources"]) <= max(
        2, 0.2 * first["counts"]["nDiaSources"]
    )


def test_script_returns_mains_code_and_freezes_the_collector_after(monkeypatch):
    # The console script (and python -m diffstream) is main() then gc.freeze() for a fast
    # interpreter exit; the freeze comes after main has returned, never inside it.
    import gc

    from diffstream.stream.cli import main as cli_main

    calls = []
    monkeypatch.setattr(cli_main, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    assert cli_main.script() == 3
    assert calls == ["main", "freeze"]


def test_console_script_and_module_run_script():
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "diffstream"]
    assert ep.value == "diffstream.stream.cli.main:script"
    out = subprocess.run([sys.executable, "-m", "diffstream", "--version"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip()
