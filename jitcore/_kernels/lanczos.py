"""Lanczos resampling loop: image, variance and mask through a per-pixel coordinate map.

No checks here (jitcore.warp checks and allocates).  Weights are separable,
``L(t) = sinc(t) sinc(t / a)`` for ``|t| < a``, normalised by their sum so that a constant
image stays constant.  Sums are accumulated in float64 whatever the input dtype.

Footprint rule: an output pixel at template position (x, y) reads the ``2a x 2a`` template
pixels ``floor(x) - a + 1 .. floor(x) + a`` (same in y).  Where a coordinate is within
``SNAP`` of an integer n the weights are exactly (0, .., 1, .., 0), so the footprint shrinks
to the single column/row n: an integer shift is then an exact copy, mask included, instead
of dilating masks and NO_DATA borders through taps of weight zero (tests/unit/test_warp.py::
test_integer_shift_is_exact).  The ~1e-6 px this snaps away is far below any astrometric
error we care about.

Two entry points share the per-row loop: :func:`lanczos_warp` reads the map from full-frame
(xt, yt) arrays, :func:`lanczos_warp_spline` evaluates it per row from the coarse-grid
spline (jitcore._kernels.bspline).  Both take any band of output rows (slices), so the
caller can run bands on threads (the kernels release the GIL).
"""

from __future__ import annotations

import math

import numpy as np

from jitcore._jit import njit
from jitcore._kernels.bspline import mask_bad_cells, spline_fill_row

__all__ = ["SNAP", "lanczos_warp", "lanczos_warp_spline", "sin_small"]

# A fractional offset closer than this to 0 or 1 is treated as an exact integer.
SNAP = 1e-6

_SIG = (
    "void({img}[:, ::1], {img}[:, ::1], int32[:, ::1], float64[:, ::1], float64[:, ::1], "
    "int64, int32, int32, int32, float32[:, ::1], float32[:, ::1], int32[:, ::1])"
)


# Taylor coefficients of sin(t) / t in t^2, highest first: (-1)^k / (2k + 1)!, k = 10 .. 1.
_SIN_COEFS = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(10, 0, -1))


@njit(inline="always")
def sin_small(theta):
    """sin(theta) for 0 <= theta <= pi / 2, within 1 ulp of math.sin (Taylor to t^21).

    libm's sin took ~15% of the warp (two calls per pixel) for arguments it must also
    range-reduce; here the range is fixed, so ten multiply-adds do
    (tests/unit/test_warp.py::test_sin_small_matches_libm).
    """
    t2 = theta * theta
    p = 0.0
    for c in _SIN_COEFS:
        p = p * t2 + c
    return theta + theta * t2 * p


@njit(inline="always")
def _taps(pos, order, cphi, sphi, w):
    """Fill ``w`` with the (unnormalised) weights of ``pos``; return (first, ntaps, sum).

    ``first`` is the template index of w[0]; cphi/sphi hold cos/sin(pi k / a) per tap.
    """
    base = math.floor(pos)
    frac = pos - base
    if frac < SNAP:
        w[0] = 1.0
        return base, 1, 1.0
    if frac > 1.0 - SNAP:
        w[0] = 1.0
        return base + 1, 1, 1.0
    # sin(pi (frac - k)) = (-1)^k sin(pi frac) and sin(pi (frac - k) / a) by angle addition,
    # both from sin(theta), theta = pi frac / a (sin(a theta) by the Chebyshev recurrence;
    # cos(theta) = sqrt(1 - sin^2) >= 0 as theta is in (0, pi / 2] for a >= 2): one sine
    # (a polynomial, sin_small) per axis instead of 4a transcendental calls.
    sa = sin_small(math.pi * frac / order)
    ca = math.sqrt(1.0 - sa * sa)
    sk_prev = 0.0
    sk = sa
    for _ in range(order - 1):
        sk_prev, sk = sk, 2.0 * ca * sk - sk_prev
    s1 = sk * order / (math.pi * math.pi)
    total = 0.0
    ntaps = 2 * order
    sign = -1.0 if (order % 2) == 0 else 1.0  # (-1)^k for the first tap, k = 1 - a
    for j in range(ntaps):
        t = frac - (j - order + 1)
        wt = sign * s1 * (sa * cphi[j] - ca * sphi[j]) / (t * t)
        w[j] = wt
        total += wt
        sign = -sign
    return base - order + 1, ntaps, total


@njit(inline="always")
def _phases(order):
    """cos/sin(pi k / a) for the 2a taps k = 1 - a .. a (see :func:`_taps`)."""
    ntaps = 2 * order
    cphi = np.empty(ntaps, dtype=np.float64)
    sphi = np.empty(ntaps, dtype=np.float64)
    for j in range(ntaps):
        phi = math.pi * (j - order + 1) / order
        cphi[j] = math.cos(phi)
        sphi[j] = math.sin(phi)
    return cphi, sphi


# One output *row* per call, not one pixel: a per-pixel helper (inline="always") made the
# whole loop ~1.5x slower (Numba's IR inlining of its early returns), while one ordinary
# call per row costs nothing and lets both kernels below share every rule.
@njit
def _warp_row(
    image, variance, mask, xrow, yrow, order, no_data, edge, bad, cphi, sphi, wx, wy,
    out_img, out_var, out_mask,
):  # fmt: skip
    """Resample one output row at template positions (xrow, yrow) into the out rows."""
    tny, tnx = image.shape
    nan = np.float32(np.nan)
    for i in range(xrow.size):
        x = xrow[i]
        y = yrow[i]
        if not (x > -order and x < tnx + order and y > -order and y < tny + order):
            # Non-finite or entirely off the template (also keeps floor() in range).
            out_img[i] = nan
            out_var[i] = nan
            out_mask[i] = no_data
            continue
        x0, nwx, sx = _taps(x, order, cphi, sphi, wx)
        y0, nwy, sy = _taps(y, order, cphi, sphi, wy)
        acc = 0.0
        vacc = 0.0
        m = np.int32(0)
        if x0 >= 0 and x0 + nwx <= tnx and y0 >= 0 and y0 + nwy <= tny:
            # Fast path (almost every pixel): footprint wholly inside, no bound tests.
            for q in range(nwy):
                row = 0.0
                vrow = 0.0
                for p in range(nwx):
                    row += wx[p] * image[y0 + q, x0 + p]
                    vrow += wx[p] * wx[p] * variance[y0 + q, x0 + p]
                    m |= mask[y0 + q, x0 + p]
                acc += wy[q] * row
                vacc += wy[q] * wy[q] * vrow
        else:
            # The footprint leaves the template: no data; EDGE where it is only partly out.
            for q in range(nwy):
                ty = y0 + q
                if ty < 0 or ty >= tny:
                    continue
                for p in range(nwx):
                    tx = x0 + p
                    if tx >= 0 and tx < tnx:
                        m |= mask[ty, tx]
            out_img[i] = nan
            out_var[i] = nan
            # The guard above only catches positions a full kernel radius off; nearer
            # ones can still have every tap outside (no EDGE then), hence this test.
            inside = (x0 + nwx > 0 and x0 < tnx) and (y0 + nwy > 0 and y0 < tny)
            out_mask[i] = (m | no_data | edge) if inside else (m | no_data)
            continue
        norm = sx * sy
        value = acc / norm
        var = vacc / (norm * norm)
        # A NaN/inf pixel anywhere in the footprint (weights are all non-zero) makes the
        # sums non-finite, so one test here replaces a test per tap.
        if (m & bad) != 0 or not (math.isfinite(value) and math.isfinite(var)):
            out_img[i] = nan
            out_var[i] = nan
            out_mask[i] = m | no_data
            continue
        out_img[i] = value
        out_var[i] = var
        out_mask[i] = m


def _lanczos_warp(
    image, variance, mask, xt, yt, order, no_data, edge, bad, out_img, out_var, out_mask
):
    ntaps = 2 * order
    wx = np.empty(ntaps, dtype=np.float64)
    wy = np.empty(ntaps, dtype=np.float64)
    cphi, sphi = _phases(order)
    for j in range(xt.shape[0]):
        _warp_row(
            image, variance, mask, xt[j], yt[j], order, no_data, edge, bad, cphi, sphi,
            wx, wy, out_img[j], out_var[j], out_mask[j],
        )  # fmt: skip


def _lanczos_warp_spline(
    image, variance, mask, coef_x, coef_y, row_start, row_w, col_start, col_w,
    cell_row, cell_col, cell_bad, order, no_data, edge, bad, out_img, out_var, out_mask,
):  # fmt: skip
    # The map is evaluated one row at a time into two small buffers (the very numbers
    # jitcore._kernels.bspline.spline_grid writes out) instead of being read from
    # full-frame xt/yt arrays: at 4k x 4k those are 256 MB written and read back, and
    # evaluating them with dense BLAS products took ~0.2 s, more than this.
    ny, nx = out_img.shape
    ntaps = 2 * order
    wx = np.empty(ntaps, dtype=np.float64)
    wy = np.empty(ntaps, dtype=np.float64)
    rx = np.empty(coef_x.shape[1], dtype=np.float64)
    xrow = np.empty(nx, dtype=np.float64)
    yrow = np.empty(nx, dtype=np.float64)
    cphi, sphi = _phases(order)
    for j in range(ny):
        spline_fill_row(coef_x, row_start, row_w, col_start, col_w, j, rx, xrow)
        spline_fill_row(coef_y, row_start, row_w, col_start, col_w, j, rx, yrow)
        mask_bad_cells(cell_bad, cell_row[j], cell_col, xrow, yrow)
        _warp_row(
            image, variance, mask, xrow, yrow, order, no_data, edge, bad, cphi, sphi,
            wx, wy, out_img[j], out_var[j], out_mask[j],
        )  # fmt: skip


lanczos_warp = njit([_SIG.format(img="float32"), _SIG.format(img="float64")])(_lanczos_warp)

_SIG_SPLINE = (
    "void({img}[:, ::1], {img}[:, ::1], int32[:, ::1], float64[:, ::1], float64[:, ::1], "
    "int64[::1], float64[:, ::1], int64[::1], float64[:, ::1], int64[::1], int64[::1], "
    "uint8[:, ::1], int64, int32, int32, int32, float32[:, ::1], float32[:, ::1], "
    "int32[:, ::1])"
)
lanczos_warp_spline = njit([_SIG_SPLINE.format(img=t) for t in ("float32", "float64")])(
    _lanczos_warp_spline
)
