"""Extendedness (diffstream.jitcore.extendedness) on seeded simulated science images.

Point sources alone on the sky must come out near 0, the same sources sitting on resolved
galaxies (Gaussian hosts 3x the PSF's width) near 1; the PSF fluxes come from a NumPy
reference linear fit, and the truth of each class is known by construction.
"""

from __future__ import annotations

import numpy as np
import pytest

from diffstream.jitcore.extendedness import extendedness

pytestmark = pytest.mark.unit

SIGMA_PSF = 1.3  # px: FWHM ~3 px
SKY_SIGMA = 10.0
HALF = 12


def _gauss(shape, x0, y0, sigma, flux):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    g = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return flux * g / (2 * np.pi * sigma**2)


def _stamp():
    yy, xx = np.mgrid[-HALF : HALF + 1, -HALF : HALF + 1]
    p = np.exp(-(xx**2 + yy**2) / (2 * SIGMA_PSF**2))
    return p / p.sum()


def _scene(seed, *, hosted, flux, n=36):
    """A noisy image with ``n`` point sources on a grid (on hosts or not); PSF fluxes by a
    NumPy reference fit at the known positions."""
    rng = np.random.default_rng(seed)
    side = 40
    shape = (side * 6, side * 6)
    image = rng.normal(0.0, SKY_SIGMA, shape)
    xs, ys = [], []
    for i in range(n):
        x = (i % 6) * side + side / 2 + rng.uniform(-0.5, 0.5)
        y = (i // 6) * side + side / 2 + rng.uniform(-0.5, 0.5)
        image += _gauss(shape, x, y, SIGMA_PSF, flux)
        if hosted:
            image += _gauss(shape, x + 1.0, y - 0.5, 3.0 * SIGMA_PSF, 2.0 * flux)
        xs.append(x)
        ys.append(y)
    variance = np.full(shape, SKY_SIGMA**2)
    mask = np.zeros(shape, np.int32)
    fluxes, errs = [], []
    for x, y in zip(xs, ys, strict=True):
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        p = _gauss(shape, x, y, SIGMA_PSF, 1.0)
        w = np.abs(xx - x) + np.abs(yy - y) < 3 * HALF
        fluxes.append((p[w] * image[w]).sum() / (p[w] ** 2).sum())
        errs.append(SKY_SIGMA / np.sqrt((p[w] ** 2).sum()))
    return image, variance, mask, np.array(xs), np.array(ys), np.array(fluxes), np.array(errs)


@pytest.mark.parametrize("seed", [1, 2])
def test_point_sources_are_near_0_and_hosted_ones_near_1(seed):
    flux = 60.0 * SKY_SIGMA * np.sqrt(4 * np.pi) * SIGMA_PSF  # PSF S/N ~ 60
    out = {}
    for hosted in (False, True):
        image, var, mask, xs, ys, f, e = _scene(seed, hosted=hosted, flux=flux)
        ext = extendedness(image, var, mask, 0, xs, ys, lambda x, y: _stamp(), f, e)
        assert np.isfinite(ext).all() and ((ext >= 0) & (ext <= 1)).all()
        out[hosted] = ext
    assert out[False].mean() < 0.1, out[False]
    assert out[True].mean() > 0.9, out[True]


def test_undeterminable_sources_are_nan_and_knobs_are_checked():
    image, var, mask, xs, ys, f, e = _scene(3, hosted=False, flux=1000.0, n=4)
    mask[:] = 1  # every pixel unusable
    ext = extendedness(image, var, mask, 1, xs, ys, lambda x, y: _stamp(), f, e)
    assert np.isnan(ext).all()
    f[0] = np.nan
    ext = extendedness(image, var, mask * 0, 1, xs, ys, lambda x, y: _stamp(), f, e)
    assert np.isnan(ext[0]) and np.isfinite(ext[1:]).all()
    with pytest.raises(ValueError, match="radius_fwhm must be a positive number"):
        extendedness(image, var, mask, 0, xs, ys, lambda x, y: _stamp(), f, e, radius_fwhm=0)
    with pytest.raises(ValueError, match=r"flux_ratio must be in \(0, 1\]"):
        extendedness(image, var, mask, 0, xs, ys, lambda x, y: _stamp(), f, e, flux_ratio=2)
    with pytest.raises(ValueError, match="one value per source"):
        extendedness(image, var, mask, 0, xs, ys[:2], lambda x, y: _stamp(), f, e)


def test_normal_cdf_matches_scipy():
    """The CDF that maps the flux difference to extendedness (kept free of scipy.special for
    start-up time) is scipy's ndtr, NaN and infinities included."""
    from scipy.special import ndtr

    from diffstream.jitcore.extendedness import _ndtr

    z = np.r_[np.random.default_rng(3).normal(0, 6, 2000), np.nan, np.inf, -np.inf, 0.0]
    got, want = _ndtr(z.reshape(-1, 4)), ndtr(z.reshape(-1, 4))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert np.isnan(got.ravel()[-4]) and _ndtr(np.zeros(0)).shape == (0,)
