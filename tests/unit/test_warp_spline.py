"""jitcore.warp: the map as a spline (MapSpline), the fused warp, threads over row bands."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from diffstream.jitcore._kernels.lanczos import sin_small
from diffstream.jitcore.warp import (
    MapSpline,
    map_spline,
    mapping_grid,
    warp_image,
    warp_image_spline,
    warp_stamp,
)
from tests.unit.test_warp import (
    BAD,
    EDGE,
    NO_DATA,
    CountingMapping,
    assert_warp_equal,
    random_planes,
    ref_warp,
)

pytestmark = pytest.mark.unit

BITS = {"no_data_bit": NO_DATA, "edge_bit": EDGE, "bad_bits": BAD}


def ref_spline_grid(mapping, shape, step):
    """Slow, obviously-correct evaluation: FITPACK's own bicubic spline at every pixel,
    NaN in the cells (between nodes) that touch a non-finite node."""
    from scipy.interpolate import RectBivariateSpline

    def nodes(n):  # every step px and the last pixel; 4 spread evenly if fewer
        k = np.unique(np.r_[np.arange(0, n, step), n - 1]).astype(float)
        return k if k.size >= 4 else np.linspace(0.0, n - 1.0, 4)

    ny, nx = shape
    xn, yn = nodes(nx), nodes(ny)
    xx, yy = np.meshgrid(xn, yn)
    gx, gy = mapping(xx, yy)
    good = np.isfinite(gx) & np.isfinite(gy)
    design = np.column_stack([np.ones(int(good.sum())), xx[good], yy[good]])
    out = []
    for g in (gx, gy):
        g = g.copy()
        if not good.all():  # the same affine placeholder fill as diffstream.jitcore.warp
            coef, *_ = np.linalg.lstsq(design, g[good], rcond=None)
            g[~good] = (coef[0] + coef[1] * xx + coef[2] * yy)[~good]
        spline = RectBivariateSpline(yn, xn, g, kx=3, ky=3, s=0)
        out.append(spline(np.arange(ny), np.arange(nx)))
    for j in range(ny):
        cy = min(max(np.searchsorted(yn, j, side="right") - 1, 0), yn.size - 2)
        for i in range(nx):
            cx = min(max(np.searchsorted(xn, i, side="right") - 1, 0), xn.size - 2)
            if not good[cy : cy + 2, cx : cx + 2].all():
                out[0][j, i] = out[1][j, i] = np.nan
    return out[0], out[1]


def half_broken(x, y):
    """A smooth map that a TAN template cannot project for x > 150 (NaN nodes)."""
    xt, yt = CountingMapping()(x, y)
    return np.where(x > 150, np.nan, xt), yt


# --------------------------------------------------------------------------------------
# The spline and its evaluation kernel
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mapping", [CountingMapping(), half_broken], ids=["smooth", "nan"])
@pytest.mark.parametrize(("shape", "step"), [((70, 257), 32), ((41, 9), 4), ((4, 5), 2)])
def test_spline_grid_matches_fitpack_reference(mapping, shape, step):
    xt, yt = map_spline(mapping, shape, step=step).grid()
    rx, ry = ref_spline_grid(mapping, shape, step)
    assert xt.dtype == np.float64 and xt.shape == shape
    assert_array_equal(np.isnan(xt), np.isnan(rx))
    assert_array_equal(np.isnan(yt), np.isnan(ry))
    assert_allclose(xt, rx, rtol=0, atol=1e-9)
    assert_allclose(yt, ry, rtol=0, atol=1e-9)
    assert np.isfinite(xt).any()


def test_mapping_grid_is_the_spline_grid():
    spline = map_spline(half_broken, (64, 256), step=32)
    for got, want in zip(mapping_grid(half_broken, (64, 256), step=32), spline.grid(), strict=True):
        assert_array_equal(got, want)


def test_grid_window_is_the_same_numbers():
    spline = map_spline(half_broken, (90, 230), step=16)
    xt, yt = spline.grid()
    for rows, cols in (((0, 90), (0, 230)), ((17, 18), (100, 230)), ((44, 47), (131, 134))):
        wx, wy = spline.grid(rows, cols)
        assert_array_equal(wx, xt[rows[0] : rows[1], cols[0] : cols[1]])
        assert_array_equal(wy, yt[rows[0] : rows[1], cols[0] : cols[1]])


def test_tiny_images_are_evaluated_directly():
    spline = map_spline(CountingMapping(), (3, 50))
    assert spline.direct is not None
    y, x = np.mgrid[0:3, 0:50].astype(np.float64)
    xt, yt = spline.grid()
    assert_array_equal(xt, CountingMapping()(x, y)[0])
    assert_array_equal(spline.grid((1, 2), (5, 9))[1], yt[1:2, 5:9])


def test_all_bad_nodes_map_everything_to_nan():
    xt, yt = map_spline(lambda x, y: (x * np.nan, y), (40, 70), step=8).grid()
    assert np.all(np.isnan(xt)) and np.all(np.isnan(yt))


def test_grid_window_validation():
    spline = map_spline(CountingMapping(), (40, 50), step=8)
    with pytest.raises(ValueError, match=r"rows must satisfy 0 <= start < stop <= 40, got \(5, 5"):
        spline.grid((5, 5))
    with pytest.raises(ValueError, match=r"cols must satisfy 0 <= start < stop <= 50, got \(-1,"):
        spline.grid(None, (-1, 3))
    with pytest.raises(ValueError, match=r"rows must satisfy .* <= 40, got \(0, 41\)"):
        spline.grid((0, 41))


# --------------------------------------------------------------------------------------
# The fused warp and the banded threads
# --------------------------------------------------------------------------------------
def rotated(x, y):
    c, s = math.cos(math.radians(7.0)), math.sin(math.radians(7.0))
    return -1.3 + 1.05 * (c * x - s * y), -2.2 + 1.05 * (s * x + c * y) + 1e-3 * x * x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", [2, 3, 5])
def test_spline_warp_matches_reference(dtype, order):
    rng = np.random.default_rng(order)
    image, variance, mask = random_planes(rng, (27, 31), dtype)
    spline = map_spline(rotated, (19, 23), step=4)
    got = warp_image_spline(image, variance, mask, spline, order=order, **BITS)
    want = ref_warp(image, variance, mask, *spline.grid(), no_data=NO_DATA, edge=EDGE, bad=BAD,
                    order=order)  # fmt: skip
    assert np.isfinite(got[0]).sum() > 10
    assert_warp_equal(got, want, rtol=2e-6)


@pytest.mark.parametrize("mapping", [rotated, half_broken], ids=["rotated", "nan"])
@pytest.mark.parametrize("order", [2, 3])
def test_spline_warp_equals_grid_warp(mapping, order):
    rng = np.random.default_rng(3)
    image, variance, mask = random_planes(rng, (80, 270), np.float32)
    spline = map_spline(mapping, (75, 260), step=16)
    fused = warp_image_spline(image, variance, mask, spline, order=order, **BITS)
    grid = warp_image(image, variance, mask, *spline.grid(), order=order, **BITS)
    assert np.isnan(fused[0]).any() and np.isfinite(fused[0]).any()
    for a, b in zip(fused, grid, strict=True):
        assert_array_equal(a, b)


def test_spline_warp_tiny_image_uses_the_direct_map():
    rng = np.random.default_rng(4)
    image, variance, mask = random_planes(rng, (12, 12), np.float64)
    spline = map_spline(rotated, (3, 9))
    fused = warp_image_spline(image, variance, mask, spline, **BITS)
    for a, b in zip(fused, warp_image(image, variance, mask, *spline.grid(), **BITS), strict=True):
        assert_array_equal(a, b)


@pytest.mark.parametrize("workers", [2, 3, 7, -1])
def test_threaded_warp_equals_single_thread(workers):
    # 300 rows: up to 9 bands of >= 32 rows, so every worker count splits differently.
    rng = np.random.default_rng(5)
    image, variance, mask = random_planes(rng, (310, 90), np.float32)
    spline = map_spline(half_broken, (300, 80), step=32)
    xt, yt = spline.grid()
    one = warp_image(image, variance, mask, xt, yt, workers=None, **BITS)
    many = warp_image(image, variance, mask, xt, yt, workers=workers, **BITS)
    fused_one = warp_image_spline(image, variance, mask, spline, workers=1, **BITS)
    fused_many = warp_image_spline(image, variance, mask, spline, workers=workers, **BITS)
    for a, b, c, d in zip(one, many, fused_one, fused_many, strict=True):
        assert_array_equal(a, b)
        assert_array_equal(a, c)
        assert_array_equal(a, d)


def test_warp_stamp_runs_on_one_thread_and_is_unchanged():
    from diffstream.jitcore.psf import gaussian_psf

    stamp = gaussian_psf(1.7, 21)
    assert_allclose(warp_stamp(stamp, np.eye(2)), stamp, rtol=1e-6, atol=1e-9)


def test_warp_workers_and_spline_validation():
    rng = np.random.default_rng(6)
    image, variance, mask = random_planes(rng, (10, 10), np.float32)
    spline = map_spline(rotated, (8, 8), step=4)
    xt, yt = spline.grid()
    with pytest.raises(TypeError, match="workers must be an int or None, got float"):
        warp_image(image, variance, mask, xt, yt, workers=2.0, **BITS)
    with pytest.raises(ValueError, match="workers must be >= 1 or in"):
        warp_image(image, variance, mask, xt, yt, workers=0, **BITS)
    with pytest.raises(ValueError, match="workers must be >= 1 or in"):
        warp_image_spline(image, variance, mask, spline, workers=-1000, **BITS)
    with pytest.raises(TypeError, match="spline must be a MapSpline, got tuple"):
        warp_image_spline(image, variance, mask, (xt, yt), **BITS)
    with pytest.raises(ValueError, match=r"order must be in \[2, 5\], got 9"):
        warp_image_spline(image, variance, mask, spline, order=9, **BITS)
    with pytest.raises(TypeError, match="image must be float32 or float64, got int64"):
        warp_image_spline(image.astype(np.int64), variance, mask, spline, **BITS)
    assert isinstance(spline, MapSpline)


# --------------------------------------------------------------------------------------
# The kernel's sine
# --------------------------------------------------------------------------------------
def test_sin_small_matches_libm():
    theta = np.r_[np.linspace(0.0, math.pi / 2, 20001), 1e-12, math.pi / 6, math.pi / 4]
    got = np.array([sin_small(t) for t in theta])
    want = np.sin(theta)
    # Within 1 ulp of 1.0 over the whole range the kernel uses, (0, pi / 2].
    assert np.max(np.abs(got - want)) <= np.spacing(1.0)
    assert_allclose(got[1:], want[1:], rtol=5e-16, atol=0)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    ony=st.integers(4, 40),
    onx=st.integers(4, 40),
    step=st.integers(2, 20),
    order=st.integers(2, 5),
)
def test_spline_warp_hypothesis(seed, ony, onx, step, order):
    rng = np.random.default_rng(seed)
    image, variance, mask = random_planes(rng, (30, 30), np.float32, nan_fraction=0.02)
    spline = map_spline(rotated, (ony, onx), step=step)
    fused = warp_image_spline(image, variance, mask, spline, order=order, workers=2, **BITS)
    grid = warp_image(image, variance, mask, *spline.grid(), order=order, workers=None, **BITS)
    for a, b in zip(fused, grid, strict=True):
        assert_array_equal(a, b)
