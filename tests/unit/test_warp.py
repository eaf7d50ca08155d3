"""diffstream.jitcore.warp: Lanczos resampling kernel, coarse-grid mapping, PSF stamp warping."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from diffstream.jitcore._kernels.lanczos import BLOCK_SHIFT, SNAP, mask_blocks
from diffstream.jitcore.psf import gaussian_psf, psf_moments
from diffstream.jitcore.warp import local_jacobian, mapping_grid, warp_image, warp_stamp

pytestmark = pytest.mark.unit

NO_DATA = 1 << 8
EDGE = 1 << 4
BAD = 1 << 0
CR = 1 << 3


# --------------------------------------------------------------------------------------
# Slow, obviously-correct NumPy reference of diffstream.jitcore._kernels.lanczos.
# --------------------------------------------------------------------------------------
def ref_taps(pos: float, order: int) -> dict[int, float]:
    """Template index -> Lanczos weight, with np.sinc (not the kernel's trig identities)."""
    nearest = round(pos)
    if abs(pos - nearest) < SNAP:
        return {nearest: 1.0}
    base = math.floor(pos)
    return {
        k: float(np.sinc(pos - k) * np.sinc((pos - k) / order))
        for k in range(base - order + 1, base + order + 1)
    }


def ref_warp(image, variance, mask, xt, yt, *, no_data, edge=0, bad=0, order=3):
    tny, tnx = image.shape
    out = np.full(xt.shape, np.nan)
    vout = np.full(xt.shape, np.nan)
    mout = np.zeros(xt.shape, dtype=np.int64)
    for j in range(xt.shape[0]):
        for i in range(xt.shape[1]):
            x, y = float(xt[j, i]), float(yt[j, i])
            if not (np.isfinite(x) and np.isfinite(y)):
                mout[j, i] = no_data
                continue
            wx, wy = ref_taps(x, order), ref_taps(y, order)
            inside = [(ty, tx) for ty in wy for tx in wx if 0 <= ty < tny and 0 <= tx < tnx]
            m = 0
            for ty, tx in inside:
                m |= int(mask[ty, tx])
            if len(inside) < len(wx) * len(wy):
                mout[j, i] = m | no_data | (edge if inside else 0)
                continue
            wsum = sum(wy[ty] * wx[tx] for ty, tx in inside)
            val = sum(wy[ty] * wx[tx] * float(image[ty, tx]) for ty, tx in inside) / wsum
            var = sum((wy[ty] * wx[tx]) ** 2 * float(variance[ty, tx]) for ty, tx in inside)
            var /= wsum**2
            if m & bad or not (np.isfinite(val) and np.isfinite(var)):
                mout[j, i] = m | no_data
                continue
            out[j, i], vout[j, i], mout[j, i] = val, var, m
    return out, vout, mout


def random_planes(rng, shape, dtype, *, nan_fraction=0.004, bad_fraction=0.004):
    image = rng.normal(10.0, 3.0, size=shape).astype(dtype)
    variance = rng.uniform(0.5, 2.0, size=shape).astype(dtype)
    image[rng.random(shape) < nan_fraction] = np.nan
    mask = np.zeros(shape, dtype=np.int32)
    mask[rng.random(shape) < bad_fraction] |= BAD
    for bit in (CR, 1 << 5):
        mask[rng.random(shape) < 0.03] |= bit
    return image, variance, mask


def affine_grid(shape, *, shift=(0.0, 0.0), angle_deg=0.0, scale=1.0):
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    xt = shift[0] + scale * (c * x - s * y)
    yt = shift[1] + scale * (s * x + c * y)
    return xt, yt


def assert_warp_equal(got, want, *, rtol):
    img, var, msk = got
    rimg, rvar, rmsk = want
    assert img.dtype == np.float32 and var.dtype == np.float32 and msk.dtype == np.int32
    assert_array_equal(msk, rmsk)
    assert_array_equal(np.isnan(img), np.isnan(rimg))
    assert_allclose(img, rimg, rtol=rtol, atol=rtol * np.nanmax(np.abs(rimg)))
    assert_allclose(var, rvar, rtol=rtol, atol=rtol * np.nanmax(np.abs(rvar)))


# --------------------------------------------------------------------------------------
# Kernel vs reference
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", [2, 3, 5])
@pytest.mark.parametrize(("tshape", "oshape"), [((27, 23), (19, 13)), ((15, 41), (11, 27))])
def test_kernel_matches_reference(dtype, order, tshape, oshape):
    rng = np.random.default_rng(order * 100 + tshape[0])
    image, variance, mask = random_planes(rng, tshape, dtype)
    # Rotated and scaled so the footprint runs off every side of the template somewhere.
    xt, yt = affine_grid(oshape, shift=(-1.3, -2.2), angle_deg=7.0, scale=1.15)
    got = warp_image(
        image, variance, mask, xt, yt, no_data_bit=NO_DATA, edge_bit=EDGE, bad_bits=BAD,
        order=order,
    )  # fmt: skip
    want = ref_warp(image, variance, mask, xt, yt, no_data=NO_DATA, edge=EDGE, bad=BAD, order=order)
    assert np.isfinite(got[0]).sum() > 10  # the comparison is not all-NaN
    assert_warp_equal(got, want, rtol=2e-6)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    tny=st.integers(1, 14),
    tnx=st.integers(1, 14),
    ony=st.integers(1, 9),
    onx=st.integers(1, 9),
    dx=st.floats(-4.0, 8.0),
    dy=st.floats(-4.0, 8.0),
    angle=st.floats(-20.0, 20.0),
    order=st.integers(2, 5),
    f64=st.booleans(),
)
def test_kernel_matches_reference_hypothesis(seed, tny, tnx, ony, onx, dx, dy, angle, order, f64):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if f64 else np.float32
    image, variance, mask = random_planes(rng, (tny, tnx), dtype, nan_fraction=0.03)
    xt, yt = affine_grid((ony, onx), shift=(dx, dy), angle_deg=angle)
    got = warp_image(
        image, variance, mask, xt, yt, no_data_bit=NO_DATA, edge_bit=EDGE, bad_bits=BAD,
        order=order,
    )  # fmt: skip
    want = ref_warp(image, variance, mask, xt, yt, no_data=NO_DATA, edge=EDGE, bad=BAD, order=order)
    img, var, msk = got
    assert_array_equal(msk, want[2])
    assert_array_equal(np.isnan(img), np.isnan(want[0]))
    assert_allclose(img, want[0], rtol=2e-6, atol=1e-5)
    assert_allclose(var, want[1], rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_long_runs_match_reference(dtype, order):
    # A wide row near unit scale: runs of 40+ pixels share template rows, so the vectorised
    # run loops (jitcore._kernels.lanczos._make_row) run their vector bodies, not only the
    # scalar remainders the small images above reach.
    rng = np.random.default_rng(10 + order)
    image, variance, mask = random_planes(rng, (24, 190), dtype)
    xt, yt = affine_grid((10, 180), shift=(1.7, 3.4), angle_deg=1.2, scale=1.01)
    xt[4, 60:64] = np.round(xt[4, 60:64])  # snapped pixels cut a run: the per-pixel path
    got = warp_image(
        image, variance, mask, xt, yt, no_data_bit=NO_DATA, edge_bit=EDGE, bad_bits=BAD,
        order=order,
    )  # fmt: skip
    want = ref_warp(image, variance, mask, xt, yt, no_data=NO_DATA, edge=EDGE, bad=BAD, order=order)
    assert np.isfinite(got[0]).sum() > 500
    assert_warp_equal(got, want, rtol=2e-6)


@pytest.mark.parametrize("order", [2, 3, 5])
def test_result_does_not_depend_on_runs(order):
    # Each pixel's arithmetic is the same whether it is summed in a run or alone: warping
    # one column at a time (runs of one pixel) gives the same bits as whole rows.
    rng = np.random.default_rng(order)
    image, variance, mask = random_planes(rng, (40, 120), np.float32)
    xt, yt = affine_grid((30, 100), shift=(0.6, 2.3), angle_deg=3.0)
    xt[7, 20:30] = np.round(xt[7, 20:30])
    bits = {"no_data_bit": NO_DATA, "edge_bit": EDGE, "bad_bits": BAD, "order": order}
    rows = warp_image(image, variance, mask, xt, yt, **bits)
    for i in range(0, xt.shape[1], 7):
        col = warp_image(image, variance, mask, xt[:, i : i + 1], yt[:, i : i + 1], **bits)
        for a, b in zip(rows, col, strict=True):
            assert_array_equal(a[:, i : i + 1], b)


def ref_mask_blocks(mask, width):
    """Block (by, bx) of ``width`` x ``width`` template pixels has a bit set: NumPy, padded."""
    ny, nx = mask.shape
    nby, nbx = -(-ny // width), -(-nx // width)
    padded = np.zeros((nby * width, nbx * width), dtype=mask.dtype)
    padded[:ny, :nx] = mask
    return (padded.reshape(nby, width, nbx, width) != 0).any(axis=(1, 3)).astype(np.uint8)


@pytest.mark.parametrize("shape", [(70, 101), (32, 64), (5, 200), (1, 1), (33, 31)])
def test_mask_blocks_match_reference(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    mask = np.zeros(shape, np.int32)
    mask[rng.random(shape) < 0.002] = CR
    width = 1 << BLOCK_SHIFT
    mask[:width, :width] = 0  # one zero block at least
    mask[-1, -1] = 1 << 30  # the last, partial block, with the highest bit
    out = np.full((-(-shape[0] // width), -(-shape[1] // width)), 7, np.uint8)
    mask_blocks(mask, np.empty(shape[1], np.int32), out)
    want = ref_mask_blocks(mask, width)
    assert want.any() and (want.size == 1 or not want.all())  # both kinds of block
    assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", [2, 3, 5])
def test_sparse_mask_matches_reference(dtype, order):
    # A mask that is zero but for a few bits on both sides of block boundaries: runs whose
    # footprint lies in zero blocks skip the per-pixel OR (lanczos.mask_blocks), the others
    # take it; the dilation must be the reference's either way.
    rng = np.random.default_rng(20 + order)
    image, variance, _ = random_planes(rng, (100, 230), dtype, nan_fraction=0.0)
    mask = np.zeros(image.shape, np.int32)
    width = 1 << BLOCK_SHIFT
    for y, x in ((width - 1, width), (width, 2 * width - 1), (2 * width, 3 * width), (70, 5)):
        mask[y, x] = CR
    mask[3 * width - 1, 4 * width] = BAD
    xt, yt = affine_grid((80, 200), shift=(4.7, 3.4), angle_deg=1.2, scale=1.01)
    got = warp_image(
        image, variance, mask, xt, yt, no_data_bit=NO_DATA, edge_bit=EDGE, bad_bits=BAD,
        order=order,
    )  # fmt: skip
    want = ref_warp(image, variance, mask, xt, yt, no_data=NO_DATA, edge=EDGE, bad=BAD, order=order)
    assert np.count_nonzero(got[2] & CR) >= 4 * (2 * order) ** 2 // 2  # the bits dilated
    assert np.count_nonzero(got[2] == 0) > 0.8 * got[2].size  # most of it skipped the OR
    assert_warp_equal(got, want, rtol=2e-6)


def guarded(array):
    """A copy of ``array`` that ends at an inaccessible page: a read past its last element
    crashes the process instead of going unnoticed (Linux, ctypes' mprotect)."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    nbytes = array.nbytes
    size = -(-nbytes // page) * page
    buf = mmap.mmap(-1, size + page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(start + size), ctypes.c_size_t(page), 0):  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect failed")
    out = np.frombuffer(buf, dtype=array.dtype, count=array.size, offset=size - nbytes)
    out = out.reshape(array.shape)
    out[...] = array
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="mprotect guard page: Linux only")
@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_runs_ending_at_the_template_end_stay_inside_it(order):
    # Runs are padded to whole vectors, reading template pixels past the run's end (the
    # next row's, discarded) except where that would leave the array: here the last
    # output row's run ends at the template's last pixel, and the planes end at a page
    # the process may not read.
    rng = np.random.default_rng(30 + order)
    shape = (20, 61)
    image, variance, mask = random_planes(rng, shape, np.float32, nan_fraction=0.0)
    mask &= ~BAD
    # Output (j, i) reads template columns i + 1 .. i + 2a and rows j + 1 .. j + 2a.
    oshape = (shape[0] - 2 * order, shape[1] - 2 * order)
    xt, yt = affine_grid(oshape, shift=(order + 0.4, order + 0.3))
    planes = [guarded(p) for p in (image, variance, mask)]
    got = warp_image(
        *planes, xt, yt, no_data_bit=NO_DATA, edge_bit=EDGE, bad_bits=BAD, order=order
    )  # fmt: skip
    want = ref_warp(image, variance, mask, xt, yt, no_data=NO_DATA, edge=EDGE, bad=BAD, order=order)
    assert got[2][-1, -1] & NO_DATA == 0  # the last pixel's footprint is whole
    assert_warp_equal(got, want, rtol=2e-6)


@pytest.mark.parametrize("eps", [1e-7, -1e-7, 0.5 * SNAP, 3 * SNAP, -3 * SNAP])
def test_snapping_near_integers_matches_reference(eps):
    rng = np.random.default_rng(5)
    image, variance, mask = random_planes(rng, (16, 16), np.float64, nan_fraction=0.0)
    xt, yt = affine_grid((12, 12), shift=(2.0 + eps, 1.0 - eps))
    got = warp_image(image, variance, mask, xt, yt, no_data_bit=NO_DATA, edge_bit=EDGE)
    want = ref_warp(image, variance, mask, xt, yt, no_data=NO_DATA, edge=EDGE)
    assert_warp_equal(got, want, rtol=1e-6)
    # Within SNAP the footprint is one pixel, so no dilation; outside it, the full 6 x 6.
    if abs(eps) < SNAP:
        assert_array_equal(got[2], mask[1:13, 2:14])
    else:
        assert np.count_nonzero(got[2] & CR) > np.count_nonzero(mask[1:13, 2:14] & CR)


def test_non_finite_positions_are_no_data():
    image = np.ones((10, 10), dtype=np.float32)
    xt, yt = affine_grid((3, 3), shift=(4.2, 4.7))
    xt[0, 0] = np.nan
    yt[1, 1] = np.inf
    xt[2, 2] = 1e300  # far off: must not overflow floor()
    img, var, msk = warp_image(image, image, np.zeros((10, 10), np.int32), xt, yt,
                               no_data_bit=NO_DATA, edge_bit=EDGE)  # fmt: skip
    for j, i in ((0, 0), (1, 1), (2, 2)):
        assert msk[j, i] == NO_DATA and np.isnan(img[j, i]) and np.isnan(var[j, i])
    assert np.isfinite(img[0, 1])


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------
def test_integer_shift_is_exact():
    rng = np.random.default_rng(1)
    image, variance, mask = random_planes(rng, (30, 41), np.float32, nan_fraction=0.0)
    mask[5, 7] |= BAD
    xt, yt = affine_grid((30, 41), shift=(3.0, -2.0))
    img, var, msk = warp_image(image, variance, mask, xt, yt, no_data_bit=NO_DATA,
                               edge_bit=EDGE)  # fmt: skip
    # Output (j, i) = template (j - 2, i + 3): rows 0-1 and the last 3 columns have none.
    assert_array_equal(img[2:, :-3], image[:-2, 3:])
    assert_array_equal(var[2:, :-3], variance[:-2, 3:])
    assert_array_equal(msk[2:, :-3], mask[:-2, 3:])  # no dilation through zero weights
    assert np.all(msk[:2] == NO_DATA) and np.all(msk[:, -3:] == NO_DATA)
    assert np.all(np.isnan(img[:2])) and np.all(np.isnan(img[:, -3:]))


def render_gaussians(shape, xs, ys, fluxes, sigma):
    """Point-sampled circular Gaussians (well sampled for sigma >= 1.5: band-limited)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for x0, y0, f in zip(xs, ys, fluxes, strict=True):
        r2 = (xx - x0) ** 2 + (yy - y0) ** 2
        out += f / (2 * np.pi * sigma**2) * np.exp(-0.5 * r2 / sigma**2)
    return out


def centroid_flux(img, ex, ey, half=10):
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    box = (np.abs(xx - ex) <= half) & (np.abs(yy - ey) <= half)
    flux = img[box].astype(np.float64).sum()
    return flux, (img[box] * xx[box]).sum() / flux, (img[box] * yy[box]).sum() / flux, box


def kernel_centroid_bias(frac: float, order: int) -> float:
    """First moment of the normalised Lanczos weights, sum w (f - k) / sum w.

    Lanczos kernels do not reproduce a linear ramp exactly, so the sampled centroid of any
    star (however well sampled) moves by the shift minus this: 0 at f = 0 and 1/2, up to
    ~0.02 px for order 3 (~0.012 for order 5).
    """
    taps = ref_taps(frac, order)
    wsum = sum(taps.values())
    return sum(wk * (frac - k) for k, wk in taps.items()) / wsum


@pytest.mark.parametrize(
    ("dx", "dy", "order"),
    [(0.37, -0.21, 3), (-0.5, 0.5, 3), (0.11, 0.93, 3), (2.0, -1.0, 3), (0.2, 0.8, 5)],
)
def test_subpixel_shift_preserves_flux_and_moves_centroid(dx, dy, order):
    shape = (96, 100)
    stars = [(22.3, 20.6, 1000.0), (70.7, 66.2, 500.0), (24.1, 71.9, 2000.0)]
    xs, ys, fl = zip(*stars, strict=True)
    template = render_gaussians(shape, xs, ys, fl, 2.0).astype(np.float32)
    xt, yt = affine_grid(shape, shift=(dx, dy))
    img, _, msk = warp_image(template, np.ones_like(template), np.zeros(shape, np.int32), xt, yt,
                             no_data_bit=NO_DATA, order=order)  # fmt: skip
    bias_x = kernel_centroid_bias(dx % 1.0, order)
    bias_y = kernel_centroid_bias(dy % 1.0, order)
    assert abs(bias_x) < 0.021 and abs(bias_y) < 0.021
    for x0, y0, f in stars:
        # A star at template (x0, y0) lands at science (x0 - dx, y0 - dy).  Both centroids
        # are measured in the same box around the star, so box truncation cancels.
        t_flux, tx, ty, _ = centroid_flux(template, x0, y0)
        flux, cx, cy, box = centroid_flux(img, x0 - dx, y0 - dy)
        assert not np.any(msk[box] & NO_DATA)
        assert abs(flux / f - 1) < 0.005 and abs(flux / t_flux - 1) < 0.005, flux
        # The moved centroid is the shift up to the kernel's own first-moment bias.
        assert abs((tx - cx) - (dx - bias_x)) < 0.002, (tx - cx, dx, bias_x)
        assert abs((ty - cy) - (dy - bias_y)) < 0.002, (ty - cy, dy, bias_y)


@pytest.mark.science
def test_variance_matches_noise_of_warped_white_noise():
    rng = np.random.default_rng(7)
    shape = (256, 256)
    v = 4.0
    noise = rng.normal(0.0, math.sqrt(v), size=shape).astype(np.float32)
    xt, yt = affine_grid(shape, shift=(0.5, 0.5))
    img, var, msk = warp_image(noise, np.full(shape, v, np.float32), np.zeros(shape, np.int32),
                               xt, yt, no_data_bit=NO_DATA)  # fmt: skip
    good = (msk & NO_DATA) == 0
    predicted = float(np.mean(var[good]))
    measured = float(np.var(img[good]))
    # sum(w^2) / (sum w)^2 < 1: interpolation averages, so the propagated variance drops.
    w = np.array(list(ref_taps(0.5, 3).values()))
    assert_allclose(var[good], v * (np.sum(w**2) / np.sum(w) ** 2) ** 2, rtol=1e-6)
    n = good.sum() / 4.0  # neighbouring outputs are correlated; be generous with the error
    assert abs(measured / predicted - 1) < 5 * math.sqrt(2 / n), (measured, predicted)


@pytest.mark.parametrize(("order", "frac", "width"), [(3, 0.3, 6), (2, 0.6, 4), (3, 0.0, 1)])
def test_mask_dilated_by_kernel_footprint(order, frac, width):
    shape = (30, 30)
    mask = np.zeros(shape, np.int32)
    mask[12, 15] = CR
    xt, yt = affine_grid(shape, shift=(frac, frac))
    img, _, msk = warp_image(np.ones(shape, np.float32), np.ones(shape, np.float32), mask, xt,
                             yt, no_data_bit=NO_DATA, order=order)  # fmt: skip
    hit_rows, hit_cols = np.nonzero(msk & CR)
    assert len(set(hit_rows)) == width and len(set(hit_cols)) == width
    assert hit_rows.size == width * width
    # Output pixel p reads template floor(p + frac) - a + 1 .. floor(p + frac) + a.
    expected_cols = {p for p in range(30) if ref_taps(p + frac, order).keys() & {15}}
    assert set(hit_cols) == expected_cols
    assert np.all(np.isfinite(img[msk & CR != 0]))  # CR is not a bad bit here


def test_bad_bits_and_nan_make_no_data_blocks():
    shape = (30, 30)
    image = np.ones(shape, np.float32)
    mask = np.zeros(shape, np.int32)
    mask[8, 8] = BAD
    image[20, 20] = np.nan
    xt, yt = affine_grid(shape, shift=(0.4, 0.4))
    img, var, msk = warp_image(image, np.ones_like(image), mask, xt, yt, no_data_bit=NO_DATA,
                               edge_bit=EDGE, bad_bits=BAD)  # fmt: skip
    interior = np.zeros(shape, bool)
    interior[2:-3, 2:-3] = True  # footprint inside the template
    nodata = (msk & NO_DATA != 0) & interior
    assert nodata.sum() == 2 * 36
    assert np.all(np.isnan(img[nodata])) and np.all(np.isnan(var[nodata]))
    assert np.all(msk[5:11, 5:11] & BAD)  # the reason stays visible in the mask
    assert np.all(img[interior & ~nodata] == pytest.approx(1.0, rel=1e-6))


def test_borders_and_outside_get_no_data():
    shape = (20, 25)
    xt, yt = affine_grid(shape, shift=(0.5, 0.5))
    img, _, msk = warp_image(np.ones(shape, np.float32), np.ones(shape, np.float32),
                             np.zeros(shape, np.int32), xt, yt, no_data_bit=NO_DATA,
                             edge_bit=EDGE)  # fmt: skip
    # Output p reads template p - 2 .. p + 3: valid for 2 <= p <= n - 4.
    valid = np.zeros(shape, bool)
    valid[2 : shape[0] - 3, 2 : shape[1] - 3] = True
    assert_array_equal(msk & NO_DATA != 0, ~valid)
    assert_array_equal(msk & EDGE != 0, ~valid)  # partly off the template: EDGE too
    assert_array_equal(np.isnan(img), ~valid)
    assert_allclose(img[valid], 1.0, rtol=1e-6)  # normalised weights keep a constant
    # Entirely off the template: NO_DATA without EDGE.
    xt_far, yt_far = affine_grid(shape, shift=(100.5, 0.5))
    _, _, msk_far = warp_image(np.ones(shape, np.float32), np.ones(shape, np.float32),
                               np.zeros(shape, np.int32), xt_far, yt_far, no_data_bit=NO_DATA,
                               edge_bit=EDGE)  # fmt: skip
    assert np.all(msk_far == NO_DATA)


# --------------------------------------------------------------------------------------
# mapping_grid
# --------------------------------------------------------------------------------------
class CountingMapping:
    """A smooth non-linear map (rotation + quadratic + mild sine) that counts its points."""

    def __init__(self):
        self.points = 0
        self.calls = 0

    def __call__(self, x, y):
        self.calls += 1
        self.points += np.asarray(x).size
        c, s = math.cos(0.03), math.sin(0.03)
        xt = 5.3 + c * x - s * y + 2e-5 * x * x - 1e-5 * x * y + 0.2 * np.sin(y / 150.0)
        yt = -7.1 + s * x + c * y + 1.5e-5 * y * y + 0.1 * np.cos(x / 200.0)
        return xt, yt


@pytest.mark.parametrize("shape", [(300, 257), (97, 400), (33, 35)])
def test_mapping_grid_error_and_node_count(shape):
    mapping = CountingMapping()
    xt, yt = mapping_grid(mapping, shape, step=32)
    assert xt.dtype == np.float64 and xt.shape == shape and yt.shape == shape
    nodes = (math.ceil(shape[0] / 32) + 1) * (math.ceil(shape[1] / 32) + 1)
    assert mapping.calls == 1 and mapping.points <= max(nodes, 16)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dxt, dyt = CountingMapping()(x, y)
    assert np.max(np.abs(xt - dxt)) < 0.01 and np.max(np.abs(yt - dyt)) < 0.01


def test_mapping_grid_affine_is_exact_and_small_images_direct():
    def affine(x, y):
        return 1.5 + 0.9 * x - 0.2 * y, -3.0 + 0.1 * x + 1.1 * y

    xt, yt = mapping_grid(affine, (130, 70), step=16)
    y, x = np.mgrid[0:130, 0:70].astype(np.float64)
    assert_allclose(xt, affine(x, y)[0], atol=1e-9)
    assert_allclose(yt, affine(x, y)[1], atol=1e-9)
    xs, ys = mapping_grid(affine, (3, 50))
    y, x = np.mgrid[0:3, 0:50].astype(np.float64)
    assert_allclose(xs, affine(x, y)[0], atol=1e-12)


def test_mapping_grid_non_finite_nodes_give_nan_cells():
    def half_broken(x, y):
        xt = x + 0.5
        return np.where(x > 150, np.nan, xt), y.copy()

    xt, yt = mapping_grid(half_broken, (64, 256), step=32)
    # Nodes at x = 160 and beyond are bad; cells touching them start at x = 128.
    assert np.all(np.isnan(xt[:, 128:])) and np.all(np.isnan(yt[:, 128:]))
    assert_allclose(xt[:, :128], np.arange(128) + 0.5 + np.zeros((64, 1)), atol=1e-6)


def test_mapping_grid_validation():
    ok = CountingMapping()
    with pytest.raises(ValueError, match=r"shape must be \(ny, nx\)"):
        mapping_grid(ok, (3, 4, 5))
    with pytest.raises(ValueError, match="shape must be positive"):
        mapping_grid(ok, (0, 4))
    with pytest.raises(TypeError, match="step must be an int, got float"):
        mapping_grid(ok, (40, 40), step=8.0)
    with pytest.raises(ValueError, match="step must be >= 2, got 1"):
        mapping_grid(ok, (40, 40), step=1)
    with pytest.raises(TypeError, match="mapping must be callable"):
        mapping_grid(None, (40, 40))
    with pytest.raises(TypeError, match="mapping must return a pair"):
        mapping_grid(lambda x, y: 3.0, (40, 40))
    with pytest.raises(ValueError, match="mapping must return arrays of the input shape"):
        mapping_grid(lambda x, y: (x.ravel(), y.ravel()), (40, 40))


# --------------------------------------------------------------------------------------
# warp_image validation
# --------------------------------------------------------------------------------------
def _args(shape=(8, 9), dtype=np.float32):
    image = np.ones(shape, dtype)
    xt, yt = affine_grid((4, 5), shift=(2.5, 2.5))
    return image, image.copy(), np.zeros(shape, np.int32), xt, yt


def test_warp_image_validation():
    image, var, mask, xt, yt = _args()
    with pytest.raises(TypeError, match="image must be float32 or float64, got int64"):
        warp_image(image.astype(np.int64), var, mask, xt, yt, no_data_bit=NO_DATA)
    with pytest.raises(TypeError, match="variance must be float32 or float64, got float16"):
        warp_image(image, var.astype(np.float16), mask, xt, yt, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match="image must be a non-empty 2-D array"):
        warp_image(image[0], var[0], mask[0], xt, yt, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match=r"variance shape \(8, 8\) != image shape \(8, 9\)"):
        warp_image(image, var[:, :8], mask, xt, yt, no_data_bit=NO_DATA)
    with pytest.raises(TypeError, match="mask must have an integer dtype"):
        warp_image(image, var, mask.astype(float), xt, yt, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match=r"mask shape \(8, 8\) != image shape"):
        warp_image(image, var, mask[:, :8], xt, yt, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match="mask values must fit int32 bit planes"):
        warp_image(image, var, mask.astype(np.int64) + 2**40, xt, yt, no_data_bit=NO_DATA)
    with pytest.raises(TypeError, match="xt must be a float array"):
        warp_image(image, var, mask, xt.astype(int), yt, no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match="yt must be a non-empty 2-D array"):
        warp_image(image, var, mask, xt, yt[0], no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match=r"xt shape \(4, 5\) != yt shape \(4, 4\)"):
        warp_image(image, var, mask, xt, yt[:, :4], no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match="no_data_bit must be a single bit value.*got 3"):
        warp_image(image, var, mask, xt, yt, no_data_bit=3)
    with pytest.raises(ValueError, match="no_data_bit must be a single bit value.*got 0"):
        warp_image(image, var, mask, xt, yt, no_data_bit=0)
    with pytest.raises(TypeError, match="no_data_bit must be an int bit value"):
        warp_image(image, var, mask, xt, yt, no_data_bit=256.0)
    with pytest.raises(ValueError, match="edge_bit must be a single bit value.*got -16"):
        warp_image(image, var, mask, xt, yt, no_data_bit=NO_DATA, edge_bit=-16)
    with pytest.raises(ValueError, match=r"bad_bits must be in \[0, 2\*\*31\), got -1"):
        warp_image(image, var, mask, xt, yt, no_data_bit=NO_DATA, bad_bits=-1)
    with pytest.raises(TypeError, match="bad_bits must be an int bit mask"):
        warp_image(image, var, mask, xt, yt, no_data_bit=NO_DATA, bad_bits=True)
    with pytest.raises(ValueError, match=r"order must be in \[2, 5\], got 7"):
        warp_image(image, var, mask, xt, yt, no_data_bit=NO_DATA, order=7)
    with pytest.raises(TypeError, match="order must be an int, got float"):
        warp_image(image, var, mask, xt, yt, no_data_bit=NO_DATA, order=3.0)


def test_warp_image_mixed_precision_and_mask_dtypes():
    image, var, mask, xt, yt = _args()
    a = warp_image(image, var.astype(np.float64), mask.astype(np.uint8), xt, yt,
                   no_data_bit=NO_DATA)  # fmt: skip
    b = warp_image(image, var, mask, xt, yt, no_data_bit=NO_DATA)
    for x, y in zip(a, b, strict=True):
        assert_array_equal(x, y)


# --------------------------------------------------------------------------------------
# warp_stamp and local_jacobian
# --------------------------------------------------------------------------------------
def test_warp_stamp_identity_is_exact():
    stamp = gaussian_psf(1.7, 21, dx=0.2, ellipticity=0.1)
    out = warp_stamp(stamp, np.eye(2))
    assert out.shape == stamp.shape
    assert_allclose(out, stamp, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("scale", "angle_deg"), [(1.2, 30.0), (0.85, -65.0), (1.0, 90.0)])
def test_warp_stamp_moments_follow_jacobian(scale, angle_deg):
    stamp = gaussian_psf(2.5, 41, ellipticity=0.25)
    c_t = np.array(psf_moments(stamp))
    cov_t = np.array([[c_t[0], c_t[2]], [c_t[2], c_t[1]]])
    th = math.radians(angle_deg)
    jac = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    out = warp_stamp(stamp, jac)
    assert out.shape == stamp.shape and abs(out.sum() - 1) < 1e-12
    # P_s(d) = P_t(J d): covariance in science pixels is J^-1 C_t J^-T.
    jinv = np.linalg.inv(jac)
    want = jinv @ cov_t @ jinv.T
    ixx, iyy, ixy = psf_moments(out)
    assert_allclose([ixx, iyy], [want[0, 0], want[1, 1]], rtol=0.01)
    assert abs(ixy - want[0, 1]) < 0.01 * math.sqrt(want[0, 0] * want[1, 1])
    assert abs(ixy) > 0.1 or angle_deg == 90.0  # the rotation is visible in ixy


def test_warp_stamp_validation():
    stamp = gaussian_psf(1.5, 11)
    with pytest.raises(ValueError, match="jacobian must be 2x2"):
        warp_stamp(stamp, np.eye(3))
    with pytest.raises(ValueError, match="jacobian must be finite"):
        warp_stamp(stamp, np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="jacobian must be invertible"):
        warp_stamp(stamp, np.array([[1.0, 2.0], [0.5, 1.0]]))
    with pytest.raises(ValueError, match="PSF stamp must be square with odd size"):
        warp_stamp(np.ones((4, 4)), np.eye(2))
    with pytest.raises(ValueError, match="order must be in"):
        warp_stamp(stamp, np.eye(2), order=1)


def test_local_jacobian_affine_and_borders():
    a = np.array([[0.9, -0.2], [0.1, 1.1]])
    y, x = np.mgrid[0:20, 0:30].astype(np.float64)
    xt = 3 + a[0, 0] * x + a[0, 1] * y
    yt = -1 + a[1, 0] * x + a[1, 1] * y
    for px, py in ((15, 10), (0, 0), (29, 19), (14.6, 9.4)):
        assert_allclose(local_jacobian(xt, yt, px, py), a, atol=1e-12)


def test_local_jacobian_validation():
    xt = np.zeros((5, 6))
    with pytest.raises(ValueError, match="xt and yt must be 2-D of the same shape"):
        local_jacobian(xt, xt[:, :5], 1, 1)
    with pytest.raises(ValueError, match="mapping arrays must be at least 2x2"):
        local_jacobian(xt[:1], xt[:1], 0, 0)
    with pytest.raises(TypeError, match="x must be a real pixel coordinate"):
        local_jacobian(xt, xt, "1", 1)
    with pytest.raises(ValueError, match="must be finite"):
        local_jacobian(xt, xt, np.nan, 1)
    with pytest.raises(ValueError, match=r"pixel \(x=6, y=1\) outside mapping arrays"):
        local_jacobian(xt, xt, 6, 1)
    bad = xt.copy()
    bad[2, 4] = np.nan  # a neighbour: central differences do not read the pixel itself
    with pytest.raises(ValueError, match=r"mapping is not finite around pixel \(x=3, y=2\)"):
        local_jacobian(bad, xt, 3, 2)
