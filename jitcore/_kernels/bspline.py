"""Evaluating a bicubic tensor-product B-spline on (a window of) the pixel grid.

No checks here (diffstream.jitcore.warp fits the spline, checks and allocates).  The spline is
``S(y, x) = sum_kl By_k(y) C[k, l] Bx_l(x)``; at any point only 4 basis functions per axis
are non-zero, so along a row it costs ``r = By(y) C`` once (4 x ncx products), then 4
products per pixel, 33x less arithmetic than the dense ``B_y @ C @ B_x.T`` BLAS product
this replaced (which sums ~130 terms per pixel, almost all zero).  Evaluated inside the
warp it costs ~2% of the Lanczos loop; written out at 4k x 4k (:func:`spline_grid`) the
time is mostly the 256 MB of output.

Per axis the caller passes, for every pixel, ``start`` (index of the first of the 4 basis
functions that are non-zero there) and ``weights`` (their 4 values).  ``cell_bad[cy, cx]``
marks the cells of the coarse grid with a node where the mapping was not finite; pixels
in them get NaN (``cell_row``/``cell_col`` give each pixel's cell).

The row helpers are shared with the fused Lanczos kernel (diffstream.jitcore._kernels.lanczos), so
the map a fused warp uses is bit for bit the one :func:`spline_grid` writes out
(tests/unit/test_warp.py::test_spline_warp_equals_grid_warp).
"""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = ["spline_fill_row", "mask_bad_cells", "spline_grid"]


@njit
def spline_fill_row(coef, row_start, row_w, col_start, col_w, j, tmp, out):
    """out[i] = the spline at (row j, column i) for every column; ``tmp`` holds ncx floats."""
    s = row_start[j]
    w0 = row_w[j, 0]
    w1 = row_w[j, 1]
    w2 = row_w[j, 2]
    w3 = row_w[j, 3]
    for c in range(coef.shape[1]):
        tmp[c] = w0 * coef[s, c] + w1 * coef[s + 1, c] + w2 * coef[s + 2, c] + w3 * coef[s + 3, c]
    for i in range(out.size):
        s = col_start[i]
        out[i] = (
            col_w[i, 0] * tmp[s]
            + col_w[i, 1] * tmp[s + 1]
            + col_w[i, 2] * tmp[s + 2]
            + col_w[i, 3] * tmp[s + 3]
        )


@njit
def mask_bad_cells(cell_bad, cy, cell_col, xrow, yrow):
    """NaN where a pixel of this row (in cell row ``cy``) lies in a bad cell."""
    bad_row = cell_bad[cy]
    for i in range(xrow.size):
        if bad_row[cell_col[i]]:
            xrow[i] = np.nan
            yrow[i] = np.nan


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
    tmp = np.empty(coef_x.shape[1], dtype=np.float64)
    for j in range(row_start.size):
        spline_fill_row(coef_x, row_start, row_w, col_start, col_w, j, tmp, out_x[j])
        spline_fill_row(coef_y, row_start, row_w, col_start, col_w, j, tmp, out_y[j])
        mask_bad_cells(cell_bad, cell_row[j], cell_col, out_x[j], out_y[j])
