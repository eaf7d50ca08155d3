"""Element-wise loop of the difference-image decorrelation (diffstream.jitcore.decorrelate).

Allocation-free, no checks.  Spectra are scipy.fft.rfft2 half planes of one frame.
"""

from __future__ import annotations

import math

from diffstream.jitcore._jit import njit

__all__ = ["decorrelation_filter"]

_SPEC = ("complex64[:, :]", "complex128[:, :]")
_REAL = ("float32[:, :]", "float64[:, :]")


@njit(
    [
        f"void({c}, {c}, float64, float64, float64, float64, {r})"
        for c, r in zip(_SPEC, _REAL, strict=True)
    ]
)
def decorrelation_filter(ah, bh, var_s, var_t, num, eps, out):
    """out = sqrt(num / (var_s |ah|^2 + var_t |bh|^2 + eps * num)).

    ``ah``, ``bh``: spectra of the kernels applied to the science and the template in the
    difference; ``num`` = var_s a0^2 + var_t b0^2 (their sums), so out is 1 at frequency 0.
    ``eps`` bounds the filter smoothly by 1 / sqrt(eps) where both kernels vanish (see
    diffstream.jitcore.decorrelate.DECORRELATION_EPSILON).
    """
    ny, nx = out.shape
    lo = eps * num
    for i in range(ny):
        for j in range(nx):
            a = ah[i, j]
            b = bh[i, j]
            den = var_s * (a.real * a.real + a.imag * a.imag)
            den += var_t * (b.real * b.real + b.imag * b.imag)
            out[i, j] = math.sqrt(num / (den + lo))
