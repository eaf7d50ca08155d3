"""Aperture correction: the factor from a PSF-fit flux to the flux in a large aperture,
measured on the image's own PSF stars (LSST's ``MeasureApCorrTask``, one constant factor).

A measured PSF stamp is finite (2 ceil(4 sigma) + 1 px) and normalised to unit sum, so a PSF
fit returns the flux *inside the stamp*: the wings beyond it are lost.  On the real DECam
cut-outs that is 3-5% of a star's flux (psfFlux / injected 0.964 for fakes made from the
exposures' own stars, benchmarks/real_data_report.py).  LSST calibrates PSF fluxes to a fixed
aperture in the same way (``base_CircularApertureFlux_12_0``), here at a radius in units of
the PSF's FWHM so that it follows the seeing.

The factor is the inverse-variance weighted mean of aperture / PSF flux over the stars, the
weights from the aperture flux's error (the larger one: sky noise over the whole aperture)
plus a 0.5% floor per star, so that the brightest stars, whose ratios are the least noisy,
carry it, and no single star weighs more than that floor allows; stars more than 3 sigma
from their weighted median are dropped once.  Rejected: enlarging the PSF stamp to the wings.  Every
ZOGY kernel and the invalid strip along the image edges grow with the stamp, and the wings
of a median stack of 4-5 stars are mostly noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffstream.jitcore.photometry import aperture_flux
from diffstream.jitcore.planes import native_float

__all__ = ["ApCorr", "aperture_correction"]

_FLOOR = 0.005  # per-star systematic (registration, background), relative


@dataclass
class ApCorr:
    """``factor`` multiplies a PSF flux (and its error); ``err`` is its standard error."""

    factor: float
    err: float
    nstars: int
    radius: float  # px
    ratios: list[float] = field(default_factory=list)  # per star, for QA


def aperture_correction(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    psf_flux: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    radius: float,
    min_stars: int = 2,
) -> ApCorr:
    """Aperture / PSF flux of the stars at (``xs``, ``ys``) with PSF fluxes ``psf_flux``.

    ``image`` is background-subtracted, ``variance`` its variance (same units), ``bad`` True
    where a pixel is unusable; ``radius`` the aperture radius in px.  Stars whose aperture
    leaves the image or holds a bad pixel, or whose PSF flux is not positive, are skipped.
    Raises ValueError when fewer than ``min_stars`` remain (the caller decides the fallback).
    """
    # The planes as they come (sep sums float32 in double): a float64 copy of a 4k pair's
    # science image and variance was 256 MB, the pipeline's peak RSS.
    img = native_float(image)
    var = native_float(variance)
    msk = np.ascontiguousarray(bad, dtype=bool)
    if not img.shape == var.shape == msk.shape or img.ndim != 2:
        raise ValueError(f"shapes differ or not 2-D: {img.shape}, {var.shape}, {msk.shape}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    x = np.asarray(xs, dtype=np.float64).ravel()
    y = np.asarray(ys, dtype=np.float64).ravel()
    f = np.asarray(psf_flux, dtype=np.float64).ravel()
    if not x.size == y.size == f.size:
        raise ValueError(f"xs, ys, psf_flux differ in length: {x.size}, {y.size}, {f.size}")
    if x.size == 0:
        raise ValueError(f"found 0 aperture-correction stars < required min_stars={min_stars}")
    # ``bad`` given, the mask plane is not read: ``msk`` stands in (no image-sized zeros).
    ap, ap_err, truncated, masked, failed = aperture_flux(
        img, var, msk, 0, x, y, np.full(x.size, float(radius)), bad=msk
    )
    ok = ~(truncated | masked | failed) & (f > 0) & np.isfinite(f)
    ratio = np.where(ok, ap / np.where(ok, f, 1.0), np.nan)
    sigma = np.hypot(np.where(ok, ap_err / np.where(ok, f, 1.0), np.inf), _FLOOR * np.abs(ratio))
    use = ok & np.isfinite(ratio) & np.isfinite(sigma) & (sigma > 0)
    if use.sum() < min_stars:
        raise ValueError(
            f"found {int(use.sum())} aperture-correction stars < required "
            f"min_stars={min_stars} (of {x.size}: apertures whole, PSF flux > 0)"
        )
    # One clipping pass about the weighted median: not the weighted mean, which a bright star
    # with a neighbour in its aperture drags (tests/unit/test_apcorr.py), nor the plain
    # median, which the faint stars' noisy ratios set (DECam: 2 of 5 stars at S/N > 300).
    centre = _weighted_median(ratio[use], 1.0 / sigma[use] ** 2)
    keep = use & (np.abs(np.nan_to_num(ratio) - centre) <= 3.0 * np.where(use, sigma, 1.0))
    if keep.sum() >= min_stars:
        use = keep
    w = 1.0 / sigma[use] ** 2
    mean = float(np.sum(w * ratio[use]) / np.sum(w))
    err = float(1.0 / np.sqrt(np.sum(w)))
    return ApCorr(mean, err, int(use.sum()), float(radius), [float(r) for r in ratio[use]])


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value where the cumulative weight (sorted by value) first reaches half."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])
