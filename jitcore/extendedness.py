"""Extendedness of diaSources on the science image: PSF flux against an aperture model flux.

LSST's extendedness compares a point-source flux with a model (extended) flux of the same
source on the science image (meas_extensions' ClassificationExtendedness: extended when
``psfFlux < fluxRatio * modelFlux``, fluxRatio 0.925).  We have no CModel fit; the model flux
here is the aperture flux in a circle of ``radius_fwhm`` x the PSF's FWHM, divided by the
fraction of the PSF inside that circle (the aperture correction), so that a point source has
``modelFlux == psfFlux`` on average, and a source sitting on a resolved galaxy, whose light
fills the aperture more than the PSF's core, has ``modelFlux > psfFlux``.

Instead of LSST's hard 0/1 we give the probability, under Gaussian noise, that the source
passes LSST's test: ``Phi((fluxRatio * modelFlux - psfFlux) / sigma)``, sigma the propagated
error of that difference (the aperture and PSF fluxes' errors, taken as independent: a
conservative sigma, since they share pixels).  It is in [0, 1] as the schema asks: near 0 for
a bright point source, near 1 for a source on a galaxy, 0.5 when the data cannot tell.
Rejected: the hard threshold (at S/N 20 it flips a fifth of point sources to 1 on noise alone,
with nothing in the alert to say so).  tests/unit/test_extendedness.py checks both classes on
seeded simulated science images against the truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import sep

from diffstream.jitcore.photometry import aperture_flux, stack_psfs

__all__ = ["FLUX_RATIO", "extendedness"]

FLUX_RATIO = 0.925  # LSST's ClassificationExtendedness.fluxRatio
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _psf_fwhm_and_fraction(stamps: np.ndarray, radius_fwhm: float) -> tuple[np.ndarray, ...]:
    """FWHM (from the second moments) of each unit-sum stamp, and its fraction inside a
    centred circle of radius ``radius_fwhm`` x FWHM (exact pixel overlap)."""
    n, k, _ = stamps.shape
    c = (k - 1) / 2.0
    yy, xx = np.mgrid[0:k, 0:k] - c
    second = (stamps * (xx**2 + yy**2)).sum(axis=(1, 2)) / 2.0
    fwhm = _FWHM_PER_SIGMA * np.sqrt(np.clip(second, 1e-6, None))
    radius = radius_fwhm * fwhm
    inside = np.empty(n)
    for i in range(n):
        stamp = np.ascontiguousarray(stamps[i], dtype=np.float64)
        total, _, _ = sep.sum_circle(stamp, [c], [c], [radius[i]], subpix=0)
        inside[i] = float(total[0])
    return fwhm, radius, inside


def extendedness(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    badbits: int,
    xs: np.ndarray,
    ys: np.ndarray,
    psf_at: Callable[[float, float], np.ndarray],
    psf_flux: np.ndarray,
    psf_flux_err: np.ndarray,
    *,
    radius_fwhm: float = 1.5,
    flux_ratio: float = FLUX_RATIO,
) -> np.ndarray:
    """Extendedness in [0, 1] of each source at (``xs``, ``ys``) on ``image`` (background
    subtracted, with ``variance`` and ``mask``; pixels with ``badbits`` are skipped), given
    its forced PSF flux and error there (``psf_flux``, ``psf_flux_err``: the diaSource's
    scienceFlux).  NaN where either flux is missing or the aperture is unusable.

    ``radius_fwhm`` (aperture radius in PSF FWHMs; 1.5 holds 99.8 % of a Gaussian PSF with
    the least noise) and ``flux_ratio`` (LSST's 0.925) are the knobs.
    """
    if not (isinstance(radius_fwhm, int | float) and radius_fwhm > 0):
        raise ValueError(f"radius_fwhm must be a positive number, got {radius_fwhm!r}")
    if not (isinstance(flux_ratio, int | float) and 0 < flux_ratio <= 1):
        raise ValueError(f"flux_ratio must be in (0, 1], got {flux_ratio!r}")
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    psf_flux = np.asarray(psf_flux, dtype=np.float64)
    psf_flux_err = np.asarray(psf_flux_err, dtype=np.float64)
    n = xs.size
    if not (ys.size == psf_flux.size == psf_flux_err.size == n):
        raise ValueError("xs, ys, psf_flux and psf_flux_err must have one value per source")
    if n == 0:
        return np.zeros(0)
    stamps, _ = stack_psfs(psf_at, xs, ys, "science")
    _, radius, inside = _psf_fwhm_and_fraction(stamps, radius_fwhm)
    ap, ap_err, truncated, masked, failed = aperture_flux(
        image, variance, mask, badbits, xs, ys, radius
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        model = ap / inside
        model_err = ap_err / inside
        sigma = np.hypot(flux_ratio * model_err, psf_flux_err)
        z = (flux_ratio * model - psf_flux) / sigma
    out = _ndtr(z)
    bad = failed | truncated | masked | ~np.isfinite(out) | ~(sigma > 0)
    out[bad] = np.nan
    return out


_SQRT2 = math.sqrt(2.0)


def _ndtr(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF, elementwise (NaN stays NaN).  Not scipy.special.ndtr: its
    import (scipy.special pulls numpy.f2py) costs ~0.15 s of every command's start-up, for
    a function evaluated once per diaSource."""
    flat = np.asarray(z, dtype=np.float64).ravel()
    out = np.array([0.5 * math.erfc(-v / _SQRT2) if v == v else np.nan for v in flat.tolist()])
    return out.reshape(np.shape(z))
