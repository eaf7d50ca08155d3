"""stream.sim.psf: the simulator's own PSF stamps (independent of jitcore.psf, issue 13)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate

from diffstream.stream.sim import psf as sp

pytestmark = pytest.mark.unit


def _moments(stamp, dx=0.0, dy=0.0):
    half = stamp.shape[0] // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    return (stamp * (x - dx) ** 2).sum(), (stamp * (y - dy) ** 2).sum()


@pytest.mark.parametrize("sigma", [0.8, 1.3, 2.5])
def test_gaussian_stamp_is_the_pixel_integral(sigma):
    """Against a direct 2-D quadrature of the Gaussian over a few pixels."""
    size = 2 * math.ceil(6 * sigma) + 1
    stamp = sp.gaussian_stamp(sigma, size, dx=0.3, dy=-0.2, ellipticity=0.1)
    sx, sy = sigma * 1.1, sigma * 0.9

    def f(y, x):
        return math.exp(-0.5 * ((x - 0.3) / sx) ** 2 - 0.5 * ((y + 0.2) / sy) ** 2) / (
            2 * math.pi * sx * sy
        )

    half = size // 2
    for j, i in ((0, 0), (1, 0), (-1, 2)):
        want, _ = integrate.dblquad(f, i - 0.5, i + 0.5, j - 0.5, j + 0.5)
        assert_allclose(stamp[half + j, half + i], want, rtol=1e-6)
    assert stamp.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("beta", [2.5, 3.5, 4.5])
def test_moffat_has_its_fwhm_and_wings(beta):
    fwhm = 6.0  # wide, so pixel averaging barely changes the half-maximum width
    stamp = sp.moffat_stamp(fwhm, beta, 81)
    row = stamp[40]
    # Half maximum crossing, linear between samples.
    above = np.flatnonzero(row >= 0.5 * row.max())
    assert (above[-1] - above[0] + 1) == pytest.approx(fwhm, abs=1.0)
    # Wings: a Gaussian of the same FWHM holds far less light beyond 2 FWHM.
    gauss = sp.gaussian_stamp(fwhm / sp.FWHM_PER_SIGMA, 81)
    r = np.hypot(*np.mgrid[-40:41, -40:41])
    assert stamp[r > 2 * fwhm].sum() > 20 * gauss[r > 2 * fwhm].sum()


def test_moffat_oversampling_is_converged():
    """The docstring's claim: 5 x 5 samples per pixel keep the moments within 0.2% of 15 x 15."""
    coarse = sp.moffat_stamp(2.4, 3.0, 31, dx=0.37, dy=-0.21)
    old = sp.OVERSAMPLE
    try:
        sp.OVERSAMPLE = 15
        fine = sp.moffat_stamp(2.4, 3.0, 31, dx=0.37, dy=-0.21)
    finally:
        sp.OVERSAMPLE = old
    assert_allclose(_moments(coarse, 0.37, -0.21), _moments(fine, 0.37, -0.21), rtol=2e-3)


def test_profile_beta_varies_over_the_field():
    prof = sp.PsfProfile(kind="moffat", beta=3.0, beta_gradient=1.0, angle=0.0,
                         shape=(101, 101))  # fmt: skip
    assert prof.beta_at(0, 50) == pytest.approx(2.5)
    assert prof.beta_at(100, 50) == pytest.approx(3.5)
    left = prof.stamp(1.3, 41, x=0, y=50)
    right = prof.stamp(1.3, 41, x=100, y=50)
    r = np.hypot(*np.mgrid[-20:21, -20:21])
    assert left[r > 8].sum() > 2 * right[r > 8].sum()  # lower beta, heavier wings
    assert prof.half_size(1.3) > sp.PsfProfile().half_size(1.3)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: sp.gaussian_stamp(0.0, 5), ValueError, "sigma must be finite and > 0, got 0.0"),
        (lambda: sp.gaussian_stamp(1.0, 4), ValueError, "stamp size must be odd and >= 1, got 4"),
        (lambda: sp.gaussian_stamp(1.0, 5, ellipticity=1.0), ValueError, "ellipticity must be"),
        (lambda: sp.moffat_stamp(-1.0, 3.0, 5), ValueError, "fwhm must be finite and > 0"),
        (lambda: sp.moffat_stamp(2.0, 1.0, 5), ValueError, "beta must be finite and > 1, got 1.0"),
        (lambda: sp.PsfProfile(kind="airy"), ValueError, "PSF profile must be one of"),
        (lambda: sp.PsfProfile(kind="moffat", beta=1.5, beta_gradient=2.0), ValueError,
         "moffat beta must stay > 1 over the field"),
    ],
)  # fmt: skip
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
