"""Products of an image with itself at small lags: the noise autocorrelation's sums.

No checks here (diffstream.jitcore.noisecorr.noise_autocorrelation checks and allocates).
"""

from __future__ import annotations

from diffstream.jitcore._jit import njit_sums

__all__ = ["lag_sums"]


# Reassociated sums (diffstream.jitcore._jit.njit_sums): each lag's two sums split into SIMD
# lanes; only the order of the additions changes.
@njit_sums("void(float64[:, ::1], float64[:, ::1], int64, float64[:, ::1], float64[:, ::1])")
def lag_sums(x, m, radius, sums, pairs):
    """sums[radius + dy, radius + dx] = sum_p x[p] x[p + d] and pairs[...] = sum_p m[p] m[p + d]
    over the pixels p where both p and p + d = p + (dy, dx) lie in the image, for |dy|, |dx|
    <= radius.  Lags with dy > 0 (and dy = 0, dx >= 0) are summed; the others are their
    mirror images (the sum over p of a[p] a[p + d] equals that for -d)."""
    ny, nx = x.shape
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx < 0:
                continue
            i0 = max(0, -dx)
            i1 = min(nx, nx - dx)
            s = 0.0
            c = 0.0
            for j in range(ny - dy):
                # Row slices indexed from 0: no negative index to wrap, so the loop vectorises.
                xa, xb = x[j, i0:i1], x[j + dy, i0 + dx : i1 + dx]
                ma, mb = m[j, i0:i1], m[j + dy, i0 + dx : i1 + dx]
                for k in range(i1 - i0):
                    s += xa[k] * xb[k]
                    c += ma[k] * mb[k]
            sums[radius + dy, radius + dx] = s
            pairs[radius + dy, radius + dx] = c
            sums[radius - dy, radius - dx] = s
            pairs[radius - dy, radius - dx] = c
