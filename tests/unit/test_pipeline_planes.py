"""The pipeline's fused plane passes and its one-detection-per-image path.

jitcore.planes.combine_planes and jitcore.background.subtract_background against NumPy
references; jitcore.sources.find_stars feeding measure_psf and match_stars, compared with
the functions' own detections.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from diffstream.jitcore._kernels.planes import sep_planes, snr_plane, star_bad
from diffstream.jitcore.background import estimate_background, subtract_background
from diffstream.jitcore.masks import DEFAULT_PLANES, bits
from diffstream.jitcore.planes import combine_planes, combine_planes_hard
from diffstream.jitcore.psf import gaussian_psf, psf_moments
from diffstream.jitcore.psfmeasure import measure_psf
from diffstream.jitcore.sources import find_stars
from diffstream.jitcore.starmatch import match_stars

pytestmark = pytest.mark.unit

UNUSABLE = bits(DEFAULT_PLANES, ("BAD", "SAT", "NO_DATA"))


def _planes(seed, shape, dtype=np.float32):
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, shape).astype(dtype)
    var = np.full(shape, 25.0, dtype)
    mask = rng.integers(0, 1 << 9, shape).astype(np.int32) * (rng.random(shape) < 0.1)
    img[rng.random(shape) < 0.01] = np.nan
    var[rng.random(shape) < 0.01] = np.inf
    return img, var, mask.astype(np.int32)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33)])
def test_combine_planes_matches_numpy(shape):
    si, sv, sm = _planes(1, shape)
    ti, tv, tm = _planes(2, shape, np.float64)
    mask, bad = combine_planes(sm, tm, UNUSABLE, si, ti, sv, tv)
    ref_mask = sm | tm
    ref_bad = ((ref_mask & UNUSABLE) != 0) | ~np.isfinite(si) | ~np.isfinite(ti)
    ref_bad |= ~np.isfinite(sv) | ~np.isfinite(tv)
    assert mask.dtype == np.int32 and bad.dtype == np.bool_
    assert_array_equal(mask, ref_mask)
    assert_array_equal(bad, ref_bad)


HARD = bits(DEFAULT_PLANES, ("NO_DATA",))


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33)])
def test_combine_planes_hard_matches_numpy(shape):
    si, sv, sm = _planes(3, shape)
    ti, tv, tm = _planes(4, shape, np.float64)
    mask, bad, hard = combine_planes_hard(sm, tm, UNUSABLE, HARD, si, ti, sv, tv)
    ref_mask = sm | tm
    nonfinite = ~np.isfinite(si) | ~np.isfinite(ti) | ~np.isfinite(sv) | ~np.isfinite(tv)
    assert hard.dtype == np.bool_
    assert_array_equal(mask, ref_mask)
    assert_array_equal(bad, ((ref_mask & UNUSABLE) != 0) | nonfinite)
    assert_array_equal(hard, ((ref_mask & HARD) != 0) | nonfinite)
    if shape == (64, 33):  # the premise: the two maps differ somewhere
        assert (bad != hard).any()


@pytest.mark.parametrize(
    ("hard", "exc", "match"),
    [(True, TypeError, "hard must be an int bit mask, got bool"),
     (-1, ValueError, r"hard must be in \[0, 2\*\*31\), got -1")],
)  # fmt: skip
def test_combine_planes_hard_checks(hard, exc, match):
    z = np.zeros((4, 4))
    zi = np.zeros((4, 4), np.int32)
    with pytest.raises(exc, match=match):
        combine_planes_hard(zi, zi, 1, hard, z, z, z, z)


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        ({"sm": np.zeros(4, np.int32)}, ValueError, r"masks must be 2-D, got shape \(4,\)"),
        ({"tv": np.zeros((4, 5))}, ValueError, r"all planes must have shape \(4, 4\)"),
        ({"unusable": 1.5}, TypeError, "unusable must be an int bit mask, got float"),
        ({"unusable": -1}, ValueError, r"unusable must be in \[0, 2\*\*31\), got -1"),
    ],
)
def test_combine_planes_validation(change, exc, match):
    z = np.zeros((4, 4))
    zi = np.zeros((4, 4), np.int32)
    args = {"sm": zi, "tm": zi, "unusable": 1, "si": z, "ti": z, "sv": z, "tv": z} | change
    with pytest.raises(exc, match=match):
        combine_planes(*args.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subtract_background_matches_estimate_background(dtype):
    rng = np.random.default_rng(3)
    shape = (300, 260)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = (50.0 + 0.02 * xx + rng.normal(0.0, 2.0, shape)).astype(dtype)
    var = np.full(shape, 4.0, dtype)
    bad = np.zeros(shape, bool)
    bad[100:120, :] = True
    img[100:110, :] = np.nan  # non-finite pixels are covered by ``bad``
    var[110:120, :] = np.nan
    out_img, out_var = subtract_background(img, var, bad, box=64)
    # Reference: estimate_background's map (the same mesh; for float64 input it sees the
    # float64 pixels, subtract_background their float32 copy), then subtract and mask.
    # Bit-for-bit on float32: tests/unit/test_background.py.
    ref_bkg, _ = estimate_background(img, bad, box=64)
    ref_img = np.where(bad, 0.0, img - ref_bkg)
    ref_var = np.where(bad, np.nan, var)
    assert out_img.dtype == np.float32 and out_var.dtype == np.float32
    assert_allclose(out_img, ref_img, atol=1e-3)
    assert_allclose(out_var, ref_var, equal_nan=True)
    assert np.abs(np.median(out_img[~bad])) < 0.1
    assert np.isnan(img[100, 0])  # inputs untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subtract_background_overwrite_is_the_same_result(dtype):
    # overwrite=True writes into float32 inputs (the pipeline's own calibrated planes) and
    # gives the copying call's result bit for bit; other inputs are not touched.
    rng = np.random.default_rng(4)
    shape = (203, 141)
    img = (20.0 + rng.normal(0.0, 3.0, shape)).astype(dtype)
    var = np.full(shape, 9.0, dtype)
    bad = rng.random(shape) < 0.05
    img[bad & (rng.random(shape) < 0.5)] = np.nan
    want_img, want_var = subtract_background(img, var, bad, box=32)
    kept_img, kept_var = img.copy(), var.copy()
    got_img, got_var = subtract_background(img, var, bad, box=32, overwrite=True)
    np.testing.assert_array_equal(got_img, want_img)
    np.testing.assert_array_equal(got_var, want_var)
    in_place = dtype == np.float32
    assert (got_img is img and got_var is var) == in_place
    if not in_place:
        np.testing.assert_array_equal(img, kept_img)
        np.testing.assert_array_equal(var, kept_var)


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        ({"image": np.zeros(5)}, ValueError, r"non-empty 2-D array, got shape \(5,\)"),
        ({"variance": np.zeros((8, 9))}, ValueError, "shapes differ"),
        ({"bad": np.zeros((8, 8), np.uint8)}, TypeError, "bool array, got dtype uint8"),
        ({"box": 0}, ValueError, "box must be >= 1 pixel, got 0"),
        ({"filter_size": 4}, ValueError, "filter_size must be odd and >= 1, got 4"),
        ({"bad": np.ones((8, 8), bool)}, ValueError, "every pixel is masked"),
    ],
)
def test_subtract_background_validation(change, exc, match):
    args = {"image": np.zeros((8, 8)), "variance": np.ones((8, 8)),
            "bad": np.zeros((8, 8), bool)} | change  # fmt: skip
    kw = {k: args.pop(k) for k in ("box", "filter_size") if k in args}
    with pytest.raises(exc, match=match):
        subtract_background(args["image"], args["variance"], args["bad"], **kw)


def _star_pair(seed=7, shape=(600, 600), nstars=120, sigma=1.6, shift=(0.0, 0.0)):
    """Background-subtracted science/template pair on one grid (template shifted a little)."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(20, shape[1] - 20, nstars)
    ys = rng.uniform(20, shape[0] - 20, nstars)
    flux = 10 ** rng.uniform(4.0, 5.5, nstars)
    out = []
    for k, (dx, dy) in enumerate(((0.0, 0.0), shift)):
        img = np.zeros(shape)
        for x, y, f in zip(xs + dx, ys + dy, flux, strict=True):
            ix, iy = int(round(x)), int(round(y))
            img[iy - 10 : iy + 11, ix - 10 : ix + 11] += f * gaussian_psf(
                sigma * (1.0 + 0.2 * k), 21, dx=x - ix, dy=y - iy
            )
        var = 100.0 + img
        img = img + rng.normal(size=shape) * np.sqrt(var)
        out += [img.astype(np.float32), var.astype(np.float32)]
    bad = np.zeros(shape, bool)
    bad[:, 300] = True  # a bad column, zeroed as the pipeline does
    out[0][bad] = 0.0
    out[2][bad] = 0.0
    return (*out, bad)


def test_find_stars_feeds_measure_psf_like_its_own_detection():
    s_img, s_var, _, _, bad = _star_pair()
    cat = find_stars(s_img, s_var, bad)
    assert len(cat) >= 100
    assert not np.any(np.abs(cat["x"] - 300) < 0.5)  # nothing on the masked column
    fed = measure_psf(s_img, s_var, bad, bad_bits=1, subtract_background=False, sources=cat)
    own = measure_psf(s_img, s_var, bad.astype(np.int32), bad_bits=1, subtract_background=False)
    truth = psf_moments(gaussian_psf(1.6, fed.at(300, 300).shape[0]))
    for model in (fed, own):
        m = psf_moments(model.at(300, 300))
        assert m[0] / truth[0] == pytest.approx(1.0, abs=0.03)
        assert m[1] / truth[1] == pytest.approx(1.0, abs=0.03)
    assert abs(fed.nstars - own.nstars) <= 0.2 * own.nstars


def test_match_stars_from_catalogues_agrees_with_its_own_search():
    s_img, s_var, t_img, t_var, bad = _star_pair(shift=(0.05, -0.03))
    cats = (find_stars(s_img, s_var, bad), find_stars(t_img, t_var, bad))
    fed = match_stars(s_img, s_var, t_img, t_var, bad, sources=cats)
    own = match_stars(s_img, s_var, t_img, t_var, bad)
    assert fed.n_matched >= 30
    assert np.median(fed.dx) == pytest.approx(0.05, abs=0.02)
    assert np.median(fed.dy) == pytest.approx(-0.03, abs=0.02)
    assert fed.flux_ratio == pytest.approx(own.flux_ratio, rel=0.01)
    assert fed.sigma_x == pytest.approx(own.sigma_x, abs=0.02)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"bad": np.zeros((8, 8), np.int32)}, TypeError, "bool array, got dtype int32"),
        ({"bad": np.zeros((8, 9), bool)}, ValueError, "shapes differ"),
        ({"image": np.zeros(8)}, ValueError, r"image must be 2-D, got shape \(8,\)"),
        ({"threshold": 0.0}, ValueError, "threshold must be > 0, got 0.0"),
        ({"variance": np.zeros((8, 8))}, ValueError, "no pixel has a positive finite variance"),
    ],
)
def test_find_stars_validation(kwargs, exc, match):
    args = {"image": np.zeros((8, 8)), "variance": np.ones((8, 8)),
            "bad": np.zeros((8, 8), bool)} | kwargs  # fmt: skip
    thr = {"threshold": args.pop("threshold")} if "threshold" in args else {}
    with pytest.raises(exc, match=match):
        find_stars(args["image"], args["variance"], args["bad"], **thr)


def test_measure_psf_sources_need_the_image_as_given():
    img = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match="sources need subtract_background=False"):
        measure_psf(img, img + 1, np.zeros((32, 32), bool), bad_bits=1, sources=np.zeros(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unusable_pixels_matches_numpy(dtype):
    from diffstream.jitcore._kernels.planes import unusable_pixels

    img, var, mask = _planes(9, (37, 51), dtype)
    var[3, :] = 0.0
    var[4, :] = -1.0
    var[5, :] = np.nan
    out = np.empty(img.shape, bool)
    unusable_pixels(mask, np.int32(UNUSABLE), img, var, out)
    ref = ((mask & UNUSABLE) != 0) | ~np.isfinite(img) | ~(var > 0) | ~np.isfinite(var)
    assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unusable_in_boxes_matches_numpy(dtype):
    from diffstream.jitcore._kernels.planes import unusable_in_boxes

    img, var, mask = _planes(11, (37, 51), dtype)
    var[3, :] = 0.0
    var[4, :] = -1.0
    var[5, :] = np.nan
    # Overlapping, one-pixel, edge-touching and full-width windows.
    boxes = np.array([[0, 4, 0, 6], [3, 9, 2, 5], [50, 50, 36, 36], [10, 10, 20, 20],
                      [0, 50, 30, 31]], np.int64)  # fmt: skip
    out = np.zeros(img.shape, bool)
    unusable_in_boxes(mask, np.int32(UNUSABLE), img, var, boxes, out)
    full = ((mask & UNUSABLE) != 0) | ~np.isfinite(img) | ~(var > 0) | ~np.isfinite(var)
    inside = np.zeros(img.shape, bool)
    for x0, x1, y0, y1 in boxes:
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert_array_equal(out, full & inside)
    assert full[inside].any() and full[~inside].any()  # the test can fail both ways


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33)])
def test_usable_pair_matches_numpy(shape):
    from diffstream.jitcore._kernels.planes import usable_pair

    si, sv, _ = _planes(3, shape)
    ti, tv, _ = _planes(4, shape, np.float64)
    rng = np.random.default_rng(5)
    sv[rng.random(shape) < 0.05] = -1.0  # negative variances are unusable, 0 is fine
    tv[rng.random(shape) < 0.05] = 0.0
    bad = rng.random(shape) < 0.1
    out = np.empty(shape, bool)
    usable_pair(bad, si, ti, sv, tv, out)
    with np.errstate(invalid="ignore"):
        ref = ~bad & np.isfinite(si) & np.isfinite(ti)
        ref &= np.isfinite(sv) & np.isfinite(tv) & (sv >= 0) & (tv >= 0)
    assert_array_equal(out, ref)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33)])
def test_usable_pair_zeroed_matches_numpy(shape):
    """Alard-Lupton's fused pass against usable_pair and the np.where copies it replaced."""
    from diffstream.jitcore._kernels.planes import usable_pair_zeroed

    si, sv, _ = _planes(3, shape)
    ti, tv, _ = _planes(4, shape, np.float64)
    rng = np.random.default_rng(6)
    sv[rng.random(shape) < 0.05] = -1.0
    tv[rng.random(shape) < 0.05] = 0.0
    bad = rng.random(shape) < 0.1
    out = np.empty(shape, bool)
    copies = [np.full(shape, np.nan, a.dtype) for a in (si, ti, sv, tv)]
    usable_pair_zeroed(bad, si, ti, sv, tv, out, *copies)
    with np.errstate(invalid="ignore"):
        ref = ~bad & np.isfinite(si) & np.isfinite(ti)
        ref &= np.isfinite(sv) & np.isfinite(tv) & (sv >= 0) & (tv >= 0)
    assert_array_equal(out, ref)
    for got, src in zip(copies, (si, ti, sv, tv), strict=True):
        want = np.where(ref, src, 0.0)
        assert got.dtype == want.dtype
        assert_array_equal(got, want)
    assert ref.any() and not ref.all() or shape == (1, 1)  # both branches ran


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 33)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_snr_plane_and_star_bad_match_numpy(shape, dtype):
    """find_stars' and measure_psf's fused passes against the NumPy expressions they replace,
    special values included (zero, negative, NaN, inf variances; NaN and inf pixels)."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    img = rng.normal(0.0, 10.0, shape).astype(dtype)
    var = rng.uniform(0.5, 2.0, shape).astype(dtype)
    bad = rng.random(shape) < 0.1
    special = np.array([0.0, -1.0, np.nan, np.inf, 1e-30], dtype)
    var.flat[rng.integers(0, var.size, 5)] = special
    img.flat[rng.integers(0, img.size, 3)] = special[[2, 3, 1]] * np.array([1, -1, 1], dtype)
    snr = np.empty(shape, dtype)
    valid = np.empty(shape, bool)
    n = snr_plane(img, var, bad, snr, valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_snr = img / np.sqrt(var)
    ref_valid = ~(bad | ~(var > 0) | ~np.isfinite(img))
    assert_array_equal(snr, ref_snr)
    assert_array_equal(valid, ref_valid)
    assert n == int(ref_valid.sum())
    out = np.empty(shape, bool)
    star_bad(bad, img, var, out)
    with np.errstate(invalid="ignore"):
        assert_array_equal(out, bad | ~np.isfinite(img) | ~(var >= 0))


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 33)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sep_planes_match_numpy(shape, dtype):
    """jitcore.alstars' sep inputs against the NumPy expressions they replace, special values
    included (zero, negative, NaN, inf, tiny and float32-overflowing variances)."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1] + 7)
    img = rng.normal(0.0, 10.0, shape).astype(dtype)
    var = rng.uniform(0.5, 2.0, shape).astype(dtype)
    bad = rng.random(shape) < 0.1
    special = np.array([0.0, -1.0, np.nan, np.inf, 1e-30], dtype)
    var.flat[rng.integers(0, var.size, 5)] = special
    if dtype is np.float64:
        var.flat[rng.integers(0, var.size, 2)] = [1e-50, 1e300]  # 0 and inf as float32
    img.flat[rng.integers(0, img.size, 2)] = [np.nan, np.inf]
    data = np.empty(shape, np.float32)
    err = np.empty(shape, np.float32)
    sep_planes(img, bad, var, data, err)
    ref_data = np.ascontiguousarray(np.where(bad, 0.0, img), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        ref_err = np.sqrt(np.where(bad | ~(var > 0), np.inf, var), dtype=np.float32)
    ref_err[~np.isfinite(ref_err)] = 1e30
    assert_array_equal(data, ref_data)
    assert_array_equal(err, ref_err)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4"])
def test_input_counts_match_numpy(dtype):
    from diffstream.jitcore.planes import input_counts

    rng = np.random.default_rng(21)
    img = rng.normal(size=(41, 23)).astype(dtype)
    var = rng.normal(1.0, 1.0, size=(41, 23)).astype(dtype)  # some negative
    img.flat[[3, 50, 99]] = [np.nan, np.inf, -np.inf]
    var.flat[[3, 7, 8, 120]] = [np.nan, -np.inf, np.inf, np.nan]
    nonfinite = ~(np.isfinite(img) & np.isfinite(var))
    negative = np.isfinite(var) & (var < 0)
    assert input_counts(img, var) == (int(nonfinite.sum()), int(negative.sum()))
    assert input_counts(img[::2, ::3], var[::2, ::3]) == (
        int(nonfinite[::2, ::3].sum()), int(negative[::2, ::3].sum()))  # fmt: skip
    with pytest.raises(ValueError, match="need 2-D image and variance of one shape"):
        input_counts(img, var[1:])
