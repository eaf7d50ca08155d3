"""Alert cutouts (stream.alerts.cutouts): FITS layout, WCS, edges, and the alert size budget."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, Sip

from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.stream.alerts import cutouts
from diffstream.stream.alerts.cutouts import make_cutout
from diffstream.stream.alerts.packets import (
    MAX_ALERT_BYTES,
    deserialize_alert,
    dia_source_record,
    make_alert,
    serialize_alert,
)

pytestmark = pytest.mark.unit

NY, NX = 300, 400
NO_DATA = 1 << DEFAULT_PLANES["NO_DATA"]


def make_wcs(*, sip: bool) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [NX / 2 + 0.5, NY / 2 - 3.25]  # FITS 1-based
    wcs.wcs.crval = [150.1, 2.2]
    # 0.2"/px, slightly rotated and sheared.
    wcs.wcs.cd = np.array([[-5.55e-5, 1.3e-6], [1.1e-6, 5.56e-5]])
    if sip:
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[0, 2], a[3, 0], a[1, 2] = 2e-6, -3e-6, 4e-9, 1e-9
        b[1, 1], b[0, 2], b[0, 3] = 3e-6, 1e-6, -2e-9
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    else:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    return wcs


@pytest.fixture
def planes():
    """Factory: (image, variance, mask) with distinct, position-encoding values."""

    def factory(dtype=np.float32, seed=0):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:NY, 0:NX]
        image = (xx + 1000.0 * yy).astype(dtype)  # value encodes the pixel position
        variance = rng.uniform(1.0, 2.0, size=(NY, NX)).astype(np.float32)
        mask = rng.integers(0, 1 << 6, size=(NY, NX)).astype(np.int32)
        return image, variance, mask

    return factory


def decode(data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any FITS/WCS complaint is a failure
        hdul = fits.open(io.BytesIO(data))
        hdul.verify("exception")
        wcs = WCS(hdul[0].header)
    return hdul, wcs


def test_cutout_layout(planes):
    image, variance, mask = planes()
    data = make_cutout(image, variance, mask, make_wcs(sip=False), 123.4, 87.6)
    hdul, _ = decode(data)
    assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT"]  # CCDData.to_hdu's order
    assert hdul[0].header["BUNIT"] == "nJy"
    assert hdul["UNCERT"].header["UTYPE"] == "VarianceUncertainty"
    assert hdul[0].data.dtype == np.dtype(">f4")
    assert hdul["UNCERT"].data.dtype == np.dtype(">f4")
    assert hdul["MASK"].data.dtype == np.dtype(">i2")
    assert all(h.data.shape == (30, 30) for h in hdul)
    assert {k: hdul["MASK"].header[f"MP_{k}"] for k in DEFAULT_PLANES} == DEFAULT_PLANES
    # Plain FITS: 3 one-block headers + 2 + 2 + 1 data blocks.
    assert len(data) == 8 * 2880


@pytest.mark.parametrize("size", [30, 31, 7])
def test_cutout_pixels_come_from_the_right_place(planes, size):
    image, variance, mask = planes()
    x, y = 201.3, 150.8
    hdul, _ = decode(make_cutout(image, variance, mask, make_wcs(sip=False), x, y, size=size))
    x0, y0 = -hdul[0].header["LTV1"], -hdul[0].header["LTV2"]
    sl = np.s_[y0 : y0 + size, x0 : x0 + size]
    np.testing.assert_array_equal(hdul[0].data, image[sl])
    np.testing.assert_array_equal(hdul["UNCERT"].data, variance[sl])
    np.testing.assert_array_equal(hdul["MASK"].data, mask[sl])
    # (x, y) is at the cutout's centre (to the nearest pixel for even sizes).
    assert abs((x - x0) - (size - 1) / 2) <= 0.5
    assert abs((y - y0) - (size - 1) / 2) <= 0.5


@pytest.mark.parametrize("sip", [False, True])
@pytest.mark.parametrize(
    ("x", "y"),
    [(200.0, 150.0), (123.4, 87.6), (1.2, 2.7), (398.6, 299.4), (-3.0, 150.2), (15.5, 301.0)],
)
def test_cutout_wcs_maps_back_to_the_source(planes, sip, x, y):
    image, variance, mask = planes()
    wcs = make_wcs(sip=sip)
    hdul, cut_wcs = decode(make_cutout(image, variance, mask, wcs, x, y))
    sky = wcs.pixel_to_world(x, y)
    cx, cy = cut_wcs.world_to_pixel(sky)
    x0, y0 = -hdul[0].header["LTV1"], -hdul[0].header["LTV2"]
    assert abs(float(cx) + x0 - x) < 0.01
    assert abs(float(cy) + y0 - y) < 0.01
    # And the cutout centre is (x, y), even at the edges: partial cutouts are not shifted.
    assert abs(float(cx) - 14.5) <= 0.5 and abs(float(cy) - 14.5) <= 0.5


@pytest.mark.parametrize("sip", [False, True])
def test_cutout_wcs_is_accurate_over_the_whole_cutout(planes, sip):
    # The linearised WCS must agree with the parent's at every pixel, corners included.
    image, variance, mask = planes()
    wcs = make_wcs(sip=sip)
    x, y = 371.2, 22.9  # far from CRPIX, where the SIP terms are largest
    hdul, cut_wcs = decode(make_cutout(image, variance, mask, wcs, x, y))
    x0, y0 = -hdul[0].header["LTV1"], -hdul[0].header["LTV2"]
    cyy, cxx = np.mgrid[0:30, 0:30]
    sky = wcs.pixel_to_world(cxx.ravel() + x0, cyy.ravel() + y0)
    px, py = cut_wcs.world_to_pixel(sky)
    err = np.hypot(px - cxx.ravel(), py - cyy.ravel())
    assert err.max() < 0.01
    if sip:
        # The SIP terms matter at this scale: a linear WCS without them is visibly off.
        plain = make_wcs(sip=False)
        px2, py2 = cut_wcs.world_to_pixel(plain.pixel_to_world(x, y))
        assert np.hypot(px2 - (x - x0), py2 - (y - y0)) > 0.05


def test_edge_cutout_fills_off_image_pixels(planes):
    image, variance, mask = planes()
    x, y = 2.2, 3.9  # near the (0, 0) corner: 12 columns and 11 rows are off the image
    hdul, _ = decode(make_cutout(image, variance, mask, make_wcs(sip=False), x, y))
    x0, y0 = -hdul[0].header["LTV1"], -hdul[0].header["LTV2"]
    assert (x0, y0) == (-12, -11)
    img, var, msk = hdul[0].data, hdul["UNCERT"].data, hdul["MASK"].data
    off = np.zeros((30, 30), bool)
    off[:11, :] = True
    off[:, :12] = True
    assert np.isnan(img[off]).all() and np.isnan(var[off]).all()
    assert (msk[off] == NO_DATA).all()
    np.testing.assert_array_equal(img[11:, 12:], image[0:19, 0:18])
    np.testing.assert_array_equal(msk[11:, 12:], mask[0:19, 0:18])


def test_edge_cutout_custom_planes_without_no_data(planes):
    image, variance, mask = planes()
    hdul, _ = decode(
        make_cutout(image, variance, mask, make_wcs(sip=False), 399.0, 10.0,
                    mask_planes={"BAD": 0, "SAT": 1})
    )  # fmt: skip
    assert hdul["MASK"].header["MP_SAT"] == 1
    assert "MP_NO_DATA" not in hdul["MASK"].header
    assert (hdul["MASK"].data[:, 16:] == 0).all()  # off-image columns: no plane to flag them


def test_cutout_mask_keeps_high_bits(planes):
    image, variance, mask = planes()
    mask[100:110, 100:110] |= 1 << 20
    hdul, _ = decode(make_cutout(image, variance, mask, make_wcs(sip=False), 105.0, 105.0))
    assert hdul["MASK"].data.dtype == np.dtype(">i4")
    assert (hdul["MASK"].data[10:20, 10:20] & (1 << 20)).all()


def test_cutout_from_float64_image(planes):
    image, variance, mask = planes(dtype=np.float64)
    hdul, _ = decode(make_cutout(image, variance, mask, make_wcs(sip=False), 50.0, 60.0))
    assert hdul[0].data.dtype == np.dtype(">f4")


def test_cutout_off_image(planes):
    image, variance, mask = planes()
    with pytest.raises(ValueError, match=r"a 30 px cutout at \(-40.0, 5.0\) does not overlap"):
        make_cutout(image, variance, mask, make_wcs(sip=False), -40.0, 5.0)


def test_cutout_validation(planes):
    image, variance, mask = planes()
    wcs = make_wcs(sip=False)
    with pytest.raises(ValueError, match=r"image must be a 2-D numpy array, got \(300,\)"):
        make_cutout(image[:, 0], variance, mask, wcs, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"variance \(300, 399\) and mask .* must match image"):
        make_cutout(image, variance[:, 1:], mask, wcs, 1.0, 1.0)
    with pytest.raises(TypeError, match="image must have a floating dtype, got int32"):
        make_cutout(mask, variance, mask, wcs, 1.0, 1.0)
    with pytest.raises(TypeError, match="mask must have an integer dtype, got float32"):
        make_cutout(image, variance, variance, wcs, 1.0, 1.0)
    with pytest.raises(TypeError, match="wcs must be a 2-axis celestial astropy WCS"):
        make_cutout(image, variance, mask, None, 1.0, 1.0)
    with pytest.raises(ValueError, match="size must be a positive integer .* got 0"):
        make_cutout(image, variance, mask, wcs, 1.0, 1.0, size=0)
    with pytest.raises(ValueError, match=r"cutout centre must be finite, got \(nan, 1.0\)"):
        make_cutout(image, variance, mask, wcs, float("nan"), 1.0)


def test_cutout_wcs_without_sky_position(planes):
    image, variance, mask = planes()
    wcs = make_wcs(sip=False)
    # Orthographic at 1 deg/px: 200 px from CRPIX is off the projected hemisphere.
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.cd = np.eye(2)
    with pytest.raises(ValueError, match=r"wcs has no sky position at or near pixel \(399.0"):
        make_cutout(image, variance, mask, wcs, 399.0, 150.0)


def test_cutout_bytes_agree_with_astropy_writer(planes):
    # Our minimal writer against astropy's: same data bytes, same header values.
    image, variance, mask = planes()
    data = make_cutout(image, variance, mask, make_wcs(sip=True), 101.7, 55.2)
    hdul, _ = decode(data)
    ref = fits.HDUList(
        [fits.PrimaryHDU(hdul[0].data, header=hdul[0].header)]
        + [fits.ImageHDU(h.data, header=h.header) for h in hdul[1:]]
    )
    buf = io.BytesIO()
    ref.writeto(buf)
    theirs = fits.open(io.BytesIO(buf.getvalue()))
    assert len(buf.getvalue()) == len(data)
    for ours, other in zip(hdul, theirs, strict=True):
        assert ours.data.tobytes() == other.data.tobytes()
        assert list(ours.header.items()) == list(other.header.items())
    assert hdul["MASK"].header["MP_DETECTED_NEGATIVE"] == DEFAULT_PLANES["DETECTED_NEGATIVE"]


def test_fits_card_formatting():
    assert cutouts._card("X", "O'Hara") == "X       = 'O''Hara '".ljust(80)
    assert cutouts._card("N", -12) == "N       = " + "-12".rjust(20) + " " * 50
    assert cutouts._card("F", 1e-7)[10:30] == "1E-07".rjust(20)
    with pytest.raises(ValueError, match="non-finite header value, got nan"):
        cutouts._card("F", float("nan"))
    with pytest.raises(TypeError, match="must be bool, int, float or str, got None"):
        cutouts._card("F", None)
    with pytest.raises(ValueError, match="FITS card too long"):
        cutouts._card("S", "x" * 80)
    # Long comments are trimmed, not fatal.
    assert len(cutouts._card("S", 1, "c" * 100)) == 80


def test_full_alert_with_three_cutouts_fits_the_lsst_limit(planes):
    image, variance, mask = planes()
    wcs = make_wcs(sip=True)  # SIP headers are the largest we write
    x, y = 201.3, 150.8
    cutouts = {
        key: make_cutout(image, variance, mask, wcs, x, y)
        for key in ("cutoutDifference", "cutoutScience", "cutoutTemplate")
    }
    row = {
        "diaSourceId": 1, "x": x, "y": y, "ra": 150.1, "dec": 2.2, "psfNdata": 441,
        "trailNdata": 0, "dipoleNdata": 0, "bboxSize": 21, "psfFlux": 1.0, "psfFluxErr": 0.1,
    }  # fmt: skip
    source = dia_source_record(
        row, visit=1, detector=2, midpoint_mjd_tai=60841.1, band="r",
        time_processed_mjd_tai=60841.2, exposure_time=30.0,
    )  # fmt: skip
    metadata = {
        "pipelineVersion": "0.1.0", "method": "al", "configHash": "0" * 16,
        "versionsHash": "1" * 16, "exposureId": 1, "visit": 1, "detector": 2,
        "timings": {f"imageDifference.step{i:02d}.substep": 1.0 for i in range(20)},
        "nDiaSources": 10_000, "templateCoverage": 1.0, "scienceSha256": "a" * 64,
        "templateSha256": "b" * 64, "processedMjdTai": 60841.2,
    }  # fmt: skip
    packet = serialize_alert(make_alert(source, cutouts=cutouts, task_metadata=metadata))
    assert len(packet) < MAX_ALERT_BYTES
    assert len(packet) < 0.9 * MAX_ALERT_BYTES  # keep a margin, not just "under"
    back = deserialize_alert(packet)
    hdul, _ = decode(back["cutoutTemplate"])
    assert hdul[0].data.shape == (30, 30)


# --- CutoutMaker: several images per source, one local WCS ----------------------------------


@pytest.mark.parametrize("sip", [False, True])
@pytest.mark.parametrize(
    ("x", "y"), [(201.3, 150.8), (0.5, 0.5), (2.2, 3.9), (399.4, 299.6), (-14.2, 40.0)]
)
def test_maker_bytes_equal_make_cutout(planes, sip, x, y):
    wcs = make_wcs(sip=sip)
    triples = [planes(seed=0), planes(dtype=np.float64, seed=1), planes(seed=2)]
    triples[1][2][:] = triples[1][2] | (1 << 20)  # one mask needs int32
    maker = cutouts.CutoutMaker(wcs, size=30, mask_planes=DEFAULT_PLANES)
    made = maker.make(triples, x, y)
    assert len(made) == 3
    for (image, variance, mask), data in zip(triples, made, strict=True):
        assert data == make_cutout(image, variance, mask, wcs, x, y)
        assert data == maker(image, variance, mask, x, y)
    hdul, _ = decode(made[1])
    assert hdul["MASK"].data.dtype == np.dtype(">i4")


@pytest.mark.parametrize("size", [30, 31, 7])
def test_cutout_geometry_matches_cutout2d(planes, size):
    # The slicing replaced astropy's Cutout2D (partial mode): same origin, same pixels, same
    # NaN/NO_DATA fill, for positions at pixel centres, half pixels and off the edges.
    from astropy.nddata import Cutout2D, NoOverlapError

    image, variance, mask = planes()
    wcs = make_wcs(sip=False)
    rng = np.random.default_rng(11)
    xs = np.concatenate([rng.uniform(-20, NX + 20, 60), [0.5, 1.5, -0.5, NX - 0.5, 14.5, 15.0]])
    ys = np.concatenate([rng.uniform(-20, NY + 20, 60), [0.5, 2.5, 299.5, -0.5, 14.5, 15.0]])
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        try:
            ref = Cutout2D(image, (x, y), (size, size), mode="partial", fill_value=np.nan)
        except NoOverlapError:
            with pytest.raises(ValueError, match="does not overlap"):
                make_cutout(image, variance, mask, wcs, x, y, size=size)
            continue
        hdul, _ = decode(make_cutout(image, variance, mask, wcs, x, y, size=size))
        cx, cy = ref.input_position_cutout
        assert (-hdul[0].header["LTV1"], -hdul[0].header["LTV2"]) == (round(x - cx), round(y - cy))
        np.testing.assert_array_equal(hdul[0].data, ref.data)
        var = np.full((size, size), np.nan, np.float32)
        var[ref.slices_cutout] = variance[ref.slices_original]
        np.testing.assert_array_equal(hdul["UNCERT"].data, var)
        msk = np.full((size, size), NO_DATA, np.int32)
        msk[ref.slices_cutout] = mask[ref.slices_original]
        np.testing.assert_array_equal(hdul["MASK"].data, msk)


def test_maker_checks_wcs_and_size_once():
    with pytest.raises(TypeError, match="wcs must be a 2-axis celestial astropy WCS"):
        cutouts.CutoutMaker(None)
    with pytest.raises(ValueError, match="size must be a positive integer .* got 0"):
        cutouts.CutoutMaker(make_wcs(sip=False), size=0)


def test_maker_checks_every_triple(planes):
    image, variance, mask = planes()
    maker = cutouts.CutoutMaker(make_wcs(sip=False))
    with pytest.raises(ValueError, match=r"variance \(300, 399\) and mask .* must match image"):
        maker.make([(image, variance, mask), (image, variance[:, 1:], mask)], 5.0, 5.0)
    small = (image[:20, :20], variance[:20, :20], mask[:20, :20])
    with pytest.raises(ValueError, match=r"cutout at \(100.0, 100.0\) does not overlap image \(20"):
        maker.make([(image, variance, mask), small], 100.0, 100.0)


@pytest.mark.parametrize("sip", [False, True])
def test_make_many_equals_make_per_source(planes, sip):
    # One WCS call for all positions gives the very bytes of one call per position.
    wcs = make_wcs(sip=sip)
    triples = [planes(seed=0), planes(seed=2)]
    maker = cutouts.CutoutMaker(wcs, size=30, mask_planes=DEFAULT_PLANES)
    xs = [201.3, 0.5, 2.2, 399.4, -14.2, 150.0]
    ys = [150.8, 0.5, 3.9, 299.6, 40.0, 20.5]
    many = list(maker.make_many(triples, xs, ys))
    assert many == [maker.make(triples, x, y) for x, y in zip(xs, ys, strict=True)]
    assert list(maker.make_many(triples, [], [])) == []


def test_make_many_errors_come_with_their_source(planes):
    image, variance, mask = planes()
    wcs = make_wcs(sip=False)
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.cd = np.eye(2)
    maker = cutouts.CutoutMaker(wcs, size=30)
    made = maker.make_many([(image, variance, mask)], [wcs.wcs.crpix[0] - 1, 399.0],
                           [wcs.wcs.crpix[1] - 1, 150.0])  # fmt: skip
    assert len(next(made)) == 1  # the first source is fine; the second has no sky position
    with pytest.raises(ValueError, match=r"wcs has no sky position at or near pixel \(399.0"):
        next(made)
    with pytest.raises(ValueError, match=r"cutout centre must be finite, got \(nan, 1.0\)"):
        next(maker.make_many([(image, variance, mask)], [float("nan")], [1.0]))
    with pytest.raises(ValueError, match="xs and ys must be 1-D of one length"):
        next(maker.make_many([(image, variance, mask)], [1.0, 2.0], [1.0]))


# --- astropy CCDData: how brokers open Rubin's cutouts --------------------------------------


def test_ccddata_round_trip(planes):
    # What a broker does with a Rubin cutout, default arguments: data, variance (as a
    # VarianceUncertainty, not a standard deviation), mask, WCS, unit and PSF all come back.
    from astropy import units as u
    from astropy.nddata import CCDData, VarianceUncertainty

    image, variance, mask = planes()
    wcs = make_wcs(sip=True)
    yy, xx = np.mgrid[-12:13, -12:13]
    psf = np.exp(-(xx**2 + yy**2) / 8.0)
    psf /= psf.sum()
    x, y, size = 201.3, 150.8, 41
    data = make_cutout(image, variance, mask, wcs, x, y, size=size, psf=psf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ccd = CCDData.read(io.BytesIO(data))
    x0, y0 = int(np.ceil(x - size / 2)), int(np.ceil(y - size / 2))
    sl = np.s_[y0 : y0 + size, x0 : x0 + size]
    assert ccd.unit == u.nJy
    np.testing.assert_array_equal(ccd.data, image[sl])
    assert isinstance(ccd.uncertainty, VarianceUncertainty)
    np.testing.assert_array_equal(ccd.uncertainty.array, variance[sl])
    np.testing.assert_array_equal(ccd.mask, mask[sl] != 0)
    # The cutout WCS at the source and at a corner, against the parent's.
    for cx, cy in ((x - x0, y - y0), (0.0, 0.0), (size - 1.0, size - 1.0)):
        ours = ccd.wcs.pixel_to_world(cx, cy)
        theirs = wcs.pixel_to_world(cx + x0, cy + y0)
        assert ours.separation(theirs).to_value(u.arcsec) < 0.01 * 0.2  # << 0.01 px
    # PSFIMAGE: float32, cropped about its centre to PSF_MAX_SIZE (21) px.
    side = cutouts.PSF_MAX_SIZE
    assert ccd.psf.shape == (side, side) and ccd.psf.dtype == np.dtype(">f4")
    cut = (25 - side) // 2
    np.testing.assert_allclose(ccd.psf, psf[cut : cut + side, cut : cut + side], rtol=1e-6)


def test_psf_is_never_larger_than_the_cutout(planes):
    image, variance, mask = planes()
    psf = np.ones((25, 25))
    hdul, _ = decode(make_cutout(image, variance, mask, make_wcs(sip=False), 200.0, 150.0,
                                 size=10, psf=psf))  # fmt: skip
    assert hdul["PSFIMAGE"].data.shape == (9, 9)  # odd, centred, <= the side
    with pytest.raises(ValueError, match="square 2-D array of odd side"):
        make_cutout(image, variance, mask, make_wcs(sip=False), 200.0, 150.0, psf=np.ones((4, 4)))


@pytest.mark.parametrize(
    ("bbox", "side"), [(0, 30), (12, 30), (30, 30), (30.2, 31), (57, 57), (102, 102),
                       (500, 102), (None, 30), (float("nan"), 30)],
)  # fmt: skip
def test_cutout_size_is_the_bbox_clamped_to_30_102(bbox, side):
    assert cutouts.cutout_size(bbox) == side


def test_make_many_sizes_and_psfs_per_source(planes):
    wcs = make_wcs(sip=False)
    triples = [planes(seed=0), planes(seed=1)]
    maker = cutouts.CutoutMaker(wcs, size=30)
    stamp = np.zeros((15, 15), np.float32)
    stamp[7, 7] = 1.0
    psfs_at = [lambda x, y: stamp * (x + y), None]
    made = list(maker.make_many(triples, [100.0, 200.5], [80.0, 150.2], sizes=[30, 64],
                                psfs_at=psfs_at))  # fmt: skip
    for (first, second), (x, y), side in zip(made, [(100.0, 80.0), (200.5, 150.2)], [30, 64],
                                             strict=True):  # fmt: skip
        hdul, _ = decode(first)
        assert hdul[0].data.shape == (side, side)
        assert hdul["PSFIMAGE"].data[7, 7] == np.float32(x + y)
        assert first == maker.make(triples, x, y, psfs=[stamp * (x + y), None], size=side)[0]
        assert "PSFIMAGE" not in [h.name for h in decode(second)[0]]
    with pytest.raises(ValueError, match="one side per position"):
        list(maker.make_many(triples, [1.0], [1.0], sizes=[30, 30]))
    with pytest.raises(ValueError, match="one entry per triple"):
        list(maker.make_many(triples, [1.0], [1.0], psfs_at=[None]))


def test_make_many_with_a_psf_model_matches_its_at(planes):
    """A PsfModel's stamps come from one PsfModel.stack for all sources; its PSFIMAGE is the
    stamp of PsfModel.at at that source (float32; stack and at agree to 1e-13), and every
    other byte of the cutout is what a per-source call gives."""
    from diffstream.jitcore.psf import PsfModel, gaussian_psf

    rng = np.random.default_rng(4)
    basis = np.stack([gaussian_psf(1.5, 15), 0.02 * rng.normal(size=(15, 15)),
                      0.02 * rng.normal(size=(15, 15))])  # fmt: skip
    model = PsfModel(basis=basis, degree=1, shape=(NY, NX))
    triples = [planes(seed=0)]
    maker = cutouts.CutoutMaker(make_wcs(sip=False), size=30)
    xs, ys = rng.uniform(20, NX - 20, 12), rng.uniform(20, NY - 20, 12)
    batched = list(maker.make_many(triples, xs, ys, psfs_at=[model.at]))
    per_call = list(maker.make_many(triples, xs, ys, psfs_at=[lambda x, y: model.at(x, y)]))
    for (a,), (b,), x, y in zip(batched, per_call, xs, ys, strict=True):
        ha, hb = decode(a)[0], decode(b)[0]
        np.testing.assert_allclose(ha["PSFIMAGE"].data, model.at(x, y)[:, :], rtol=1e-6,
                                   atol=1e-9)  # fmt: skip
        np.testing.assert_allclose(ha["PSFIMAGE"].data, hb["PSFIMAGE"].data, rtol=1e-6)
        for name in (0, "MASK", "UNCERT"):
            np.testing.assert_array_equal(ha[name].data, hb[name].data)
            assert ha[name].header == hb[name].header


# --- cutouts made beside the trail fits (stream.pipeline.steps.start_cutouts; issue 17) -----


def test_started_cutouts_equal_serial_ones(planes):
    # The subtraction makes the cutouts on a second thread, before the diaSource records
    # exist: the bytes must be those make_alerts made from the records, in order.
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.steps import start_cutouts

    wcs = make_wcs(sip=True)
    triples = {"a": planes(seed=0), "b": planes(seed=3, dtype=np.float64)}
    rng = np.random.default_rng(5)
    xs = rng.uniform(-5.0, NX + 4.0, 40).tolist()
    ys = rng.uniform(-5.0, NY + 4.0, 40).tolist()
    bbox = rng.integers(5, 140, 40).tolist()
    sources = [{"x": x, "y": y, "bboxSize": b} for x, y, b in zip(xs, ys, bbox, strict=True)]
    maker = cutouts.CutoutMaker(wcs, size=30, mask_planes=DEFAULT_PLANES)
    serial = [
        maker.make(list(triples.values()), x, y, size=cutouts.cutout_size(b))
        for x, y, b in zip(xs, ys, bbox, strict=True)
    ]
    for threads in (1, 2):
        started = start_cutouts(xs, ys, bbox, triples, wcs=wcs, mask_planes=DEFAULT_PLANES,
                                settings=Settings(), threads=threads)  # fmt: skip
        assert started.result(sources) == serial


def test_started_cutouts_refuse_other_positions(planes):
    # A step that moved a source after the cutouts were started is a bug: raised, never
    # a cutout of the wrong place.  NaN positions compare equal (same source).
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.steps import start_cutouts

    wcs = make_wcs(sip=False)
    xs, ys, bbox = [20.5, 100.25], [30.0, 40.75], [12, 60]
    sources = [{"x": x, "y": y, "bboxSize": b} for x, y, b in zip(xs, ys, bbox, strict=True)]
    for moved in ({"x": 100.25 + 1e-3}, {"y": 40.0}, {"bboxSize": 61}):
        started = start_cutouts(xs, ys, bbox, {"a": planes()}, wcs=wcs, settings=Settings(),
                                mask_planes=DEFAULT_PLANES, threads=2)  # fmt: skip
        with pytest.raises(RuntimeError, match="other positions"):
            started.result([sources[0], {**sources[1], **moved}])
        assert len(started.result(sources)) == 2


def test_dia_source_column_is_the_records_value():
    # The cutouts are centred on dia_source_column's x and y: they must be the records'.
    from diffstream.stream.alerts.packets import dia_source_column

    x = np.array([1608.8119795, 0.1, 4095.999999])
    assert dia_source_column("x", x) == [float(np.float32(v)) for v in x]
    assert dia_source_column("bboxSize", np.array([7, 102], dtype=np.int32)) == [7, 102]
    with pytest.raises(ValueError):
        dia_source_column("x", np.array([1.0, np.nan]))  # required: as the records raise
    with pytest.raises(KeyError):
        dia_source_column("notAField", [1.0])
