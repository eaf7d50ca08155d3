"""Survey inputs (issue 12): real DECam headers, faithful JWST i2d and ZTF files, companion
variance/mask files, ids, bands and the fallbacks' flags."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from diffstream.stream.io import surveys
from diffstream.stream.io.calib import photo_calib_from_header
from diffstream.stream.io.companions import read_mask_file, read_variance_file
from diffstream.stream.io.fitsio import load_exposure
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.sim.simulate import simulate_pair
from tests.survey_files import (
    NJY_PER_MJYSR,
    PIXAR_SR,
    ZTF_SATURATED_BIT,
    ZTF_SOURCE_BIT,
    write_jwst_i2d,
    write_ztf_sciimg,
)

pytestmark = pytest.mark.unit

REAL = Path(__file__).resolve().parents[1] / "data" / "real"


def fallback_flags(info):
    return [f["flag"] for f in info.get("fallbacks", [])]


# --- header conventions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        ({"INSTRUME": "DECam"}, "DECam"),
        ({"FILTER": "i DECam SDSS c0003 7835.0 1470.0"}, "DECam"),
        ({"CCDNUM": 37, "DETPOS": "N6"}, "DECam"),
        ({"TELESCOP": "JWST", "INSTRUME": "NIRCAM"}, "JWST"),
        ({"INSTRUME": "ZTF/MOSAIC"}, "ZTF"),
        ({"FILTER": "ZTF_g"}, "ZTF"),
        ({"INSTRUME": "LSSTCam"}, "LSST"),
        ({"INSTRUME": "WFC3", "FILTER": "F160W"}, None),
        ({}, None),
    ],
)
def test_instrument_of(cards, expected):
    assert surveys.instrument_of(cards) == expected


@pytest.mark.parametrize(
    ("filt", "instrument", "band"),
    [
        ("i DECam SDSS c0003 7835.0 1470.0", "DECam", "i"),
        ("Y DECam c0005 10095.0 1130.0", "DECam", "y"),
        ("VR DECam c0007 6300.0 2600.0", "DECam", "VR DECam c0007 6300.0 2600.0"),
        ("ZTF_r", "ZTF", "r"),
        ("r_57", "LSST", "r"),
        ("g", None, "g"),
        ("R", None, "R"),  # Johnson/Cousins R is not SDSS r
        ("F200W", "JWST", "F200W"),
    ],
)
def test_band_is_normalised_where_the_filter_is_known(filt, instrument, band):
    assert surveys.band_of({"FILTER": filt}, instrument) == (band, filt)


def test_no_filter_gives_no_band():
    assert surveys.band_of({}, None) == (None, None)
    assert surveys.band_of({"FILTER": "  "}, None) == (None, None)


def test_decam_ids_come_from_ccdnum_and_expnum_without_a_warning(caplog):
    info: dict = {}
    header = {"DETECTOR": "S3-177_107419-14-1", "CCDNUM": 37, "EXPNUM": 426337}
    with caplog.at_level(logging.WARNING):
        ids = surveys.header_ids(header, instrument="DECam", given={}, path="f", info=info)
    assert ids == {"visit": 426337, "detector": 37, "exposure_id": 426337}
    assert info["id_sources"] == {"visit": "EXPNUM", "detector": "CCDNUM", "exposure_id": "EXPNUM"}
    assert info["detector_name"] == "S3-177_107419-14-1"
    assert "fallbacks" not in info and not caplog.records


@pytest.mark.parametrize("key", ["VISIT", "DETECTOR", "EXPID"])
@pytest.mark.parametrize("value", ["MULTIPLE", 12.5, "S3-177_107419-14-1"])
def test_a_non_integer_id_is_ignored_with_a_warning_and_a_flag(key, value, caplog):
    info: dict = {}
    with caplog.at_level(logging.WARNING, logger="diffstream.stream.io.surveys"):
        ids = surveys.header_ids({key: value}, instrument=None, given={}, path="f.fits", info=info)
    assert set(ids.values()) == {None}
    assert fallback_flags(info) == ["id_ignored"]
    assert info["fallbacks"][0]["keyword"] == key
    assert any(key in r.getMessage() and "f.fits" in r.getMessage() for r in caplog.records)


def test_a_given_id_wins_and_silences_the_header():
    info: dict = {}
    ids = surveys.header_ids(
        {"DETECTOR": "MULTIPLE", "EXPID": 5},
        instrument="JWST",
        given={"detector": 3, "exposure_id": 9},
        path="f",
        info=info,
    )
    assert ids == {"visit": None, "detector": 3, "exposure_id": 9}
    assert info["id_sources"]["detector"] == "argument"
    assert "fallbacks" not in info


# --- calibration -----------------------------------------------------------------------------


def test_jwst_surface_brightness_calibration():
    calib, source = photo_calib_from_header({"BUNIT": "MJy/sr", "PIXAR_SR": 2.0e-14})
    # 1 MJy/sr over 2e-14 sr = 1e6 Jy * 2e-14 = 2e-8 Jy = 20 nJy.
    assert calib == pytest.approx(20.0) and source == "BUNIT*PIXAR_SR"


def test_jwst_surface_brightness_without_pixel_area_is_uncalibrated():
    assert photo_calib_from_header({"BUNIT": "MJy/sr"}) == (None, "none")


@pytest.mark.parametrize("value", [0.0, -1e-14, "big"])
def test_bad_pixel_area_is_refused(value):
    with pytest.raises(BadExposure, match="PIXAR_SR"):
        photo_calib_from_header({"BUNIT": "MJy/sr", "PIXAR_SR": value})


def test_magzpt_is_a_zero_point():
    calib, source = photo_calib_from_header({"MAGZPT": 31.4 - 2.5})
    assert calib == pytest.approx(10.0) and source == "MAGZPT"


# --- the real DECam files ----------------------------------------------------------------------


def test_real_decam_file_loads_with_its_own_header(caplog):
    with caplog.at_level(logging.WARNING):
        exp = load_exposure(REAL / "DEC-OBS18c.fits", allow_uncalibrated=True)
    assert exp.info["instrument"] == "DECam"
    assert exp.detector == 37 and exp.info["id_sources"]["detector"] == "CCDNUM"
    assert exp.info["detector_name"] == "S3-177_107419-14-1"
    assert exp.visit is None and exp.exposure_id is None  # no EXPNUM in these cut-outs
    assert exp.band == "i" and exp.info["filter"].startswith("i DECam SDSS")
    assert exp.info["timesys"] == "UTC (DECam convention)"
    # MJD-OBS (UTC) + EXPTIME/2, on the TAI scale: 37 s of leap seconds in 2018.
    expected = 58334.39133794 + 165.0 / 86400.0 + 37.0 / 86400.0
    assert exp.midpoint_mjd_tai == pytest.approx(expected, abs=1e-7)
    assert exp.photo_calib is None and fallback_flags(exp.info) == ["uncalibrated"]
    assert any("no photometric calibration" in r.getMessage() for r in caplog.records)


def test_real_decam_with_weight_and_mask_companions(tmp_path):
    """The Community Pipeline's ooi + oow + ood triple: a weight map and a nonzero mask."""
    image = REAL / "DEC-OBS04c.fits"
    weight = np.full((256, 256), 1.0 / 40.0**2, dtype=">f4")
    weight[:, :3] = 0.0  # no exposure here
    ood = np.zeros((256, 256), dtype=">i2")
    ood[100, 50:60] = 5  # a cosmic ray, say
    fits.PrimaryHDU(weight).writeto(tmp_path / "oow.fits")
    fits.PrimaryHDU(ood).writeto(tmp_path / "ood.fits")
    exp = load_exposure(
        image,
        allow_uncalibrated=True,
        measure_psf=False,
        variance_path=tmp_path / "oow.fits",
        variance_kind="weight",
        mask_path=tmp_path / "ood.fits",
    )
    assert exp.variance[10, 10] == pytest.approx(1600.0)
    no_data, bad = exp.bitmask("NO_DATA"), exp.bitmask("BAD")
    assert (exp.mask[:, :3] & no_data).all() and not (exp.mask[:, 3:] & no_data).any()
    assert (exp.mask[100, 50:60] & bad).all() and int(np.count_nonzero(exp.mask & bad)) == 10
    assert exp.info["variance_from"] == "file (weight)"
    assert exp.info["mask_from"] == "file (nonzero-bad)"
    assert len(exp.info["inputs"]["variance"]["sha256"]) == 64


# --- companions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "stored", "variance"),
    [("variance", 4.0, 4.0), ("sigma", 2.0, 4.0), ("weight", 0.25, 4.0)],
)
def test_variance_kinds(tmp_path, kind, stored, variance):
    path = tmp_path / "noise.fits"
    fits.PrimaryHDU(np.full((5, 6), stored, dtype=">f4")).writeto(path)
    got, sha = read_variance_file(str(path), kind=kind, shape=(5, 6))
    assert got.dtype == np.float32 and np.allclose(got, variance) and len(sha) == 64


def test_zero_weight_is_infinite_variance(tmp_path):
    path = tmp_path / "w.fits"
    fits.PrimaryHDU(np.array([[0.0, -1.0, 2.0]], dtype=">f4")).writeto(path)
    got, _ = read_variance_file(str(path), kind="weight", shape=(1, 3))
    assert np.isinf(got[0, :2]).all() and got[0, 2] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["variance", "sigma"])
def test_negative_noise_map_is_refused(tmp_path, kind):
    path = tmp_path / "n.fits"
    fits.PrimaryHDU(np.array([[1.0, -1.0]], dtype=">f4")).writeto(path)
    with pytest.raises(BadExposure, match=f"{kind} file is negative in 1 pixels"):
        read_variance_file(str(path), kind=kind, shape=(1, 2))


def test_unknown_variance_kind():
    with pytest.raises(ValueError, match="variance kind must be one of"):
        read_variance_file("x.fits", kind="ivar", shape=(1, 1))


def test_companion_shape_must_match(tmp_path):
    path = tmp_path / "n.fits"
    fits.PrimaryHDU(np.ones((4, 4), dtype=">f4")).writeto(path)
    with pytest.raises(BadExposure, match=r"variance file has shape \(4, 4\), the image has"):
        read_variance_file(str(path), kind="variance", shape=(5, 5))


def test_float_mask_file_is_refused(tmp_path):
    path = tmp_path / "m.fits"
    fits.PrimaryHDU(np.ones((2, 2), dtype=">f4")).writeto(path)
    with pytest.raises(BadExposure, match="mask file must hold integers"):
        read_mask_file(str(path), shape=(2, 2), planes={"BAD": 0}, instrument=None)


def test_ztf_mask_bits_keep_sources_unmasked(tmp_path):
    from diffstream.jitcore.masks import DEFAULT_PLANES

    path = tmp_path / "mskimg.fits"
    bits = np.zeros((2, 3), dtype=">i2")
    bits[0, 0] = ZTF_SOURCE_BIT  # a detected star: not a defect
    bits[0, 1] = ZTF_SATURATED_BIT
    bits[0, 2] = ZTF_SOURCE_BIT | (1 << 9)  # dead pixel under a source
    fits.PrimaryHDU(bits).writeto(path)
    mask, _, rule = read_mask_file(
        str(path), shape=(2, 3), planes=dict(DEFAULT_PLANES), instrument="ZTF"
    )
    assert rule == "ztf-bits"
    assert mask[0, 0] == 0 and mask[1].sum() == 0
    assert mask[0, 1] == 1 << DEFAULT_PLANES["SAT"]
    assert mask[0, 2] == 1 << DEFAULT_PLANES["BAD"]


# --- faithful JWST and ZTF files -------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pair():
    return simulate_pair(
        seed=12, shape=(160, 160), n_stars=150, star_slope=0.5, n_transients=4, n_variables=0,
        n_saturated=0, n_cosmic_rays=0, n_bad_columns=0,
    )  # fmt: skip


def test_jwst_i2d_loads_as_sci_err_in_njy(small_pair, tmp_path, caplog):
    sim = small_pair.science
    path = write_jwst_i2d(sim, tmp_path / "jw01234-o001_t001_nircam_clear-f200w_i2d.fits")
    with caplog.at_level(logging.WARNING):
        exp = load_exposure(path)  # JWST files carry no FWHM keyword: the PSF is measured
    assert exp.layout == "sci-err" and exp.info["instrument"] == "JWST"
    assert exp.calib_source == "BUNIT*PIXAR_SR"
    assert exp.photo_calib == pytest.approx(1e15 * PIXAR_SR)
    good = np.isfinite(exp.image)
    # Back in nJy: the simulator's counts times its nJy/count, to float32 precision.
    njy = exp.image[good] * exp.photo_calib
    truth = sim.image[good].astype(np.float64) * sim.photo_calib
    np.testing.assert_allclose(njy, truth, rtol=1e-5, atol=1e-3 * NJY_PER_MJYSR)
    np.testing.assert_allclose(
        exp.variance[good], (sim.variance[good] * (sim.photo_calib / NJY_PER_MJYSR) ** 2),
        rtol=1e-5,
    )  # fmt: skip
    assert (exp.mask[:6] & exp.bitmask("NO_DATA")).all()
    assert not (exp.mask[6:] & exp.bitmask("NO_DATA")).any()
    assert exp.info["variance_from"] == "ERR" and exp.info["mask_from"] == "WHT"
    assert exp.detector is None and exp.info["detector_name"] == "MULTIPLE"
    assert exp.visit == 1  # VISIT='001': a digit string is an integer
    assert exp.band == "F200W" and exp.exposure_time == sim.exptime
    assert exp.info["timesys"] == "UTC"
    assert fallback_flags(exp.info) == ["id_ignored"]
    assert any("DETECTOR='MULTIPLE'" in r.getMessage() for r in caplog.records)


def test_jwst_without_err_sums_the_variance_parts(small_pair, tmp_path):
    path = write_jwst_i2d(small_pair.science, tmp_path / "i2d.fits")
    with fits.open(path) as hdul:
        del hdul["ERR"]
        hdul.writeto(tmp_path / "noerr.fits")
    a = load_exposure(path)
    b = load_exposure(tmp_path / "noerr.fits")
    assert b.info["variance_from"] == "VAR_POISSON+VAR_RNOISE+VAR_FLAT"
    good = np.isfinite(a.variance)
    np.testing.assert_allclose(b.variance[good], a.variance[good], rtol=1e-5)


def test_jwst_sci_err_shape_mismatch(small_pair, tmp_path):
    path = write_jwst_i2d(small_pair.science, tmp_path / "i2d.fits")
    with fits.open(path) as hdul:
        hdul["ERR"].data = hdul["ERR"].data[:-1]
        hdul.writeto(tmp_path / "bad.fits")
    with pytest.raises(BadExposure, match=r"ERR HDU has shape \(159, 160\), SCI has"):
        load_exposure(tmp_path / "bad.fits")


def test_ztf_sciimg_with_mskimg(small_pair, tmp_path):
    sim = small_pair.science
    path = write_ztf_sciimg(sim, tmp_path / "ztf_sciimg.fits")
    bits = np.zeros(sim.shape, dtype=">i2")
    bits[20:25, 20:25] = ZTF_SOURCE_BIT
    bits[40, 40] = ZTF_SATURATED_BIT
    fits.PrimaryHDU(bits).writeto(tmp_path / "ztf_mskimg.fits")
    exp = load_exposure(path, measure_psf=False, mask_path=tmp_path / "ztf_mskimg.fits")
    assert exp.info["instrument"] == "ZTF" and exp.band == "r" and exp.info["filter"] == "ZTF_r"
    assert (exp.visit, exp.detector, exp.exposure_id) == (123456789, 17, 123456789)
    assert exp.calib_source == "MAGZP"
    assert exp.photo_calib == pytest.approx(sim.photo_calib, rel=1e-9)
    assert exp.info["timesys"] == "UTC (ZTF convention)"
    # OBSMJD is the start (UTC): midpoint on TAI = start + EXPTIME/2 + leap seconds.
    start_tai = sim.mjd_obs + 37.0 / 86400.0
    assert exp.midpoint_mjd_tai == pytest.approx(start_tai + sim.exptime / 2 / 86400, abs=1e-7)
    assert exp.mask[40, 40] & exp.bitmask("SAT")
    assert not exp.mask[20:25, 20:25].any()
    assert exp.info["mask_from"] == "file (ztf-bits)" and "fallbacks" not in exp.info


# --- choosing an HDU -------------------------------------------------------------------------


def test_hdu_by_name_picks_the_ccd_and_its_companions(tmp_path):
    """A DECam CP MEF: one CCD per extension; the weight is read from the same EXTNAME."""
    with fits.open(REAL / "DEC-OBS18c.fits") as src:
        data, header = src[0].data, src[0].header.copy()
    primary = fits.PrimaryHDU(header=fits.Header([("INSTRUME", "DECam"), ("EXPNUM", 777)]))
    other = fits.ImageHDU(np.zeros((8, 8), ">f4"), name="S1")
    # CP files are fpacked (.fits.fz): the CCD is a tile-compressed HDU.
    ccd = fits.CompImageHDU(data.astype(np.float32), name="N6", quantize_level=0)
    for card in header.cards:
        if card.keyword.startswith(
            ("CCDNUM", "DETPOS", "FWHM", "CTYPE", "CRPIX", "CRVAL", "CD", "PV")
        ):
            ccd.header[card.keyword] = card.value
    mef = fits.HDUList([primary, other, ccd])
    mef.writeto(tmp_path / "ooi.fits")
    w = [fits.PrimaryHDU(), fits.ImageHDU(np.ones((8, 8), ">f4"), name="S1"),
         fits.ImageHDU(np.full((256, 256), 0.01, ">f4"), name="N6")]  # fmt: skip
    fits.HDUList(w).writeto(tmp_path / "oow.fits")
    exp = load_exposure(
        tmp_path / "ooi.fits", hdu="n6", allow_uncalibrated=True, measure_psf=False,
        variance_path=tmp_path / "oow.fits", variance_kind="weight",
    )  # fmt: skip
    assert exp.info["hdu"] == 2 and exp.shape == (256, 256)
    assert (exp.visit, exp.detector, exp.exposure_id) == (777, 37, 777)
    assert np.allclose(exp.variance, 100.0)
    assert load_exposure(tmp_path / "ooi.fits", hdu="2", allow_uncalibrated=True,
                         measure_psf=False).info["hdu"] == 2  # fmt: skip


@pytest.mark.parametrize(
    ("hdu", "match"),
    [("S9", r"HDU 'S9' requested, the file has"), (7, r"HDU 7 requested, the file has 1 HDUs")],
)
def test_missing_hdu(tmp_path, hdu, match):
    shutil.copy(REAL / "DEC-OBS18d.fits", tmp_path / "a.fits")
    with pytest.raises(BadExposure, match=match):
        load_exposure(tmp_path / "a.fits", hdu=hdu, allow_uncalibrated=True)


def test_first_of_several_ccds_is_read_with_a_flag(tmp_path, caplog):
    with fits.open(REAL / "DEC-OBS18c.fits") as src:
        data, header = src[0].data, src[0].header
        hdus = [fits.PrimaryHDU()]
        for name in ("N6", "N7"):
            hdus.append(fits.ImageHDU(data, header=header, name=name))
        fits.HDUList(hdus).writeto(tmp_path / "mef.fits")
    with caplog.at_level(logging.WARNING):
        exp = load_exposure(tmp_path / "mef.fits", allow_uncalibrated=True, measure_psf=False)
    assert exp.info["hdu"] == 1
    assert "first_hdu_chosen" in fallback_flags(exp.info)
    assert any("2 image HDUs" in r.getMessage() for r in caplog.records)
    one = load_exposure(REAL / "DEC-OBS18c.fits", allow_uncalibrated=True, measure_psf=False)
    assert "first_hdu_chosen" not in fallback_flags(one.info)
