"""The Numba sub-sampled apertures (jitcore/_kernels/apertures.py) against sep itself."""

from __future__ import annotations

import numpy as np
import pytest
import sep

from diffstream.jitcore.constants import GAUSS_RHALF_PER_SIGMA
from diffstream.jitcore.photometry import (
    APER_HASMASKED,
    APER_TRUNC,
    flux_radius,
    sum_circle,
    winpos,
)


def _scene(seed: int, dtype, shape=(96, 128), n=60):
    """Noisy Gaussian stars of random widths, a few masked blobs and single pixels, and
    positions anywhere (edges and corners included, so boxes get cut)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    img = rng.normal(0.0, 1.0, shape)
    for _ in range(25):
        x0, y0 = rng.uniform(-2, nx + 1), rng.uniform(-2, ny + 1)
        s = rng.uniform(0.8, 3.0)
        img += rng.uniform(20, 2000) * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / s**2)
    var = rng.uniform(0.5, 2.0, shape)
    bad = rng.random(shape) < 0.01
    for _ in range(4):
        cx, cy = rng.integers(0, nx), rng.integers(0, ny)
        bad |= (xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(2, 30)
    x = rng.uniform(-0.5, nx - 0.5, n)
    y = rng.uniform(-0.5, ny - 0.5, n)
    x[:4] = [0.0, nx - 1.0, 3.3, nx - 2.6]  # at and near the edges
    y[:4] = [0.0, ny - 1.0, ny - 1.7, 2.2]
    return img.astype(dtype), var.astype(dtype), bad, x, y, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("subpix", [1, 5, 7])
def test_sum_circle_equals_sep(dtype, seed, subpix):
    img, var, bad, x, y, rng = _scene(seed, dtype)
    r = rng.uniform(0.3, 12.0, x.size)
    want = sep.sum_circle(img, x, y, r, var=var, mask=bad.view(np.uint8), subpix=subpix)
    got = sum_circle(img, var, bad, x, y, r, subpix=subpix)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=0.0, equal_nan=True)
    assert np.array_equal(got[2], want[2])
    # The scene exercises what the flags mean, not only their agreement.
    assert (got[2] & APER_TRUNC).any() and (got[2] & APER_HASMASKED).any()
    assert (got[2] == 0).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("subpix", [1, 5])
@pytest.mark.parametrize("frac", [0.5, 0.1, 0.9])
def test_flux_radius_equals_sep(dtype, seed, subpix, frac):
    img, _, bad, x, y, rng = _scene(seed, dtype)
    # Past 90.5 px the annuli are wider than sqrt(2) and whole pixels stop being sub-sampled.
    rmax = rng.uniform(0.5, 10.0, x.size)
    rmax[4:10] = rng.uniform(85.0, 120.0, 6)
    want_r, want_f = sep.flux_radius(img, x, y, rmax, frac, mask=bad.view(np.uint8),
                                     subpix=subpix)  # fmt: skip
    got_r, got_f = flux_radius(img, bad, x, y, rmax, frac, subpix=subpix)
    np.testing.assert_allclose(got_r, want_r, rtol=1e-13, atol=0.0, equal_nan=True)
    assert np.array_equal(got_f, want_f)
    assert (got_f == 0).any() and (got_f & APER_HASMASKED).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("subpix", [11, 5])
def test_winpos_equals_sep(dtype, seed, subpix):
    img, _, bad, x, y, rng = _scene(seed, dtype)
    # Windows from below sep's 0.5 px floor to wider than the stars; starts up to 1 px off.
    sig = rng.uniform(0.1, 4.0, x.size)
    x0, y0 = x + rng.uniform(-1, 1, x.size), y + rng.uniform(-1, 1, x.size)
    want = sep.winpos(img, x0, y0, sig, mask=bad.view(np.uint8), subpix=subpix)
    got = winpos(img, bad, x0, y0, sig, subpix=subpix)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-11, equal_nan=True)
    assert np.array_equal(got[2], want[2])
    assert (got[2] & APER_HASMASKED).any() and (got[2] == 0).any()


def test_winpos_finds_the_centre():
    """Independent of sep: windowed centroids of noiseless Gaussians started 0.8 px off
    land on the true centre (a symmetric profile: to 1e-3 px)."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:48, 0:48]
    for _ in range(8):
        x0, y0, s = 24 + rng.uniform(-0.5, 0.5), 24 + rng.uniform(-0.5, 0.5), rng.uniform(1, 3)
        img = np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / s**2)
        gx, gy, f = winpos(img, np.zeros(img.shape, bool), [x0 + 0.8], [y0 - 0.8], [s])
        assert f[0] == 0
        assert abs(gx[0] - x0) < 1e-3 and abs(gy[0] - y0) < 1e-3


@pytest.mark.parametrize("seed", [3, 4])
def test_flux_radius_of_gaussians(seed):
    """Statistical, independent of sep: the half-light radius of noiseless Gaussians is
    sqrt(2 ln 2) sigma (flux within 5 sigma: 1 - 4e-6); sub-pixel centres, widths 2-4 px
    (narrower, the sampling of the profile at pixel centres moves it by a few per cent)."""
    rng = np.random.default_rng(seed)
    ny, nx = 64, 64
    yy, xx = np.mgrid[0:ny, 0:nx]
    sig = rng.uniform(2.0, 4.0, 12)
    got = []
    for s in sig:
        x0, y0 = 32 + rng.uniform(-0.5, 0.5), 32 + rng.uniform(-0.5, 0.5)
        img = np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / s**2)
        r, f = flux_radius(img, np.zeros(img.shape, bool), [x0], [y0], [5 * s], 0.5)
        assert f[0] == 0
        got.append(r[0])
    # Pixel integration widens a Gaussian by 1/12 px^2 in variance.
    want = GAUSS_RHALF_PER_SIGMA * np.sqrt(sig**2 + 1.0 / 12.0)
    # 64 annuli, linear interpolation and 5x5 sub-samples: good to ~2%.
    np.testing.assert_allclose(got, want, rtol=0.02)


def test_masked_area_is_made_up():
    """On a flat image the masked area is made up exactly (sep's total / unmasked area
    scaling), and all-masked circles give NaN, not a division error."""
    img = np.ones((40, 40))
    var = np.ones((40, 40))
    bad = np.zeros((40, 40), bool)
    clear, _, clear_flag = sum_circle(img, var, bad, [20.3], [19.6], [6.0])
    bad[18:22, 15:25] = True
    total, err, flag = sum_circle(img, var, bad, [20.3, 20.0], [19.6, 5.0], [6.0, 6.0])
    np.testing.assert_allclose(total[0], clear[0], rtol=1e-12)
    np.testing.assert_allclose(err[0] ** 2, clear[0], rtol=1e-12)  # unit variance: the area
    assert flag[0] & APER_HASMASKED and not flag[1] and not clear_flag[0]
    bad[:] = True
    total, err, flag = sum_circle(img, var, bad, [20.0], [20.0], [3.0])
    assert np.isnan(total[0]) and np.isnan(err[0]) and flag[0] & APER_HASMASKED


def test_input_checks():
    img = np.zeros((8, 8), np.float32)
    bad = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="mask"):
        flux_radius(img, bad.view(np.uint8), [1.0], [1.0], [2.0], 0.5)
    with pytest.raises(TypeError, match="float32"):
        flux_radius(img.astype(np.int32), bad, [1.0], [1.0], [2.0], 0.5)
    with pytest.raises(ValueError, match="subpix"):
        sum_circle(img, img, bad, [1.0], [1.0], [2.0], subpix=0)
    with pytest.raises(ValueError, match="finite"):
        sum_circle(img, img, bad, [np.nan], [1.0], [2.0])
    with pytest.raises(ValueError, match="rmax"):
        flux_radius(img, bad, [1.0], [1.0], [0.0], 0.5)
    with pytest.raises(ValueError, match="frac"):
        flux_radius(img, bad, [1.0], [1.0], [2.0], 1.5)
    with pytest.raises(ValueError, match="length"):
        sum_circle(img, img, bad, [1.0, 2.0], [1.0], [2.0])
    r, f = flux_radius(img, bad, [], [], [], 0.5)
    assert r.shape == (0,) and f.shape == (0,)
