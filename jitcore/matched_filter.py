"""The PSF matched-filter score of an image with uncorrelated pixel noise.

    S = (D (x) P~) / sqrt(V (x) P~^2),    P~(u) = P(-u) (correlation with the PSF)

D and V are zero on unusable pixels and outside the image, so the denominator counts
exactly the noise that entered the numerator and S is N(0, 1) on empty sky right up to an
edge or a mask (the ZOGY module's argument, jitcore/zogy.py); for a point source of flux f
at a pixel centre on uniform noise, S = f sqrt(sum P^2) / sigma, the S/N of an optimal PSF
fit.  Used for detection on a difference that arrives already subtracted (the seed's
doSubtract=False), where no ZOGY score exists.

Rejected: the inverse-variance weighted filter sum(P D / V) / sqrt(sum(P^2 / V)).  Both are
N(0, 1) on empty sky, and the weighted one is optimal when V varies on the PSF scale; but
there V carries the sources' own photon noise, so its filter changes shape from pixel to
pixel around every bright residual, where the unweighted filter keeps one shape.
Convolutions by scipy.fft (real FFTs, zero-padded to a fast
length so nothing wraps).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

__all__ = ["matched_filter_score"]


def _correlate(image: np.ndarray, kernel: np.ndarray, workers: int | None) -> np.ndarray:
    """``sum_u image(x + u) kernel(u)`` for an odd K x K kernel centred at K // 2, same shape."""
    ny, nx = image.shape
    k = kernel.shape[0]
    h = k // 2
    fy = sfft.next_fast_len(ny + k - 1, real=True)
    fx = sfft.next_fast_len(nx + k - 1, real=True)
    flipped = kernel[::-1, ::-1]  # correlation = convolution with the flipped kernel
    spec = sfft.rfft2(image, s=(fy, fx), workers=workers)
    spec *= sfft.rfft2(flipped, s=(fy, fx), workers=workers)
    full = sfft.irfft2(spec, s=(fy, fx), workers=workers)
    return full[h : h + ny, h : h + nx]


def matched_filter_score(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    psf: np.ndarray,
    *,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(score, valid)``: float32 S (0 where not valid) and a bool mask of where it holds.

    ``image`` and ``variance`` share one 2-D shape (variance >= 0 where usable); ``bad``
    (bool) marks unusable pixels, to which non-finite values and negative variances are
    added; ``psf`` is an odd square stamp (normalised to unit sum here; the score does not
    depend on its scale).  ``valid`` is False on unusable pixels and where no usable pixel
    is under the PSF.  ``workers`` as scipy.fft.
    """
    img = np.asarray(image)
    var = np.asarray(variance)
    bad_arr = np.asarray(bad)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    for name, arr in (("image", img), ("variance", var)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    if var.shape != img.shape or bad_arr.shape != img.shape:
        raise ValueError(
            f"shapes must agree: image {img.shape}, variance {var.shape}, bad {bad_arr.shape}"
        )
    if bad_arr.dtype != np.bool_:
        raise TypeError(f"bad must be a bool array, got dtype {bad_arr.dtype}")
    if img.size == 0:
        raise ValueError("image must not be empty")
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] % 2 == 0:
        raise ValueError(f"psf must be a square stamp of odd size, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or not p.sum() > 0:
        raise ValueError("psf must be finite with a positive sum")
    p = p / p.sum()
    with np.errstate(invalid="ignore"):
        unusable = bad_arr | ~np.isfinite(img) | ~np.isfinite(var) | ~(var >= 0)
    if unusable.all():
        raise ValueError("no usable pixels: every pixel is bad or non-finite")
    d = np.where(unusable, 0.0, img).astype(np.float64)
    v = np.where(unusable, 0.0, var).astype(np.float64)
    num = _correlate(d, p, workers)
    den = _correlate(v, p * p, workers)
    # FFT round-off leaves ~1e-16 relative noise; where no usable pixel is under the PSF the
    # denominator is that noise, not a variance.
    floor = 1e-10 * float(np.max(den))
    valid = ~unusable & (den > floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(valid, num / np.sqrt(np.where(valid, den, 1.0)), 0.0)
    return score.astype(np.float32), valid
