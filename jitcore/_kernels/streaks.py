"""Hough accumulator for the streak search (diffstream.jitcore.streaks checks and allocates).

Each set pixel (x, y) votes once per angle theta_k in the rho bin of
rho = x cos(theta_k) + y sin(theta_k), bins of width ``rho_bin`` starting at ``rho_min``.
"""

from __future__ import annotations

import math

from diffstream.jitcore._jit import njit

__all__ = ["hough_accumulate"]


@njit("void(int64[::1], int64[::1], float64[::1], float64[::1], float64, float64, int32[:, ::1])")
def hough_accumulate(xs, ys, cos_t, sin_t, rho_min, rho_bin, acc):
    """acc[k, b] += 1 for every pixel (xs[i], ys[i]) and angle k (acc zeroed by the caller)."""
    nt = cos_t.shape[0]
    nb = acc.shape[1]
    for i in range(xs.shape[0]):
        x = float(xs[i])
        y = float(ys[i])
        for k in range(nt):
            b = int(math.floor((x * cos_t[k] + y * sin_t[k] - rho_min) / rho_bin))
            if 0 <= b < nb:
                acc[k, b] += 1
