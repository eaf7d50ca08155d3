"""Pixel statistics of small stamps around many sources, allocation-free.

No checks here (diffstream.jitcore.stampstats checks and allocates).  One pass over each
source's stamp computes what the real/bogus features need (stream/alerts/reliability.py):
the unusable-pixel fraction, the fraction of core pixels below -2 sigma in the source's own
polarity, the opposite over same polarity S/N sums, and the brightest pixel near the centre.
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = ["NSTATS", "stamp_stats"]

# out columns: badPixelFraction, negFraction, oppositeFluxRatio, peakConcentration
NSTATS = 4


def _stamp_stats(
    image, variance, x, y, sigma, sign, psf_flux, core_sigmas, outer_sigmas, max_half, out
):  # fmt: skip
    """out[i] <- the NSTATS statistics of source i (NaN where undefined), its stamp the
    pixels within ``half`` = clip(ceil(outer_sigmas sigma), 2, max_half) of the nearest
    pixel to (x, y), cut by the image.

    z = sign * D / sqrt(V) over usable pixels (finite D and V, V > 0); r the distance to
    (x, y).  negFraction: z < -2 among usable r <= core_sigmas sigma; oppositeFluxRatio:
    -sum(z < 0) / sum(z > 0) over usable r <= outer_sigmas sigma (NaN when the latter is 0);
    peakConcentration: max sign * D over usable r <= 1.5, times 2 pi sigma^2 / |psf_flux|
    (the central pixel's share of a Gaussian PSF's flux).

    The sums run in pixel order, where NumPy's sum is pairwise: they differ in the last bits
    (the reference test allows 1e-12), far below any split of the model's trees."""
    ny, nx = image.shape
    for i in range(x.shape[0]):
        for k in range(out.shape[1]):
            out[i, k] = math.nan
        xi = x[i]
        yi = y[i]
        sg = sigma[i]
        if not (math.isfinite(xi) and math.isfinite(yi) and math.isfinite(sg) and sg > 0.0):
            continue
        half = int(min(max_half, max(2.0, math.ceil(outer_sigmas * sg))))
        cx = int(math.floor(xi + 0.5))
        cy = int(math.floor(yi + 0.5))
        y0 = max(cy - half, 0)
        y1 = min(cy + half + 1, ny)
        x0 = max(cx - half, 0)
        x1 = min(cx + half + 1, nx)
        if y1 <= y0 or x1 <= x0:
            continue
        s = sign[i]
        core_r = core_sigmas * sg
        outer_r = outer_sigmas * sg
        n_all = 0
        n_good = 0
        n_core = 0
        n_low = 0
        pos = 0.0
        neg = 0.0
        n_near = 0
        peak = -math.inf
        for j in range(y0, y1):
            for k in range(x0, x1):
                n_all += 1
                # np.float64, not float(): Numba's float() keeps a float32 a float32, and
                # the sqrt below would be taken in single precision.
                d = np.float64(image[j, k])
                v = np.float64(variance[j, k])
                if not (math.isfinite(d) and math.isfinite(v) and v > 0.0):
                    continue
                n_good += 1
                z = s * d / math.sqrt(v)
                r = math.hypot(k - xi, j - yi)
                if r <= core_r:
                    n_core += 1
                    if z < -2.0:
                        n_low += 1
                if r <= outer_r:
                    if z > 0.0:
                        pos += z
                    elif z < 0.0:
                        neg += z
                if r <= 1.5:
                    n_near += 1
                    peak = max(peak, s * d)
        out[i, 0] = 1.0 - n_good / n_all
        if n_core > 0:
            out[i, 1] = n_low / n_core
        if pos > 0.0:
            out[i, 2] = -neg / pos
        f = psf_flux[i]
        if n_near > 0 and math.isfinite(f) and f != 0.0:
            out[i, 3] = peak * 2.0 * math.pi * sg**2 / abs(f)


_IMG = "{t}[:, ::1]"


def _sigs():
    return [
        f"void({_IMG.format(t=t)}, {_IMG.format(t=t)}, float64[::1], float64[::1], "
        "float64[::1], float64[::1], float64[::1], float64, float64, int64, float64[:, ::1])"
        for t in ("float32", "float64")
    ]


stamp_stats = njit(_sigs())(_stamp_stats)
