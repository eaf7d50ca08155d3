"""Element-wise loops of the difference-image decorrelation (diffstream.jitcore.decorrelate).

Allocation-free, no checks.  Spectra are scipy.fft.rfft2 half planes of one frame.
"""

from __future__ import annotations

import math

from diffstream.jitcore._jit import njit

__all__ = ["decorrelation_filter", "decorrelation_products"]

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


_SPEC_C = ("complex64[:, ::1]", "complex128[:, ::1]")


@njit([f"void({', '.join([c] * 16)}, boolean)" for c in _SPEC_C])
def decorrelation_products(xd, xsv, xtv, xs, phi, pdc, ka2, kb2, kas2, kbs2, kas,
                           d, n, vd, vn, ns, parts):  # fmt: skip
    """A decorrelation tile's five output spectra in one pass over its frame's half plane.

        d  = xd phi          n  = d pdc  (d as stored, rounded to the spectra's dtype)
        vd = xsv ka2 + xtv kb2          vn = xsv kas2 + xtv kbs2
        ns = xs kas  (only with ``parts``; otherwise xs, kas and ns are not read or written)

    (xd, xsv, xtv, xs: the spectra of the difference, the two variance planes and the
    science; phi ... kas: the kernels' frame spectra, diffstream.jitcore.decorrelate._tile.)
    Each product in the spectra's precision, in the order NumPy's expressions take.  Why
    fused: as NumPy expressions they were seven passes and four temporaries of frame size
    per tile (~10% of the decorrelation's CPU at 4k, issue 17).  Outputs must not overlap
    the inputs.
    """
    ny, nx = xd.shape
    for i in range(ny):
        for j in range(nx):
            dd = xd[i, j] * phi[i, j]
            d[i, j] = dd
            n[i, j] = dd * pdc[i, j]
        for j in range(nx):
            sv = xsv[i, j]
            tv = xtv[i, j]
            vd[i, j] = sv * ka2[i, j] + tv * kb2[i, j]
            vn[i, j] = sv * kas2[i, j] + tv * kbs2[i, j]
        if parts:
            for j in range(nx):
                ns[i, j] = xs[i, j] * kas[i, j]
