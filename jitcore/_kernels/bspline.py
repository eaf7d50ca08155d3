"""Evaluating a bicubic tensor-product B-spline on (a window of) the pixel grid.

No checks here (diffstream.jitcore.warp fits the spline, checks and allocates).  The spline is
``S(y, x) = sum_kl By_k(y) C[k, l] Bx_l(x)``; at any point only 4 basis functions per axis
are non-zero, so along a row it costs ``r = By(y) C`` once (4 x ncx products), then 4
products per pixel, 33x less arithmetic than the dense ``B_y @ C @ B_x.T`` BLAS product
this replaced (which sums ~130 terms per pixel, almost all zero).  Evaluated inside the
warp it costs ~1.7 ns/px for both maps (~8% of the Lanczos loop); written out at 4k x 4k
(:func:`spline_grid`) the time is mostly the 256 MB of output.

Per axis the caller passes, for every pixel, ``start`` (index of the first of the 4 basis
functions that are non-zero there) and ``weights`` (their 4 values).  ``cell_bad[cy, cx]``
marks the cells of the coarse grid with a node where the mapping was not finite; pixels
in them get NaN (``cell_row``/``cell_col`` give each pixel's cell).

The row helper (:func:`spline_fill_rows`) is shared with the fused Lanczos kernel
(diffstream.jitcore._kernels.lanczos), so the map a fused warp uses is bit for bit the one
:func:`spline_grid` writes out (tests/unit/test_warp_spline.py::
test_spline_warp_equals_grid_warp).
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = ["quintic_shift_stack", "spline_fill_rows", "spline_grid"]


@njit
def spline_fill_rows(coef_x, coef_y, row_start, row_w, col_start, col_w, j, cell_bad, cy,
                     cell_col, tmp, out_x, out_y):  # fmt: skip
    """out_x/out_y[i] = the two splines at (row j, column i) for every column; NaN where the
    pixel's cell (row ``cy`` of ``cell_bad``, column ``cell_col[i]``) is bad.

    ``tmp`` holds (2, ncx) floats.  The columns are taken one cell of the coarse grid at a
    time (the same 4 basis functions, ``col_start`` constant), so the per-pixel loop reads
    4 + 4 coefficients held in registers instead of gathering them, and vectorises; both maps
    share the loads of ``col_w``.  The arithmetic per pixel is unchanged (same products, summed
    in the same order).
    """
    s = row_start[j]
    w0 = row_w[j, 0]
    w1 = row_w[j, 1]
    w2 = row_w[j, 2]
    w3 = row_w[j, 3]
    tx = tmp[0]
    ty = tmp[1]
    for c in range(coef_x.shape[1]):
        tx[c] = (
            w0 * coef_x[s, c]
            + w1 * coef_x[s + 1, c]
            + w2 * coef_x[s + 2, c]
            + w3 * coef_x[s + 3, c]
        )
        ty[c] = (
            w0 * coef_y[s, c]
            + w1 * coef_y[s + 1, c]
            + w2 * coef_y[s + 2, c]
            + w3 * coef_y[s + 3, c]
        )
    n = out_x.size
    i = 0
    while i < n:
        s = col_start[i]
        e = i + 1
        while e < n and col_start[e] == s:
            e += 1
        x0 = tx[s]
        x1 = tx[s + 1]
        x2 = tx[s + 2]
        x3 = tx[s + 3]
        y0 = ty[s]
        y1 = ty[s + 1]
        y2 = ty[s + 2]
        y3 = ty[s + 3]
        for k in range(i, e):
            c0 = col_w[k, 0]
            c1 = col_w[k, 1]
            c2 = col_w[k, 2]
            c3 = col_w[k, 3]
            out_x[k] = c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
            out_y[k] = c0 * y0 + c1 * y1 + c2 * y2 + c3 * y3
        i = e
    bad_row = cell_bad[cy]
    any_bad = False
    for c in range(bad_row.size):
        any_bad |= bad_row[c] != 0
    if any_bad:
        for i in range(n):
            if bad_row[cell_col[i]]:
                out_x[i] = np.nan
                out_y[i] = np.nan


_SIG = (
    "void(float64[:, ::1], float64[:, ::1], int64[::1], float64[:, ::1], int64[::1], "
    "float64[:, ::1], int64[::1], int64[::1], uint8[:, ::1], float64[:, ::1], float64[:, ::1])"
)


@njit(_SIG)
def spline_grid(
    coef_x, coef_y, row_start, row_w, col_start, col_w, cell_row, cell_col, cell_bad, out_x, out_y
):
    """(out_x, out_y)[j, i] = the two splines at pixel (row j, column i) of the window.

    The window is whatever the per-row and per-column arrays cover (slices of the full ones).
    """
    tmp = np.empty((2, coef_x.shape[1]), dtype=np.float64)
    for j in range(row_start.size):
        spline_fill_rows(coef_x, coef_y, row_start, row_w, col_start, col_w, j, cell_bad,
                         cell_row[j], cell_col, tmp, out_x[j], out_y[j])  # fmt: skip


@njit
def _quintic_weights(cc, w):
    """w[0..5] <- the quintic B-spline weights of the 6 knots around ``cc`` (the first at
    floor(cc) - 2), as scipy.ndimage computes them (ni_splines.c,
    get_spline_interpolation_weights: same expressions, the last weight 1 minus the rest)."""
    x = cc - math.floor(cc)
    y = x
    z = 1.0 - x
    t = y * y
    w[2] = t * (t * (0.25 - y / 12.0) - 0.5) + 0.55
    t = z * z
    w[3] = t * (t * (0.25 - z / 12.0) - 0.5) + 0.55
    y += 1.0
    w[1] = y * (y * (y * (y * (y / 24.0 - 0.375) + 1.25) - 1.75) + 0.625) + 0.425
    z += 1.0
    w[4] = z * (z * (z * (z * (z / 24.0 - 0.375) + 1.25) - 1.75) + 0.625) + 0.425
    y = 1.0 - x
    t = y * y
    w[0] = y * t * t / 120.0
    w[5] = 1.0
    for i in range(5):
        w[5] -= w[i]


@njit
def quintic_shift_stack(coef, dy, dx, npad, lo, hi, wy, wx, out):
    """out[k, i - lo, j - lo] <- stamp k's quintic spline at (i + dy[k], j + dx[k]) for i, j
    in [lo, hi), from its spline coefficients ``coef[k]`` (the stamp padded by ``npad`` on
    each side, then prefiltered), i.e. scipy.ndimage.shift(stamp, (-dy, -dx), order=5,
    mode="nearest")[lo:hi, lo:hi]: the coordinate ``(i + dy) + npad``, the weights and the
    36-term sum ((coefficient x weight_y) x weight_x, x fastest) in zoom_shift's order.  The
    6 x 6 window must lie inside ``coef`` (npad > |shift| + 3).  ``wy``, ``wx``: (6,)
    scratch."""
    for k in range(coef.shape[0]):
        for i in range(lo, hi):
            cy = float(i)
            cy += dy[k]
            cy += float(npad)
            sy = int(math.floor(cy)) - 2
            _quintic_weights(cy, wy)
            for j in range(lo, hi):
                cx = float(j)
                cx += dx[k]
                cx += float(npad)
                sx = int(math.floor(cx)) - 2
                _quintic_weights(cx, wx)
                t = 0.0
                for a in range(6):
                    for b in range(6):
                        t += coef[k, sy + a, sx + b] * wy[a] * wx[b]
                out[k, i - lo, j - lo] = t
