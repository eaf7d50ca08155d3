"""Loading exposures from real FITS files written to tmp_path: layouts, WCS, calibration,
PSF sources, metadata, and every way a file can be bad."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from astropy.io import fits

from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.jitcore.psf import gaussian_psf, psf_moments
from diffstream.stream.io import fitsio
from diffstream.stream.io.fitsio import load_exposure
from diffstream.stream.ops.errors import BadExposure, NotCalibrated

pytestmark = pytest.mark.unit

RA0, DEC0 = 150.1, 2.2
SCALE = 0.2 / 3600.0  # 0.2 arcsec per pixel, in degrees
ROT = np.deg2rad(12.0)


# --- builders --------------------------------------------------------------------------------


def cd_matrix():
    return SCALE * np.array([[-np.cos(ROT), np.sin(ROT)], [np.sin(ROT), np.cos(ROT)]])


def wcs_cards(kind="TAN", crpix=(50.5, 40.5)):
    """Header cards for a TAN, TPV, SIP (with inverse) or SIP-noinv WCS."""
    proj = {"TAN": "TAN", "TPV": "TPV", "SIP": "TAN-SIP", "SIP-noinv": "TAN-SIP"}[kind]
    cd = cd_matrix()
    cards = {
        "CTYPE1": f"RA---{proj}",
        "CTYPE2": f"DEC--{proj}",
        "CRVAL1": RA0,
        "CRVAL2": DEC0,
        "CRPIX1": crpix[0],
        "CRPIX2": crpix[1],
        "CD1_1": cd[0, 0],
        "CD1_2": cd[0, 1],
        "CD2_1": cd[1, 0],
        "CD2_2": cd[1, 1],
    }
    if kind == "TPV":
        cards.update(TPV_TERMS)
    if kind.startswith("SIP"):
        cards.update({"A_ORDER": 3, "B_ORDER": 3})
        cards.update({f"A_{p}_{q}": c for (p, q), c in SIP_A.items()})
        cards.update({f"B_{p}_{q}": c for (p, q), c in SIP_B.items()})
        if kind == "SIP":
            ap, bp = _sip_inverse()
            cards.update({"AP_ORDER": 3, "BP_ORDER": 3})
            cards.update({f"AP_{p}_{q}": c for (p, q), c in ap.items()})
            cards.update({f"BP_{p}_{q}": c for (p, q), c in bp.items()})
    return cards


# TPV (x, y in degrees): xi = PV1_0 + PV1_1 x + PV1_2 y + PV1_4 x^2 + PV1_5 x y + PV1_7 x^3,
# eta = PV2_1 y + PV2_2 x + PV2_4 y^2 + PV2_5 y x (PV2 swaps the roles of x and y).
# Distortions of ~1 pixel at the image corners (x ~ 0.003 deg from the reference pixel).
TPV_TERMS = {
    "PV1_0": 2e-6,
    "PV1_1": 1.0,
    "PV1_2": 0.002,
    "PV1_4": 10.0,
    "PV1_5": -5.0,
    "PV1_7": 2000.0,
    "PV2_0": -1e-6,
    "PV2_1": 1.0,
    "PV2_2": -0.001,
    "PV2_4": 8.0,
    "PV2_5": 3.0,
}
SIP_A = {(2, 0): 4e-4, (1, 1): -2e-4, (0, 2): 1e-4, (3, 0): 2e-6}
SIP_B = {(2, 0): -1e-4, (1, 1): 3e-4, (0, 2): 2e-4, (0, 3): -1.5e-6}


def _poly(coeffs, u, v):
    return sum(c * u**p * v**q for (p, q), c in coeffs.items())


def _sip_inverse():
    """Fit AP/BP (order 3) so that u = U + AP(U, V) over the image; a real header's kind."""
    u, v = np.meshgrid(np.linspace(-60, 60, 25), np.linspace(-50, 50, 25))
    u, v = u.ravel(), v.ravel()
    big_u, big_v = u + _poly(SIP_A, u, v), v + _poly(SIP_B, u, v)
    terms = [(p, q) for p in range(4) for q in range(4) if p + q <= 3]
    design = np.column_stack([big_u**p * big_v**q for p, q in terms])
    ap = np.linalg.lstsq(design, u - big_u, rcond=None)[0]
    bp = np.linalg.lstsq(design, v - big_v, rcond=None)[0]
    return dict(zip(terms, ap, strict=True)), dict(zip(terms, bp, strict=True))


def gnomonic(xi_deg, eta_deg):
    """Independent TAN deprojection of standard coordinates about (RA0, DEC0)."""
    xi, eta, d0 = np.deg2rad(xi_deg), np.deg2rad(eta_deg), np.deg2rad(DEC0)
    denom = np.cos(d0) - eta * np.sin(d0)
    ra = RA0 + np.rad2deg(np.arctan2(xi, denom))
    dec = np.rad2deg(np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, denom)))
    return ra, dec


def expected_sky(kind, x, y, crpix=(50.5, 40.5)):
    """Sky position of 0-based pixel (x, y), computed without astropy.wcs."""
    u, v = x + 1.0 - crpix[0], y + 1.0 - crpix[1]
    if kind.startswith("SIP"):
        u, v = u + _poly(SIP_A, u, v), v + _poly(SIP_B, u, v)
    ix, iy = cd_matrix() @ np.array([u, v])
    if kind == "TPV":
        t = TPV_TERMS
        xi = (
            t["PV1_0"]
            + t["PV1_1"] * ix
            + t["PV1_2"] * iy
            + t["PV1_4"] * ix**2
            + t["PV1_5"] * ix * iy
            + t["PV1_7"] * ix**3
        )
        eta = (
            t["PV2_0"]
            + t["PV2_1"] * iy
            + t["PV2_2"] * ix
            + t["PV2_4"] * iy**2
            + t["PV2_5"] * iy * ix
        )
        ix, iy = xi, eta
    return gnomonic(ix, iy)


def base_cards(**extra):
    cards = {
        "MAGZP": 27.0,
        "PSF_FWHM": 3.0,
        "MJD-OBS": 60300.25,
        "EXPTIME": 30.0,
        "FILTER": "r",
        **wcs_cards(),
    }
    cards.update(extra)
    return {k: v for k, v in cards.items() if v is not None}


def to_header(cards):
    h = fits.Header()
    for key, value in cards.items():
        if isinstance(value, tuple):
            h[key if len(key) <= 8 else f"HIERARCH {key}"] = value
        else:
            h[key if len(key) <= 8 else f"HIERARCH {key}"] = value
    return h


@pytest.fixture
def write_plain(tmp_path):
    """Factory: a single-HDU FITS file (image in the primary) with the given cards."""

    def make(image, name="plain.fits", **cards):
        path = tmp_path / name
        fits.PrimaryHDU(image, header=to_header(base_cards(**cards))).writeto(path)
        return path

    return make


@pytest.fixture
def write_mef(tmp_path):
    """Factory: an LSST-style MEF (primary metadata + IMAGE/MASK/VARIANCE [+ PSF])."""

    def make(
        image=None,
        mask=None,
        variance=None,
        *,
        name="mef.fits",
        psf=None,
        planes=None,
        image_cards=None,
        primary_cards=None,
        mask_hdu=None,
    ):
        shape = (80, 100)
        rng = np.random.default_rng(0)
        image = rng.normal(0, 1, shape).astype(">f4") if image is None else image
        mask = np.zeros(image.shape, ">i4") if mask is None else mask
        variance = np.ones(image.shape, ">f4") if variance is None else variance
        primary = fits.PrimaryHDU(
            header=to_header(
                base_cards(**(primary_cards or {})) if primary_cards is not False else {}
            )
        )
        img_h = to_header(wcs_cards() if image_cards is None else image_cards)
        img_h["EXTNAME"] = "IMAGE"
        mask_h = fits.Header()
        mask_h["EXTNAME"] = "MASK"
        for pname, bit in (planes or {}).items():
            mask_h[f"HIERARCH MP_{pname}"] = bit
        hdus = [
            primary,
            fits.ImageHDU(image, header=img_h),
            mask_hdu if mask_hdu is not None else fits.ImageHDU(mask, header=mask_h),
            fits.ImageHDU(variance, name="VARIANCE"),
        ]
        if psf is not None:
            hdus.append(fits.ImageHDU(psf, name="PSF"))
        path = tmp_path / name
        fits.HDUList(hdus).writeto(path)
        return path

    return make


def star_image(shape=(400, 400), nstars=60, sigma=1.8, seed=3, sky=300.0, gain=2.0):
    """Seeded field of pixel-integrated Gaussian stars (counts, with Poisson + read noise)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    img = np.full(shape, sky)
    half = 12
    for _ in range(nstars):
        x, y = rng.uniform(half + 1, nx - half - 2), rng.uniform(half + 1, ny - half - 2)
        ix, iy = int(round(x)), int(round(y))
        stamp = gaussian_psf(sigma, 2 * half + 1, dx=x - ix, dy=y - iy)
        img[iy - half : iy + half + 1, ix - half : ix + half + 1] += (
            10 ** rng.uniform(4.5, 5.5) * stamp
        )
    return (rng.poisson(img * gain) / gain + rng.normal(0, 2.0, shape)).astype(">f4")


# --- LSST MEF --------------------------------------------------------------------------------


def test_mef_arrays_planes_psf_metadata(write_mef):
    rng = np.random.default_rng(1)
    image = rng.normal(10, 2, (80, 100)).astype(">f4")
    mask = np.zeros((80, 100), ">i4")
    mask[5, 7] = 1 << 9
    variance = np.full((80, 100), 4.0, ">f4")
    psf = gaussian_psf(1.5, 15) * 7.0  # not normalised on disk
    planes = {"BAD": 0, "SAT": 1, "CR": 3, "NO_DATA": 8, "STREAK": 9}
    path = write_mef(
        image,
        mask,
        variance,
        psf=psf,
        planes=planes,
        image_cards={**wcs_cards(), "LTV1": -2000, "LTV2": -4000},
        primary_cards={
            "VISIT": 1234,
            "DETECTOR": 42,
            "EXPID": 987,
            "GAIN": 1.7,
            "SATURATE": 90000.0,
            "INSTRUME": "LSSTCam",
        },
    )
    exp = load_exposure(path)
    assert exp.layout == "lsst-mef"
    assert exp.image.dtype == np.float32 and exp.image.dtype.isnative
    assert exp.variance.dtype == np.float32 and exp.variance.dtype.isnative
    assert exp.mask.dtype == np.int32 and exp.mask.dtype.isnative
    np.testing.assert_array_equal(exp.image, image.astype(np.float32))
    np.testing.assert_array_equal(exp.variance, variance.astype(np.float32))
    assert exp.mask_planes == planes
    assert exp.bitmask("STREAK") == exp.mask[5, 7] == 1 << 9
    assert exp.psf.source == "hdu"
    np.testing.assert_allclose(exp.psf.at(50, 40), gaussian_psf(1.5, 15), rtol=1e-12)
    assert exp.photo_calib == pytest.approx(10 ** ((31.4 - 27.0) / 2.5))
    assert exp.calib_source == "MAGZP"
    assert exp.midpoint_mjd_tai == pytest.approx(60300.25 + 15.0 / 86400.0, abs=1e-9)
    assert exp.exposure_time == 30.0
    assert exp.band == "r"
    assert (exp.visit, exp.detector, exp.exposure_id) == (1234, 42, 987)
    assert exp.gain == 1.7 and exp.saturation == 90000.0
    assert exp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert exp.checksum() == exp.sha256 and exp.pending_sha256 is None
    # Deferred: empty until asked for, then the same digest (and kept).
    late = load_exposure(path, defer_checksum=True)
    assert late.sha256 == "" and late.pending_sha256 is not None
    assert late.checksum() == exp.sha256 == late.sha256 and late.pending_sha256 is None
    assert exp.path == str(path)
    assert exp.header["INSTRUME"] == "LSSTCam"  # primary keywords merged in
    assert exp.info["xy0"] == (2000, 4000)
    assert exp.info["mask_planes_from"] == "header"
    assert exp.shape == (80, 100)


def test_mef_unreadable_primary_card_is_left_out_with_a_warning(write_mef, caplog):
    """A NUL in a primary string card (astropy cannot render it) costs that card, not the
    file: an odd card in a real survey file is not bad input."""
    path = write_mef(primary_cards={"TIMESYS": "TAI", "OBSERVER": "someone"})
    raw = path.read_bytes()
    good = b"OBSERVER= 'someone '"
    assert raw.count(good) == 1
    path.write_bytes(raw.replace(good, b"OBSERVER= 'some\x00ne '"))
    with caplog.at_level("WARNING"):
        exp = load_exposure(str(path))
    assert exp.image.shape == (80, 100) and "OBSERVER" not in exp.header
    assert exp.header["TIMESYS"] == "TAI"
    assert any("OBSERVER is unreadable" in r.getMessage() for r in caplog.records)


def test_keyword_arguments_override_ids(write_mef):
    path = write_mef(primary_cards={"VISIT": 1, "DETECTOR": 2, "EXPID": 3})
    exp = load_exposure(path, visit=11, detector=22, exposure_id=33)
    assert (exp.visit, exp.detector, exp.exposure_id) == (11, 22, 33)


def test_mef_default_planes_and_nan_flagged_no_data(write_mef):
    image = np.ones((80, 100), ">f4")
    image[3, 4] = np.nan
    variance = np.ones((80, 100), ">f4")
    variance[6, 6] = np.inf
    exp = load_exposure(write_mef(image, None, variance))
    assert exp.mask_planes == DEFAULT_PLANES
    assert exp.info["mask_planes_from"] == "default"
    nodata = exp.bitmask("NO_DATA")
    assert exp.mask[3, 4] & nodata and exp.mask[6, 6] & nodata
    assert (exp.mask & nodata).sum() == 2 * nodata
    assert np.isnan(exp.image[3, 4])


def test_mef_without_no_data_plane_gets_one(write_mef):
    image = np.ones((80, 100), ">f4")
    image[0, 0] = np.nan
    exp = load_exposure(write_mef(image, planes={"BAD": 0, "SAT": 1, "CR": 2}))
    assert exp.mask_planes["NO_DATA"] == 3  # lowest free bit
    assert exp.mask[0, 0] == 1 << 3


def test_mef_uint32_mask_keeps_bits(write_mef):
    mask = np.zeros((80, 100), np.uint32)
    mask[1, 1] = (1 << 31) | 1
    exp = load_exposure(write_mef(mask=mask))
    assert exp.mask.dtype == np.int32
    assert int(exp.mask[1, 1]) & 1 and exp.mask[1, 1] < 0  # bit 31 survives as the sign


def test_mef_wcs_from_primary_when_image_header_has_none(write_mef):
    path = write_mef(image_cards={}, primary_cards=wcs_cards())
    exp = load_exposure(path)
    ra, dec = exp.wcs.pixel_to_world_values(10.0, 20.0)
    assert np.allclose((ra, dec), expected_sky("TAN", 10.0, 20.0), atol=1e-9)


def test_mef_image_hdu_wcs_wins_over_primary(write_mef):
    shifted = wcs_cards(crpix=(10.5, 10.5))
    path = write_mef(image_cards=shifted, primary_cards=wcs_cards())
    exp = load_exposure(path)
    ra, dec = exp.wcs.pixel_to_world_values(30.0, 30.0)
    assert np.allclose((ra, dec), expected_sky("TAN", 30.0, 30.0, crpix=(10.5, 10.5)), atol=1e-9)


@pytest.mark.parametrize("shape", [(14, 14), (15, 13)])
def test_mef_even_or_non_square_psf(write_mef, shape):
    with pytest.raises(BadExposure, match=r"PSF HDU stamp must be square with odd size"):
        load_exposure(write_mef(psf=np.ones(shape, ">f4")))


def test_mef_psf_with_zero_sum(write_mef):
    with pytest.raises(BadExposure, match=r"unusable PSF HDU: .*positive sum"):
        load_exposure(write_mef(psf=np.zeros((15, 15), ">f4")))


def test_mef_psf_table_is_ignored(write_mef, tmp_path):
    path = write_mef()
    with fits.open(path, mode="append") as hdul:
        hdul.append(fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])], name="PSF"))
    exp = load_exposure(path, measure_psf=False)
    assert exp.psf.source == "keyword"
    assert "BinTableHDU" in exp.info["psf_hdu_ignored"]


def test_mef_shape_mismatch(write_mef):
    with pytest.raises(BadExposure, match=r"shape mismatch between IMAGE/MASK/VARIANCE"):
        load_exposure(write_mef(variance=np.ones((80, 99), ">f4")))


def test_mef_missing_variance(write_mef, tmp_path):
    path = write_mef()
    with fits.open(path) as hdul:
        fits.HDUList([hdul[0], hdul[1], hdul[2]]).writeto(tmp_path / "novar.fits")
    with pytest.raises(BadExposure, match=r"VARIANCE is missing"):
        load_exposure(tmp_path / "novar.fits")


def test_mef_mask_hdu_that_is_a_table(write_mef):
    table = fits.BinTableHDU.from_columns([fits.Column("a", "J", array=[1])], name="MASK")
    with pytest.raises(BadExposure, match=r"MASK HDU is a BinTableHDU, not an image"):
        load_exposure(write_mef(mask_hdu=table))


def test_mef_negative_variance(write_mef):
    variance = np.ones((80, 100), ">f4")
    variance[1, 1:4] = -2.0
    with pytest.raises(BadExposure, match=r"variance is negative in 3 pixels \(min -2\)"):
        load_exposure(write_mef(variance=variance))


def test_mef_float_mask(write_mef):
    with pytest.raises(BadExposure, match=r"MASK HDU must hold integers, got dtype >f4"):
        load_exposure(write_mef(mask=np.zeros((80, 100), ">f4")))


def test_mef_bad_plane_keyword(write_mef):
    with pytest.raises(BadExposure, match=r"MP_BAD must be a bit index in 0..30, got 40"):
        load_exposure(write_mef(planes={"BAD": 40}))


def test_mef_plane_keywords_reuse_a_bit(write_mef):
    with pytest.raises(BadExposure, match=r"mask plane keywords reuse a bit"):
        load_exposure(write_mef(planes={"BAD": 0, "SAT": 0}))


def test_too_many_non_finite_pixels(write_mef):
    image = np.ones((80, 100), ">f4")
    image[:50] = np.nan
    with pytest.raises(BadExposure, match=r"62.5% of pixels are non-finite > allowed 50.0%"):
        load_exposure(write_mef(image))
    assert load_exposure(write_mef(image, name="b.fits"), max_nonfinite_fraction=0.7)


# --- plain files -----------------------------------------------------------------------------


def test_plain_variance_from_background_and_poisson(write_plain):
    rng = np.random.default_rng(8)
    shape, sky, read, gain = (256, 256), 200.0, 4.0, 2.0
    star = 4e5 * np.pad(gaussian_psf(3.0, 41), ((108, 107), (108, 107)))
    true_var = read**2 + star / gain
    image = (sky + star + rng.normal(0, 1, shape) * np.sqrt(true_var)).astype(">f4")
    exp = load_exposure(write_plain(image, GAIN=gain))
    assert exp.layout == "plain"
    core = star > 200.0
    assert core.sum() > 50
    ratio = exp.variance[core] / true_var[core]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
    sky_pix = star < 1e-3
    assert np.median(exp.variance[sky_pix]) == pytest.approx(read**2, rel=0.05)
    # Without GAIN only the background term is known: the star does not raise the variance.
    exp2 = load_exposure(write_plain(image, name="nogain.fits"))
    assert np.median(exp2.variance[core]) == pytest.approx(read**2, rel=0.1)
    assert exp2.gain is None


def test_plain_mask_from_nan_and_saturation(write_plain):
    image = np.random.default_rng(2).normal(100, 3, (64, 64)).astype(">f4")
    image[10, 10] = np.nan
    image[20, 20:23] = 5000.0
    exp = load_exposure(write_plain(image, SATURATE=4000.0))
    assert exp.mask_planes == DEFAULT_PLANES
    assert exp.mask[10, 10] == 1 << DEFAULT_PLANES["NO_DATA"]
    assert list(exp.mask[20, 20:23]) == [1 << DEFAULT_PLANES["SAT"]] * 3
    assert np.count_nonzero(exp.mask) == 4
    assert np.isnan(exp.image[10, 10]) and np.isnan(exp.variance[10, 10])
    assert np.all(np.isfinite(np.delete(exp.variance.ravel(), 10 * 64 + 10)))


def test_plain_image_in_first_extension_with_primary_metadata(tmp_path):
    data = np.ones((30, 40), ">f4")
    primary = fits.PrimaryHDU(header=to_header({"MAGZERO": 30.0, "PSF_FWHM": 3.0}))
    ext = fits.ImageHDU(data, header=to_header(wcs_cards()), name="SCI")
    fits.HDUList([primary, ext]).writeto(tmp_path / "ext.fits")
    exp = load_exposure(tmp_path / "ext.fits")
    assert exp.layout == "plain" and exp.info["hdu"] == 1
    assert exp.calib_source == "MAGZERO"
    assert exp.shape == (30, 40)


def test_scaled_integer_image(write_plain):
    raw = np.arange(40 * 50, dtype=np.int16).reshape(40, 50)
    path = write_plain(raw, BZERO=None)
    with fits.open(path, mode="update") as hdul:
        hdul[0].scale("int16", bzero=1000.0, bscale=0.5)
    exp = load_exposure(path)
    assert exp.image.dtype == np.float32 and exp.image.dtype.isnative
    np.testing.assert_allclose(exp.image, raw.astype(np.float32), atol=0.5)


def test_gzip_file(write_plain, tmp_path):
    image = np.random.default_rng(3).normal(0, 1, (40, 50)).astype(">f4")
    path = write_plain(image)
    gz = tmp_path / "plain.fits.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    exp = load_exposure(gz)
    np.testing.assert_array_equal(exp.image, image.astype(np.float32))
    assert exp.sha256 == hashlib.sha256(gz.read_bytes()).hexdigest()  # of the file's bytes


def test_tile_compressed_image(tmp_path):
    image = np.random.default_rng(4).normal(500, 5, (64, 80)).astype(np.float32)
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(header=to_header(base_cards())),
            fits.CompImageHDU(image, header=to_header(wcs_cards())),
        ]
    )
    hdus.writeto(tmp_path / "fz.fits")
    exp = load_exposure(tmp_path / "fz.fits")
    np.testing.assert_allclose(exp.image, image, atol=1.0)  # lossy float quantisation
    assert exp.image.dtype == np.float32


# --- WCS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["TAN", "TPV", "SIP", "SIP-noinv"])
def test_wcs_kinds_match_independent_formulae(write_plain, kind):
    cards = {k: None for k in wcs_cards()} | wcs_cards(kind)
    exp = load_exposure(write_plain(np.zeros((80, 100), ">f4"), **cards))
    for x, y in [(0.0, 0.0), (99.0, 0.0), (0.0, 79.0), (99.0, 79.0), (49.5, 39.5), (12.3, 60.7)]:
        ra, dec = exp.wcs.pixel_to_world_values(x, y)
        era, edec = expected_sky(kind, x, y)
        # 1e-9 deg = 4 micro-arcsec: only the formula can differ, not the convention.
        assert abs((ra - era) * np.cos(np.deg2rad(DEC0))) < 1e-9, (kind, x, y)
        assert abs(dec - edec) < 1e-9, (kind, x, y)
        px, py = exp.wcs.world_to_pixel_values(ra, dec)
        assert abs(px - x) < 1e-3 and abs(py - y) < 1e-3
    if kind != "TAN":  # the distortion is large enough to matter (> 0.5 px at a corner)
        tra, tdec = expected_sky("TAN", 0.0, 0.0)
        ra, dec = exp.wcs.pixel_to_world_values(0.0, 0.0)
        assert np.hypot((ra - tra) * np.cos(np.deg2rad(DEC0)), dec - tdec) > 0.5 * SCALE


def test_no_celestial_wcs(write_plain):
    cards = {k: None for k in wcs_cards()}
    with pytest.raises(BadExposure, match=r"no celestial WCS in the image or primary header"):
        load_exposure(write_plain(np.zeros((20, 20), ">f4"), **cards))


def test_linear_wcs_is_not_celestial(write_plain):
    cards = {k: None for k in wcs_cards()} | {"CTYPE1": "LINEAR", "CTYPE2": "LINEAR"}
    with pytest.raises(BadExposure, match=r"no celestial WCS"):
        load_exposure(write_plain(np.zeros((20, 20), ">f4"), **cards))


def test_wcs_that_wcslib_refuses(write_plain):
    cards = {"CRVAL2": 95.0}  # latitude beyond the pole
    with pytest.raises(BadExposure, match=r"no celestial WCS .*InvalidTransformError") as info:
        load_exposure(write_plain(np.zeros((20, 20), ">f4"), **cards))
    assert info.value.fields["reason"] == "no_wcs"


def test_wcs_with_zero_cd_matrix(write_plain):
    cards = {"CD1_1": 0.0, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.0}
    with pytest.raises(BadExposure, match=r"degenerate CD matrix"):
        load_exposure(write_plain(np.zeros((20, 20), ">f4"), **cards))


def test_wcs_that_raises_when_evaluated(write_plain, monkeypatch):
    from astropy.wcs import WCS

    def boom(self, *args):
        raise ValueError("wcsp2s failed")

    path = write_plain(np.zeros((20, 20), ">f4"))
    monkeypatch.setattr(WCS, "pixel_to_world_values", boom)
    with pytest.raises(BadExposure, match=r"WCS cannot be evaluated .*wcsp2s failed") as info:
        load_exposure(path, measure_psf=False)
    assert isinstance(info.value.__cause__, ValueError)


def test_wcs_non_finite_at_image_centre(write_plain):
    # Orthographic (SIN) projection whose reference pixel lies 110 deg from the image
    # centre: the centre is beyond the projection's hemisphere.
    cards = {
        "CTYPE1": "RA---SIN",
        "CTYPE2": "DEC--SIN",
        "CD1_1": 1.0,
        "CD1_2": 0.0,
        "CD2_1": 0.0,
        "CD2_2": 1.0,
        "CRPIX1": -100.0,
        "CRPIX2": 10.0,
    }
    with pytest.raises(BadExposure, match=r"non-finite sky coordinates at the image centre"):
        load_exposure(write_plain(np.zeros((20, 20), ">f4"), **cards), measure_psf=False)


# --- calibration -----------------------------------------------------------------------------


def test_uncalibrated_is_refused_unless_allowed(write_plain):
    path = write_plain(np.zeros((20, 20), ">f4"), MAGZP=None)
    with pytest.raises(NotCalibrated, match=r"no photometric calibration keyword"):
        load_exposure(path)
    exp = load_exposure(path, allow_uncalibrated=True)
    assert exp.photo_calib is None and exp.calib_source == "none"


def test_bad_calibration_value(write_plain):
    path = write_plain(np.zeros((20, 20), ">f4"), MAGZP=None, FLUXMAG0=-5.0)
    with pytest.raises(BadExposure, match=r"FLUXMAG0 must be > 0, got -5.0"):
        load_exposure(path, allow_uncalibrated=True)


def test_photcalib_and_bunit(write_plain):
    exp = load_exposure(write_plain(np.zeros((20, 20), ">f4"), MAGZP=None, PHOTCALIB=0.25))
    assert (exp.photo_calib, exp.calib_source) == (0.25, "PHOTCALIB")
    exp = load_exposure(
        write_plain(np.zeros((20, 20), ">f4"), name="b.fits", MAGZP=None, BUNIT="nJy")
    )
    assert (exp.photo_calib, exp.calib_source) == (1.0, "BUNIT")


# --- PSF sources -----------------------------------------------------------------------------


def test_psf_measured_from_stars(write_plain):
    exp = load_exposure(write_plain(star_image(), PSF_FWHM=None, GAIN=2.0))
    assert exp.psf.source == "measured"
    assert exp.psf.nstars >= 10
    ixx, iyy, _ = psf_moments(exp.psf.at(200, 200))
    txx, _, _ = psf_moments(gaussian_psf(1.8, exp.psf.size))
    assert ixx == pytest.approx(txx, rel=0.03) and iyy == pytest.approx(txx, rel=0.03)


def test_psf_hdu_wins_over_measurement(write_mef):
    image = star_image()  # measurable: test_psf_measured_from_stars uses the same field
    exp = load_exposure(write_mef(image, psf=3.0 * gaussian_psf(2.5, 21)))
    assert exp.psf.source == "hdu"
    np.testing.assert_allclose(exp.psf.at(10, 10), gaussian_psf(2.5, 21), rtol=1e-12)
    assert "psf_measure_error" not in exp.info


def test_psf_keyword_fallback_when_no_stars(write_plain):
    exp = load_exposure(
        write_plain(np.random.default_rng(0).normal(0, 1, (64, 64)).astype(">f4"), PSF_FWHM=4.0)
    )
    assert exp.psf.source == "keyword"
    assert "found" in exp.info["psf_measure_error"]
    sigma = 4.0 / 2.3548
    np.testing.assert_allclose(
        psf_moments(exp.psf.at(0, 0)),
        psf_moments(gaussian_psf(sigma, exp.psf.size)),
        rtol=1e-3,
        atol=1e-9,
    )


def test_psf_keyword_when_measurement_disabled(write_plain):
    exp = load_exposure(write_plain(star_image(), FWHM=3.5, PSF_FWHM=None), measure_psf=False)
    assert exp.psf.source == "keyword"
    assert exp.psf.info["keyword"] == "FWHM"
    assert exp.psf.fwhm_at(0, 0) == pytest.approx(
        2.3548 * np.sqrt((3.5 / 2.3548) ** 2 + 1 / 12), rel=1e-3
    )


def test_seeing_in_arcsec_uses_the_pixel_scale(write_plain):
    exp = load_exposure(
        write_plain(np.zeros((40, 40), ">f4"), PSF_FWHM=None, SEEING=0.8), measure_psf=False
    )
    assert exp.info["psf_keyword_scale_arcsec"] == pytest.approx(0.2, rel=1e-9)
    assert exp.psf.info["fwhm"] == pytest.approx(4.0, rel=1e-9)  # 0.8" / 0.2"/px


def test_seeing_in_pixels_when_the_comment_says_so(write_plain):
    exp = load_exposure(
        write_plain(np.zeros((40, 40), ">f4"), PSF_FWHM=None, SEEING=(3.0, "FWHM [pixels]")),
        measure_psf=False,
    )
    assert exp.psf.info["fwhm"] == 3.0


def test_no_psf_at_all(write_plain):
    noise = np.random.default_rng(1).normal(0, 1, (40, 40)).astype(">f4")
    path = write_plain(noise, PSF_FWHM=None)
    with pytest.raises(BadExposure, match=r"no PSF: no PSF HDU, measurement failed \(found"):
        load_exposure(path)
    with pytest.raises(BadExposure, match=r"measurement failed \(measurement disabled\)"):
        load_exposure(path, measure_psf=False)


def test_non_positive_fwhm_keyword(write_plain):
    with pytest.raises(BadExposure, match=r"PSF_FWHM must be > 0, got -1.0"):
        load_exposure(write_plain(np.zeros((40, 40), ">f4"), PSF_FWHM=-1.0), measure_psf=False)


# --- metadata --------------------------------------------------------------------------------


def test_timesys_utc_is_converted_to_tai(write_plain):
    exp = load_exposure(write_plain(np.zeros((20, 20), ">f4"), TIMESYS="UTC", EXPTIME=0.0))
    assert (exp.midpoint_mjd_tai - 60300.25) * 86400.0 == pytest.approx(37.0, abs=1e-3)
    assert exp.info["timesys"] == "UTC"


def test_timesys_absent_is_tai(write_plain):
    exp = load_exposure(write_plain(np.zeros((20, 20), ">f4")))
    assert exp.midpoint_mjd_tai == pytest.approx(60300.25 + 15.0 / 86400.0, abs=1e-9)
    assert exp.info["timesys"] == "TAI (assumed)"


def test_mjd_avg_and_missing_times(write_plain):
    exp = load_exposure(
        write_plain(np.zeros((20, 20), ">f4"), **{"MJD-OBS": None, "MJD-AVG": 60001.5})
    )
    assert exp.midpoint_mjd_tai == 60001.5
    exp = load_exposure(
        write_plain(
            np.zeros((20, 20), ">f4"),
            name="b.fits",
            **{"MJD-OBS": None, "EXPTIME": None, "FILTER": None},
        )
    )
    assert exp.midpoint_mjd_tai is None and exp.exposure_time is None and exp.band is None


def test_string_integer_ids(write_plain):
    exp = load_exposure(write_plain(np.zeros((20, 20), ">f4"), VISIT="42", DETECTOR=7))
    assert exp.visit == 42 and exp.detector == 7


def test_non_integer_ids_do_not_reject_the_file(write_plain):
    """Issue 12: DECam/JWST write DETECTOR as a name; a float VISIT is no id either."""
    exp = load_exposure(write_plain(np.zeros((20, 20), ">f4"), VISIT=12.5, DETECTOR="MULTIPLE"))
    assert exp.visit is None and exp.detector is None
    assert [f["keyword"] for f in exp.info["fallbacks"]] == ["VISIT", "DETECTOR"]


@pytest.mark.parametrize(
    ("cards", "match"),
    [
        ({"GAIN": 0.0}, r"GAIN must be > 0, got 0.0"),
        ({"SATURATE": "high"}, r"SATURATE must be a finite number, got 'high'"),
        ({"EXPTIME": -3.0}, r"EXPTIME must be >= 0, got -3.0"),
        ({"MJD-OBS": "today"}, r"MJD-OBS must be a finite number"),
    ],
)
def test_bad_metadata_keywords(write_plain, cards, match):
    with pytest.raises(BadExposure, match=match):
        load_exposure(write_plain(np.zeros((20, 20), ">f4"), **cards))


# --- bad files -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(BadExposure, match=r"nope\.fits: file not found") as info:
        load_exposure(tmp_path / "nope.fits")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert info.value.fields["reason"] == "missing"


def test_directory(tmp_path):
    with pytest.raises(BadExposure, match=r"is a directory"):
        load_exposure(tmp_path)


def test_not_fits(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("these are not the pixels you are looking for\n" * 100)
    with pytest.raises(BadExposure, match=r"not a FITS file or corrupt") as info:
        load_exposure(path)
    assert info.value.__cause__ is not None


def test_empty_file(tmp_path):
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    with pytest.raises(BadExposure, match=r"file is empty"):
        load_exposure(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.fits.gz"
    path.write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(BadExposure, match=r"corrupt gzip stream"):
        load_exposure(path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_plain(write_plain, tmp_path, keep):
    path = write_plain(np.zeros((100, 100), ">f4"))
    raw = path.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(BadExposure, match=r"truncated FITS file"):
        load_exposure(cut)


def test_truncated_mef(write_mef, tmp_path):
    raw = write_mef().read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[: len(raw) - 20000])
    with pytest.raises(BadExposure, match=r"truncated FITS file|not a FITS file or corrupt"):
        load_exposure(cut)


def test_no_image_data(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])
    fits.HDUList([fits.PrimaryHDU(header=to_header(base_cards())), table]).writeto(
        tmp_path / "t.fits"
    )
    with pytest.raises(BadExposure, match=r"no image data: no HDU holds a 2-D image"):
        load_exposure(tmp_path / "t.fits")


def test_cube_is_not_an_image(write_plain):
    with pytest.raises(BadExposure, match=r"no image data"):
        load_exposure(write_plain(np.zeros((3, 20, 20), ">f4")))


def test_image_over_max_pixels(write_plain):
    path = write_plain(np.zeros((100, 100), ">f4"))
    with pytest.raises(BadExposure, match=r"image has 10000 pixels \(100, 100\) > max_pixels=5000"):
        load_exposure(path, max_pixels=5000)


def test_file_over_size_limit(write_plain, monkeypatch):
    path = write_plain(np.zeros((100, 100), ">f4"))
    monkeypatch.setattr(fitsio, "_BYTES_SLACK", 0)
    with pytest.raises(BadExposure, match=r"file is \d+ bytes > limit 24000 for max_pixels"):
        load_exposure(path, max_pixels=1000)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_pixels": 0}, r"max_pixels must be > 0, got 0"),
        ({"max_nonfinite_fraction": 1.5}, r"max_nonfinite_fraction must be in \[0, 1\], got 1.5"),
    ],
)
def test_argument_checks(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_exposure(tmp_path / "x.fits", **kwargs)


def test_unreadable_file(write_plain, monkeypatch):
    path = write_plain(np.zeros((20, 20), ">f4"))

    def deny(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", deny)
    with pytest.raises(BadExposure, match=r"cannot read file: .*Permission denied") as info:
        load_exposure(path)
    assert isinstance(info.value.__cause__, PermissionError)


def test_gzip_expanding_past_the_limit(write_plain, tmp_path, monkeypatch):
    path = write_plain(np.zeros((100, 100), ">f4"))
    gz = tmp_path / "big.fits.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))  # zeros: compresses ~100x
    monkeypatch.setattr(fitsio, "_BYTES_SLACK", 0)
    with pytest.raises(BadExposure, match=r"decompressed size > limit 24000 for max_pixels"):
        load_exposure(gz, max_pixels=1000)


def test_no_free_bit_for_no_data(write_mef):
    image = np.ones((80, 100), ">f4")
    image[0, 0] = np.nan
    planes = {f"P{i}": i for i in range(31)}
    with pytest.raises(BadExposure, match=r"no free mask bit for plane NO_DATA"):
        load_exposure(write_mef(image, planes=planes))


def test_unknown_timesys_is_noted(write_plain):
    exp = load_exposure(write_plain(np.zeros((20, 20), ">f4"), TIMESYS="MARS"))
    assert exp.midpoint_mjd_tai == pytest.approx(60300.25 + 15.0 / 86400.0, abs=1e-9)
    assert "unknown TIMESYS 'mars'" in exp.info["timesys_note"]
