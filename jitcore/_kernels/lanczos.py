"""Lanczos resampling loop: image, variance and mask through a per-pixel coordinate map.

No checks here (diffstream.jitcore.warp checks and allocates).  Weights are separable,
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
spline (diffstream.jitcore._kernels.bspline).  Both take any band of output rows (slices), so the
caller can run bands on threads (the kernels release the GIL), and :func:`mask_blocks` of
the template's mask.  How a row is computed (taps and classes for the whole row first,
then runs of pixels summed by vectorised loops) is described above :func:`_make_row`; the
kernels are specialised per order (2a taps unrolled).
"""

from __future__ import annotations

import math

import numpy as np
from numba import uint64

from diffstream.jitcore._jit import njit, njit_vec
from diffstream.jitcore._kernels.bspline import spline_fill_rows

__all__ = [
    "SNAP",
    "ORDERS",
    "KERNELS",
    "BLOCK_SHIFT",
    "lanczos_warp",
    "lanczos_warp_spline",
    "mask_blocks",
    "sin_small",
]

# A fractional offset closer than this to 0 or 1 is treated as an exact integer.
SNAP = 1e-6

# Scratch columns past the row's end: runs are padded to a multiple of this many pixels.
PAD = 8

# The mask is summarised in square blocks of 2**BLOCK_SHIFT pixels a side (see mask_blocks).
BLOCK_SHIFT = 5


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


# ------------------------------------------------------------------------------------------
# How a row is resampled.  Figures: CPU time per output pixel, benchmarks/bench_warp.py's
# map (4k x 4k, order 3, 1.5 degree rotation), one thread, this 2-core AMD EPYC (AVX-512),
# best of many alternating runs on a shared, noisy host.  Now ~20 ns/px; the design before
# (f019b83) ~39 here (~41 on the old Xeon), the per-pixel loop before that ~93.
#
# 1. ``taps_row``: floor, fraction and the 2a weights of the whole row, in loops over
#    pixels with no branches that LLVM vectorises.  The products prod_{l != k} t_l^2 of
#    the 2a taps share their prefix (15 multiplies instead of 30 for a = 3, the same ones
#    in the same order, so the same bits): ~3 ns/px for both axes.
# 2. ``classify``: per pixel, with selects only (vectorised), whether its footprint is
#    whole (2a x 2a, no snapped axis, inside the template), its first template row and
#    its first template column minus its index.  A "run" (consecutive whole pixels in the
#    same template rows, one column apart: ~38 px at a 1.5 degree rotation, the whole row
#    without one) is then a stretch of equal integers.  The branchy per-pixel test this
#    replaced cost, with the normalisation, ~16 ns/px.
# 3. The run sums (``run_image``, ``run_variance``, ``run_mask``): loops over the run's
#    pixels, whose loads are contiguous, vectorised 8 float64 lanes wide, ~10 ns/px.
#    - Each run is padded to a whole number of vectors (PAD), so the loops never run
#      their scalar remainder, which for 38-px runs cost as much as the vector body.  The
#      extra lanes read template pixels that exist (the next ones, or the next row's) and
#      are discarded; a run whose padding would leave the template array is not padded
#      (test_runs_ending_at_the_template_end_stay_inside_it: planes before a PROT_NONE page).
#    - Fused multiply-adds (njit_vec(fma=True)): ~2 ns/px.  One rounding instead of two
#      in float64: on the two simulated 4k pairs (orders 3 and 5) one output pixel in
#      67 million differed, by one float32 ulp.
#    - The mask's OR (4a^2 loads a pixel, ~4 ns/px) is skipped where the footprint lies in
#      32 x 32 blocks with no bit set (``mask_blocks``, one pass, ~3 ms at 4k; nearly every
#      run of a simulated template).  A full OR-dilation of the mask (one load per pixel)
#      was rejected earlier: ~3.6 ns per template pixel to build (66 ms at 4k).
# 4. ``finish_runs``: normalisation and the NO_DATA rule for the row's runs in one loop of
#    selects.  NumPy's error model (njit_vec): Python's tests every divisor for zero, and
#    a loop that may raise does not vectorise (the normalisation ran scalar).
# 5. Every other pixel (snapped coordinates, footprint partly or wholly off the template,
#    no map) takes the scalar per-pixel path (``other``, ``pixel``).
# The map itself (bspline.spline_fill_rows, both axes): ~1.7 ns/px.
#
# A whole pixel's arithmetic is the same wherever it falls in a run (vector lanes and any
# remainder are the same contracted operations), so the result does not depend on how a
# row splits into runs, nor on bands or threads (test_result_does_not_depend_on_runs).
# Numba leaves LLVM's SLP vectoriser off (NUMBA_SLP_VECTORIZE), so vectorising *within*
# one pixel's 6 x 6 footprint (tried: ~45 ns/px) needs loops over pixels instead.  Indices
# into the template are cast to uint64 in the run loops: Numba wraps negative signed
# indices (``i < 0 ? i + n : i``), which turned every load into a gather and kept the
# loops scalar (36 against 11 ns/px).  Tried and rejected here: the output in blocks of
# 128-1024 columns, so that the template rows a band reads stay in L2 (39-52 against 39
# ns/px: the loop is not memory-bound); image and variance summed in one loop (34 against
# 22 ns/px: LLVM no longer unrolls the taps); col_w transposed for the spline (2.1 against
# 1.7 ns/px); FMA in taps_row (no gain measurable).  Float32 sums (16 lanes, no
# conversions, outputs no longer identical): a first try, weights cast once per row and runs
# still padded to 8, gained nothing (24.7 against 24.4 ns/px); not pursued.
# Cost: each order is its own compiled code, so a cold Numba cache compiles this module
# in ~30 s (once per machine, cache=True).
# ------------------------------------------------------------------------------------------

_u = uint64


def _make_row(order):
    """The per-row resampler for Lanczos-``order`` (2a = ``2 * order`` taps, unrolled)."""
    ntaps = 2 * order
    # cos/sin(pi k / a) and (-1)^k for the taps k = 1 - a .. a (see taps_row).
    cphi = tuple(math.cos(math.pi * (j - order + 1) / order) for j in range(ntaps))
    sphi = tuple(math.sin(math.pi * (j - order + 1) / order) for j in range(ntaps))
    sign = tuple(1.0 if (j - order + 1) % 2 == 0 else -1.0 for j in range(ntaps))

    @njit_vec
    def taps_row(pos, base, frac, w, total):
        """Per pixel: floor, fraction, the 2a unnormalised weights w[:, i] and their sum.

        L(t) = sinc(t) sinc(t / a) at t = frac - k is, up to a factor common to all taps,
        (-1)^k sin(theta - pi k / a) / t^2 with theta = pi frac / a (sin(pi (frac - k)) =
        (-1)^k sin(pi frac), and angle addition); one sine (a polynomial, sin_small) per
        pixel instead of 4a transcendental calls.  The common factor cancels in the
        normalisation, and so does prod_k t_k^2: w_k = (-1)^k sin(theta - pi k / a)
        prod_{l != k} t_l^2 needs no division (in the per-pixel loop: 75 against 88 ns/px).
        Snapped fractions (see the module docstring) are not special-cased here; their
        weights are computed and not used.  Loops over pixels with no branches: vectorised.
        """
        for i in range(pos.size):
            b = np.floor(pos[i])
            f = pos[i] - b
            s = sin_small(math.pi * f / order)
            # cos(theta) >= 0 as theta is in [0, pi / 2] for a >= 2.
            c = math.sqrt(1.0 - s * s)
            base[i] = b
            frac[i] = f
            # prod_{l != k} t_l^2 as (t_0^2 .. t_{k-1}^2) t_{k+1}^2 .. in that order, the
            # prefix shared by all k (w[k, i] holds it until the weight replaces it).
            p = 1.0
            for k in range(ntaps):
                w[k, i] = p
                t = f - (k - order + 1)
                p = p * (t * t)
            tot = 0.0
            for k in range(ntaps):
                prod = w[k, i]
                for m in range(k + 1, ntaps):
                    t = f - (m - order + 1)
                    prod = prod * (t * t)
                wk = sign[k] * (s * cphi[k] - c * sphi[k]) * prod
                w[k, i] = wk
                tot += wk
            total[i] = tot

    @njit_vec(fma=True)
    def run_image(image, y0, d, s, e, wx, wy, out):
        for i in range(s, e):
            ui = _u(i)
            acc = 0.0
            for q in range(ntaps):
                yq = _u(y0 + q)
                row = 0.0
                for p in range(ntaps):
                    row += wx[_u(p), ui] * image[yq, _u(d + i + p)]
                acc += wy[_u(q), ui] * row
            out[ui] = acc

    @njit_vec(fma=True)
    def run_variance(variance, y0, d, s, e, wx, wy, out):
        for i in range(s, e):
            ui = _u(i)
            acc = 0.0
            for q in range(ntaps):
                yq = _u(y0 + q)
                row = 0.0
                for p in range(ntaps):
                    wp = wx[_u(p), ui]
                    row += wp * wp * variance[yq, _u(d + i + p)]
                wq = wy[_u(q), ui]
                acc += wq * wq * row
            out[ui] = acc

    @njit_vec
    def run_mask(mask, y0, d, s, e, out):
        for i in range(s, e):
            m = np.int32(0)
            for q in range(ntaps):
                yq = _u(y0 + q)
                for p in range(ntaps):
                    m |= mask[yq, _u(d + i + p)]
            out[_u(i)] = m

    @njit_vec
    def classify(xrow, yrow, bx, fx, by, fy, tnx, tny, ys, ds, full):
        """Per pixel: whether its footprint is whole (2a x 2a, inside the template), its
        first template row ``ys`` and column minus pixel index ``ds``.  No branches."""
        for i in range(xrow.size):
            x = xrow[i]
            y = yrow[i]
            f = fx[i]
            g = fy[i]
            # False for NaN; also keeps the int conversions in range.
            near = (x > -order) & (x < tnx + order) & (y > -order) & (y < tny + order)
            x0 = np.int64(bx[i] if near else 0.0) - (order - 1)
            y0 = np.int64(by[i] if near else 0.0) - (order - 1)
            ok = near & (f >= SNAP) & (f <= 1.0 - SNAP) & (g >= SNAP) & (g <= 1.0 - SNAP)
            ok = ok & (x0 >= 0) & (x0 + ntaps <= tnx) & (y0 >= 0) & (y0 + ntaps <= tny)
            ys[i] = y0
            ds[i] = x0 - i
            full[i] = ok

    @njit_vec
    def finish_runs(full, sx, sy, acc, vacc, macc, no_data, bad, out_img, out_var, out_mask):
        """_finish for every pixel of the row's runs, with selects so that it vectorises."""
        nan = np.float32(np.nan)
        for i in range(full.size):
            norm = sx[i] * sy[i]
            value = acc[i] / norm
            var = vacc[i] / (norm * norm)
            m = macc[i]
            ok = ((m & bad) == 0) & math.isfinite(value) & math.isfinite(var)
            f = full[i]
            out_img[i] = (value if ok else nan) if f else out_img[i]
            out_var[i] = (var if ok else nan) if f else out_var[i]
            out_mask[i] = (m if ok else m | no_data) if f else out_mask[i]

    @njit_vec
    def pixel(image, variance, mask, i, x0, nwx, y0, nwy, wx, wy, sx, sy, no_data, edge, bad,
              out_img, out_var, out_mask):  # fmt: skip
        """One output pixel whose footprint is snapped on an axis or leaves the template."""
        tny, tnx = image.shape
        m = np.int32(0)
        if not (x0 >= 0 and x0 + nwx <= tnx and y0 >= 0 and y0 + nwy <= tny):
            # The footprint leaves the template: no data; EDGE where it is only partly out.
            for q in range(nwy):
                ty = y0 + q
                if ty < 0 or ty >= tny:
                    continue
                for p in range(nwx):
                    tx = x0 + p
                    if tx >= 0 and tx < tnx:
                        m |= mask[ty, tx]
            nan = np.float32(np.nan)
            out_img[i] = nan
            out_var[i] = nan
            # The row's guard only catches positions a full kernel radius off; nearer
            # ones can still have every tap outside (no EDGE then), hence this test.
            inside = (x0 + nwx > 0 and x0 < tnx) and (y0 + nwy > 0 and y0 < tny)
            out_mask[i] = (m | no_data | edge) if inside else (m | no_data)
            return
        # A snapped axis has the single weight 1 (the 2a weights otherwise), in the same
        # order of operations as the run sums.
        acc = 0.0
        vacc = 0.0
        for q in range(nwy):
            row = 0.0
            vrow = 0.0
            for p in range(nwx):
                wp = wx[p, i] if nwx == ntaps else 1.0
                row += wp * image[y0 + q, x0 + p]
                vrow += wp * wp * variance[y0 + q, x0 + p]
                m |= mask[y0 + q, x0 + p]
            wq = wy[q, i] if nwy == ntaps else 1.0
            acc += wq * row
            vacc += wq * wq * vrow
        norm = (sx[i] if nwx == ntaps else 1.0) * (sy[i] if nwy == ntaps else 1.0)
        _finish(acc, vacc, norm, m, no_data, bad, out_img, out_var, out_mask, i)

    @njit_vec
    def other(image, variance, mask, i, xrow, yrow, bx, fx, by, fy, wx, wy, sx, sy, no_data,
              edge, bad, out_img, out_var, out_mask):  # fmt: skip
        """Pixel i outside every run: no map, off the template, or snapped."""
        tny, tnx = image.shape
        x = xrow[i]
        y = yrow[i]
        if not (x > -order and x < tnx + order and y > -order and y < tny + order):
            nan = np.float32(np.nan)
            out_img[i] = nan
            out_var[i] = nan
            out_mask[i] = no_data
            return
        # Within SNAP of an integer n the footprint is column (row) n alone.
        f = fx[i]
        x0 = int(bx[i])
        nwx = ntaps
        if f < SNAP:
            nwx = 1
        elif f > 1.0 - SNAP:
            x0 += 1
            nwx = 1
        else:
            x0 -= order - 1
        f = fy[i]
        y0 = int(by[i])
        nwy = ntaps
        if f < SNAP:
            nwy = 1
        elif f > 1.0 - SNAP:
            y0 += 1
            nwy = 1
        else:
            y0 -= order - 1
        pixel(image, variance, mask, i, x0, nwx, y0, nwy, wx, wy, sx, sy, no_data, edge, bad,
              out_img, out_var, out_mask)  # fmt: skip

    @njit_vec
    def warp_row(image, variance, mask, blocks, xrow, yrow, no_data, edge, bad, buf, ibuf, wx,
                 wy, macc, full, out_img, out_var, out_mask):  # fmt: skip
        """Resample one output row at template positions (xrow, yrow) into the out rows.

        ``buf`` is (8, n + PAD) float64 scratch, ``ibuf`` (2, n) int64, ``wx``/``wy``
        (2a, n + PAD), ``macc`` n + PAD int32, ``full`` n bool; ``blocks`` is
        :func:`mask_blocks` of ``mask``.
        """
        tny, tnx = image.shape
        n = xrow.size
        bx, fx, by, fy = buf[0], buf[1], buf[2], buf[3]
        sx, sy, acc, vacc = buf[4], buf[5], buf[6], buf[7]
        ys, ds = ibuf[0], ibuf[1]
        taps_row(xrow, bx, fx, wx, sx)
        taps_row(yrow, by, fy, wy, sy)
        classify(xrow, yrow, bx, fx, by, fy, tnx, tny, ys, ds, full)
        last = (tny - 1) * tnx + tnx  # one past the template's last element
        i = 0
        while i < n:
            if not full[i]:
                other(image, variance, mask, i, xrow, yrow, bx, fx, by, fy, wx, wy, sx, sy,
                      no_data, edge, bad, out_img, out_var, out_mask)  # fmt: skip
                i += 1
                continue
            s = i
            y0 = ys[i]
            d = ds[i]
            i += 1
            while i < n and full[i] and ys[i] == y0 and ds[i] == d:
                i += 1
            # Padded to a whole number of vectors, so the loops never run their scalar
            # remainder; the extra lanes read valid template memory and are discarded.
            e = s + ((i - s + PAD - 1) // PAD) * PAD
            if (y0 + ntaps - 1) * tnx + d + e - 1 + ntaps > last:
                e = i
            run_image(image, y0, d, s, e, wx, wy, acc)
            run_variance(variance, y0, d, s, e, wx, wy, vacc)
            # The footprints' OR is zero where the template's mask blocks are: a few
            # look-ups instead of 4a^2 loads per pixel.
            m = np.uint8(0)
            for r in range(y0 >> BLOCK_SHIFT, ((y0 + ntaps - 1) >> BLOCK_SHIFT) + 1):
                for c in range((d + s) >> BLOCK_SHIFT, ((d + i + ntaps - 2) >> BLOCK_SHIFT) + 1):
                    m |= blocks[r, c]
            if m:
                run_mask(mask, y0, d, s, e, macc)
            else:
                for k in range(s, e):
                    macc[k] = 0
        finish_runs(full[:n], sx, sy, acc, vacc, macc, no_data, bad, out_img, out_var, out_mask)

    return warp_row


@njit(inline="always")
def _finish(acc, vacc, norm, m, no_data, bad, out_img, out_var, out_mask, i):
    """Normalise pixel i's sums and write it, or NO_DATA where it touched a bad pixel."""
    value = acc / norm
    var = vacc / (norm * norm)
    # A NaN/inf pixel anywhere in the footprint (weights are all non-zero) makes the sums
    # non-finite, so one test here replaces a test per tap.
    if (m & bad) != 0 or not (math.isfinite(value) and math.isfinite(var)):
        nan = np.float32(np.nan)
        out_img[i] = nan
        out_var[i] = nan
        out_mask[i] = m | no_data
    else:
        out_img[i] = value
        out_var[i] = var
        out_mask[i] = m


_row2 = _make_row(2)
_row3 = _make_row(3)
_row4 = _make_row(4)
_row5 = _make_row(5)
ORDERS = (2, 3, 4, 5)


def _make_entries(order):
    """The two kernels for Lanczos-``order``: (map from xt/yt, map from the spline).

    One pair per order, each compiled on its first call, so a run compiles only the order it
    uses: dispatching all four orders inside two eagerly typed kernels cost a cold Numba
    cache ~30 s of CPU at import.  ``order`` is a closure constant, so Numba drops the other
    orders' branches before typing them; a plain int closure variable also keeps the on-disk
    cache key stable across processes (tests/unit/test_jit_cache.py), which a closure over
    the row dispatchers would not.  ``numba.literally`` was tried and rejected: every call
    from Python retried the failed non-literal compile first (0.5 s and 1.8 GB more RSS per
    4k exposure).
    """

    @njit
    def warp(image, variance, mask, blocks, xt, yt, no_data, edge, bad, out_img, out_var,
             out_mask):  # fmt: skip
        nx = xt.shape[1]
        buf = np.zeros((8, nx + PAD), dtype=np.float64)
        ibuf = np.zeros((2, nx), dtype=np.int64)
        wx = np.zeros((2 * order, nx + PAD), dtype=np.float64)
        wy = np.zeros((2 * order, nx + PAD), dtype=np.float64)
        macc = np.zeros(nx + PAD, dtype=np.int32)
        full = np.zeros(nx, dtype=np.bool_)
        for j in range(xt.shape[0]):
            args = (image, variance, mask, blocks, xt[j], yt[j], no_data, edge, bad, buf, ibuf, wx,
                    wy, macc, full, out_img[j], out_var[j], out_mask[j])  # fmt: skip
            if order == 2:
                _row2(*args)
            elif order == 3:
                _row3(*args)
            elif order == 4:
                _row4(*args)
            else:
                _row5(*args)

    @njit
    def warp_spline(
        image, variance, mask, blocks, coef_x, coef_y, row_start, row_w, col_start, col_w,
        cell_row, cell_col, cell_bad, no_data, edge, bad, out_img, out_var, out_mask,
    ):  # fmt: skip
        # The map is evaluated one row at a time into two small buffers (the very numbers
        # diffstream.jitcore._kernels.bspline.spline_grid writes out) instead of being read from
        # full-frame xt/yt arrays: at 4k x 4k those are 256 MB written and read back, and
        # evaluating them with dense BLAS products took ~0.2 s, more than this.
        ny, nx = out_img.shape
        rx = np.empty((2, coef_x.shape[1]), dtype=np.float64)
        xrow = np.empty(nx, dtype=np.float64)
        yrow = np.empty(nx, dtype=np.float64)
        buf = np.zeros((8, nx + PAD), dtype=np.float64)
        ibuf = np.zeros((2, nx), dtype=np.int64)
        wx = np.zeros((2 * order, nx + PAD), dtype=np.float64)
        wy = np.zeros((2 * order, nx + PAD), dtype=np.float64)
        macc = np.zeros(nx + PAD, dtype=np.int32)
        full = np.zeros(nx, dtype=np.bool_)
        for j in range(ny):
            spline_fill_rows(coef_x, coef_y, row_start, row_w, col_start, col_w, j, cell_bad,
                             cell_row[j], cell_col, rx, xrow, yrow)  # fmt: skip
            args = (image, variance, mask, blocks, xrow, yrow, no_data, edge, bad, buf, ibuf, wx,
                    wy, macc, full, out_img[j], out_var[j], out_mask[j])  # fmt: skip
            if order == 2:
                _row2(*args)
            elif order == 3:
                _row3(*args)
            elif order == 4:
                _row4(*args)
            else:
                _row5(*args)

    return warp, warp_spline


# Making the dispatchers compiles nothing; each compiles on its first call.
KERNELS = {order: _make_entries(order) for order in ORDERS}


@njit
def mask_blocks(mask, row, out):
    """out[by, bx] = 1 where the mask has a bit set in its block (by, bx) of 2**BLOCK_SHIFT
    rows by 2**BLOCK_SHIFT columns; ``row`` is nx int32 scratch.

    ``out`` is (ceil(ny / B), ceil(nx / B)) uint8, B = 2**BLOCK_SHIFT.  The warp then skips
    the 4a^2-load OR of every run whose footprint lies in zero blocks (a simulated 4k
    template: all but ~0.1% of them).  The B rows are OR-ed first (a loop along the row
    that vectorises), so a reduction of B columns runs once per B x B pixels: ~4 ms at 4k,
    about the time to read the mask once.
    """
    ny, nx = mask.shape
    width = 1 << BLOCK_SHIFT
    for by in range(out.shape[0]):
        y0 = by * width
        first = mask[y0]
        for x in range(nx):
            row[x] = first[x]
        for y in range(y0 + 1, min(y0 + width, ny)):
            other = mask[y]
            for x in range(nx):
                row[x] |= other[x]
        for bx in range(out.shape[1]):
            m = np.int32(0)
            for x in range(bx * width, min(bx * width + width, nx)):
                m |= row[x]
            out[by, bx] = m != 0


def lanczos_warp(
    image, variance, mask, blocks, xt, yt, order, no_data, edge, bad, out_img, out_var,
    out_mask,
):  # fmt: skip
    """Resample through full-frame template positions (xt, yt) into the out arrays."""
    KERNELS[order][0](image, variance, mask, blocks, xt, yt, no_data, edge, bad, out_img,
                      out_var, out_mask)  # fmt: skip


def lanczos_warp_spline(
    image, variance, mask, blocks, coef_x, coef_y, row_start, row_w, col_start, col_w,
    cell_row, cell_col, cell_bad, order, no_data, edge, bad, out_img, out_var, out_mask,
):  # fmt: skip
    """Resample through the coarse-grid spline map (jitcore._kernels.bspline) row by row."""
    KERNELS[order][1](image, variance, mask, blocks, coef_x, coef_y, row_start, row_w,
                      col_start, col_w, cell_row, cell_col, cell_bad, no_data, edge, bad,
                      out_img, out_var, out_mask)  # fmt: skip
