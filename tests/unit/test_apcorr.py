"""Aperture correction (jitcore/apcorr.py) against the analytic curve of growth of a Moffat.

Stars with Moffat wings are fitted with a PSF truncated to a small stamp and normalised to
unit sum inside it, as a measured PSF is; the PSF fit then returns the flux inside the
stamp, and the correction must be (flux inside the aperture) / (flux inside the stamp) of the
true profile, computed here from a finely sampled Moffat, not by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from diffstream.jitcore.apcorr import aperture_correction
from diffstream.jitcore.measure import forced_psf_flux

BETA, ALPHA = 2.5, 3.0  # FWHM = 2 alpha sqrt(2^(1/beta) - 1) = 3.6 px


def _moffat(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return (BETA - 1) / (np.pi * ALPHA**2) * (1 + (dx**2 + dy**2) / ALPHA**2) ** -BETA


def _render(shape, xs, ys, fluxes, over=5) -> np.ndarray:
    """Pixel-integrated Moffats (``over`` x ``over`` sub-samples per pixel)."""
    ny, nx = shape
    sub = (np.arange(over) + 0.5) / over - 0.5
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    img = np.zeros(shape)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        for oy in sub:
            for ox in sub:
                img += f * _moffat(xx + ox - x, yy + oy - y) / over**2
    return img


def _enclosed_fraction(radius: float) -> float:
    """Analytic fraction of a Moffat inside a circle: 1 - (1 + r^2/alpha^2)^(1 - beta)."""
    return 1.0 - (1.0 + radius**2 / ALPHA**2) ** (1.0 - BETA)


def test_correction_recovers_the_moffat_curve_of_growth():
    rng = np.random.default_rng(20261206)
    half = 6  # a 13 px stamp: ~7% of the flux beyond it
    stamp = _render((2 * half + 1, 2 * half + 1), [half], [half], [1.0])
    in_stamp = stamp.sum()
    stamp /= in_stamp
    shape = (220, 220)
    xs = np.linspace(35, 185, 6) + rng.uniform(-3, 3, 6)
    ys = rng.permutation(np.linspace(35, 185, 6)) + rng.uniform(-3, 3, 6)
    fluxes = rng.uniform(2e5, 1e6, 6)
    sky_sigma = 5.0
    radius = 3.0 * 2 * ALPHA * np.sqrt(2 ** (1 / BETA) - 1)  # 3 FWHM
    truth = _enclosed_fraction(radius) / in_stamp
    factors, errs = [], []
    for _ in range(8):
        img = _render(shape, xs, ys, fluxes) + rng.normal(0, sky_sigma, shape)
        var = np.full(shape, sky_sigma**2) + np.maximum(img, 0) / 10.0
        img += rng.normal(0, 1, shape) * np.sqrt(np.maximum(img, 0) / 10.0)
        f, _, flag = forced_psf_flux(img, var, lambda x, y: stamp, xs, ys)
        assert not flag.any()
        ac = aperture_correction(img, var, np.zeros(shape, bool), f, xs, ys, radius=radius)
        assert ac.nstars >= 5
        factors.append(ac.factor)
        errs.append(ac.err)
    assert truth > 1.03  # the premise: the stamp really loses flux (the DECam cut-outs: 3-4%)
    mean, err = np.mean(factors), np.std(factors, ddof=1) / np.sqrt(len(factors))
    assert abs(mean - truth) < max(5 * err, 0.005), (mean, truth, err)
    # The stated error is honest within a factor 3 (it includes a 0.5% floor per star).
    assert np.std(factors, ddof=1) < 3 * np.mean(errs)


def test_a_star_with_a_neighbour_in_its_aperture_is_clipped():
    rng = np.random.default_rng(7)
    half = 6
    stamp = _render((2 * half + 1, 2 * half + 1), [half], [half], [1.0])
    stamp /= stamp.sum()
    shape = (200, 200)
    xs = np.array([40.0, 100.0, 160.0, 40.0, 100.0, 160.0])
    ys = np.array([40.0, 40.0, 40.0, 150.0, 150.0, 150.0])
    fluxes = np.full(6, 5e5)
    img = _render(shape, np.r_[xs, 108.0], np.r_[ys, 150.0], np.r_[fluxes, 2e5])
    img += rng.normal(0, 3.0, shape)
    var = np.full(shape, 9.0)
    f, _, _ = forced_psf_flux(img, var, lambda x, y: stamp, xs, ys)
    ac = aperture_correction(img, var, np.zeros(shape, bool), f, xs, ys, radius=12.0)
    assert ac.nstars == 5  # the star at (100, 150) with its neighbour is out


def test_validation():
    img = np.zeros((50, 50))
    var = np.ones((50, 50))
    bad = np.zeros((50, 50), bool)
    with pytest.raises(ValueError, match="radius must be > 0"):
        aperture_correction(img, var, bad, [1.0], [25.0], [25.0], radius=0.0)
    with pytest.raises(ValueError, match="differ in length"):
        aperture_correction(img, var, bad, [1.0, 2.0], [25.0], [25.0], radius=3.0)
    with pytest.raises(ValueError, match="shapes differ"):
        aperture_correction(img, var[:10], bad, [1.0], [25.0], [25.0], radius=3.0)
    with pytest.raises(ValueError, match="found 0 aperture-correction stars"):
        aperture_correction(img, var, bad, [], [], [], radius=3.0)
    # An aperture off the image does not count.
    with pytest.raises(ValueError, match="found 0 aperture-correction stars < required"):
        aperture_correction(img, var, bad, [1.0, 1.0], [1.0, 48.0], [1.0, 48.0], radius=5.0)
