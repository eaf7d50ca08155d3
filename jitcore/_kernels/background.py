"""SExtractor's mesh background (as sep computes it), as allocation-free Numba loops.

No checks here (diffstream.jitcore.background checks and allocates).  Stages, each its own kernel:

1. :func:`mesh_stats` - per ``bw x bh`` box (the last column/row of boxes is whatever is left
   of the image): a box with fewer than half its pixels good (unmasked, finite) is NaN.
   Otherwise sep's estimator: mean and sigma, again within mean +- 2 sigma, then a
   histogram of ``min(0.997 n + 1, 4096)`` bins over mean +- 5 sigma, clipped at median +-
   3 sigma until its sigma settles (100 passes at most); the mode is ``2.5 median - 1.5
   mean`` where ``|mean - median| < 0.3 sigma``, else the median.  The clipping runs on the
   histogram, so the pixels are read a fixed number of times (copy, two sums, binning)
   whatever the number of clipping passes; no sort or quickselect.
2. :func:`fill_mesh` - a NaN box takes the mean of the nearest good boxes (all those at the
   smallest distance); no good box at all gives 0 and RMS 1, as sep.
3. :func:`median_filter_mesh` - ``fw x fh`` median over the mesh; at the edges the window
   shrinks symmetrically (a corner box is left as it is, an edge box is filtered along the
   edge only), as sep.
4. :func:`spline_y_derivs`, then per image row :func:`background_map` or the fused
   :func:`subtract_rows` - cubic interpolation in y down each mesh column to the row, then in
   x along it.  Nodes sit at box centres: ``x = (k + 0.5) bw - 0.5`` and
   ``y = (k + 0.5) bh`` (sep's y formula has no half-pixel term; kept so that the maps are
   sep's to float rounding).  Outside the outer nodes the end cubics extrapolate.

The "second derivatives" are sep's recurrence, not a natural cubic spline: sep's back
substitution divides the whole ``c_k d_{k+1} + u_k`` by 6 where only ``u_k`` should be.
The curve still goes through every node, is exact for linear backgrounds and equals the
natural spline when there are at most three nodes, but with more nodes the second
derivatives are damped.  Kept on purpose (the replacement of sep had to leave every
background the pipeline computes where it was; on a 6 x 5 mesh of unit-variance noise a
true natural spline moved sep's map by up to 0.18): tests/unit/test_background.py::
test_spline_is_seps_recurrence pins both facts.  With a single mesh row sep does not
interpolate in x with a spline either, only linearly; kept too.

Where sep is not followed: bins are computed in float64 as ``(v - qzero) / qscale`` (sep:
float32 ``v / qscale - qzero / qscale``, rounded to half a bin once sky / sigma ~ 2e4);
the mesh is float64 (sep: float32); a histogram median between two empty bins takes the
bin edge (sep divides by zero); a box with a single good pixel gets that pixel (sep: twice
it).  On star fields the maps agree with sep's to ~3e-6 of the noise (median), 1e-4 (max).
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit, njit_sums

__all__ = [
    "NMAXLEVELS",
    "mesh_stats",
    "fill_mesh",
    "median_filter_mesh",
    "spline_y_derivs",
    "background_map",
    "subtract_rows",
]

MINGOODFRAC = 0.5  # a box needs at least this fraction of good pixels
NSIGMA = 5.0  # the histogram spans mean +- NSIGMA sigma
NMAXLEVELS = 4096  # at most this many histogram bins
# Bins per good pixel: sqrt(2 / pi) * NSIGMA / 4 (SExtractor: >= 4 "mode pixels" per bin).
STEP = math.sqrt(2.0 / math.pi) * NSIGMA / 4.0
EPS = 1e-4  # clipping stops when sigma changes by less than this fraction


@njit(inline="always")
def _copy_band(image, bad, y0, y1, bw, buf):
    """Rows y0:y1 into buf box after box (each box row after row), NaN where bad or not finite.

    Box bx starts at buf[bx * bw * (y1 - y0)]; the image is read row after row, in order.
    """
    nx = image.shape[1]
    h = y1 - y0
    nan = np.nan
    inf = np.inf
    for y in range(y0, y1):
        for x0 in range(0, nx, bw):
            w = min(bw, nx - x0)
            o = x0 * h + (y - y0) * w
            # Slices, so that LLVM sees three unit-stride arrays and vectorises, and ``&`` /
            # ``abs < inf`` rather than ``or`` / isfinite, which branch: 30 -> 8 ms at 4k^2.
            src = image[y, x0 : x0 + w]
            msk = bad[y, x0 : x0 + w]
            dst = buf[o : o + w]
            for x in range(w):
                v = src[x]
                dst[x] = v if (not msk[x]) & (abs(v) < inf) else nan


def _sums(buf, n, lcut, hcut):
    """(count, sum, sum of squares) of the values in buf[:n] within [lcut, hcut].

    NaN is never within, so with infinite cuts this counts the good pixels of a box.
    """
    c = 0
    s = 0.0
    ss = 0.0
    for k in range(n):
        f = np.float64(buf[k])
        g = f >= lcut and f <= hcut
        f = f if g else 0.0
        c += g
        s += f
        ss += f * f
    return c, s, ss


# Compiled with reassociation (diffstream.jitcore._jit.njit_sums): LLVM splits the two float64 sums
# into SIMD lanes (5x faster here: 2 x 19 -> 2 x 4 ms at 4k x 4k).  NaN is excluded by the
# compare before it reaches a sum (tests/unit/test_background.py::
# test_mesh_stats_matches_reference runs boxes full of NaN holes).
box_sums = njit_sums(
    [f"Tuple((int64, float64, float64))({t}[::1], int64, float64, float64)"
     for t in ("float32", "float64")],
)(_sums)  # fmt: skip


@njit(inline="always")
def _count(hist, i, top):
    """hist[i], 0 outside [0, top] (sep reads whatever is there; never reached in practice)."""
    if i < 0 or i > top:
        return 0
    return hist[i]


@njit(inline="always")
def _histogram_mode(hist, nlevels, qzero, qscale):
    """(mode, sigma) in pixel units from the histogram (SExtractor's backguess).

    sep finds each pass's median by walking in from both ends of the window, adding a bin
    to the lighter side (ties to the upper side).  That walk is a merge of the two sides'
    running sums, and its end point has a closed form: with P[a] the sum of the lowest
    ``a`` bins of the window and S the window's total, the walk ends with ``a`` low bins,
    ``a`` the first index where P[a] + P[a + 1] >= S.  One forward scan that stops at the
    middle instead of a loop whose every step branches on the one before (tests/unit/
    test_background.py::test_histogram_mode_matches_the_walk checks it against the walk).
    """
    top = nlevels - 1
    # Prefix sums of the counts and their first two moments (integers: exact), so that each
    # clipping pass reads its window's sums in O(1) and finds the median split by bisection
    # instead of scanning the window: the passes were ~40% of the mesh (issue 17).  The
    # same integers as the scans, so the same result bit for bit.
    cum = np.empty(nlevels + 1, np.int64)
    cum1 = np.empty(nlevels + 1, np.int64)
    cum2 = np.empty(nlevels + 1, np.int64)
    cum[0] = 0
    cum1[0] = 0
    cum2[0] = 0
    for i in range(nlevels):
        h = hist[i]
        cum[i + 1] = cum[i] + h
        cum1[i + 1] = cum1[i] + h * i
        cum2[i + 1] = cum2[i] + h * i * i
    lcut = 0
    hcut = top
    sig = 10.0 * top
    sig1 = 1.0
    mea = 0.0  # sep starts from the box mean, which doubles a one-pixel box's level
    med = 0.0
    left = 100
    while left > 0 and sig >= 0.1 and abs(sig / sig1 - 1.0) > EPS:
        left -= 1
        sig1 = sig
        nwin = max(hcut - lcut + 1, 0)
        total = 0
        m1 = 0
        m2 = 0
        a = 0
        low = 0
        if nwin > 0:
            base = cum[lcut]
            total = cum[hcut + 1] - base
            m1 = cum1[hcut + 1] - cum1[lcut]
            m2 = cum2[hcut + 1] - cum2[lcut]
            # The first a in [0, nwin) with P[a] + P[a + 1] >= total, P[a] the sum of the
            # window's lowest a bins (nondecreasing in a), else nwin.
            lo_a = 0
            hi_a = nwin
            while lo_a < hi_a:
                mid = (lo_a + hi_a) >> 1
                if (cum[lcut + mid] - base) + (cum[lcut + mid + 1] - base) >= total:
                    hi_a = mid
                else:
                    lo_a = mid + 1
            a = lo_a
            low = cum[lcut + a] - base
        lo = lcut + a
        hi = hcut - (nwin - a)
        if hi >= 0:
            den = 2.0 * max(_count(hist, lo, top), _count(hist, hi, top))
            # sep divides by zero here when both bins are empty (NaN or inf); take the
            # bin edge instead.
            frac = (np.float64(total - low) - np.float64(low)) / den if den > 0.0 else 0.0
            med = hi + 0.5 + frac
        else:
            med = 0.0
        mea = 0.0
        var = 0.0
        if total > 0:
            mea = m1 / total
            var = m2 / total - mea * mea
        sig = math.sqrt(var) if var > 0.0 else 0.0
        f = med - 3.0 * sig
        lcut = int(f + 0.5) if f > 0.0 else 0
        f = med + 3.0 * sig
        if f < top:
            hcut = int(f + 0.5) if f > 0.0 else int(f - 0.5)
        else:
            hcut = top
    if sig > 0.0:
        if abs((mea - med) / sig) < 0.3:
            mode = qzero + (2.5 * med - 1.5 * mea) * qscale
        else:
            mode = qzero + med * qscale
    else:
        mode = qzero + mea * qscale
    return mode, sig * qscale


@njit(inline="always")
def _box_mode(box, idx, hist):
    """(mode, sigma) of the non-NaN values of box; NaNs when fewer than half are."""
    size = box.size
    inf = np.inf
    n, s, ss = box_sums(box, size, -inf, inf)
    if n == 0 or n < MINGOODFRAC * size:
        return np.nan, np.nan
    mean = s / n
    var = ss / n - mean * mean
    sigma = math.sqrt(var) if var > 0.0 else 0.0
    m, s, ss = box_sums(box, size, mean - 2.0 * sigma, mean + 2.0 * sigma)
    if m == 0:  # only from rounding at sigma ~ 1e-16 of the mean; sep gives NaN
        return mean, 0.0
    mean = s / m
    var = ss / m - mean * mean
    sigma = math.sqrt(var) if var > 0.0 else 0.0
    nlevels = min(int(STEP * m + 1.0), NMAXLEVELS)
    qscale = 2.0 * NSIGMA * sigma / nlevels if sigma > 0.0 else 1.0
    qzero = mean - NSIGMA * sigma
    # Bin k holds the values within half a bin of qzero + k qscale (sep's 0.499999 and its
    # truncation toward zero, which also puts (-1.5, -0.5) bins into bin 0); out of range
    # or NaN goes to the spare bin ``nlevels``.  Bin numbers first (a loop LLVM
    # vectorises), then the scatter: 2x faster than one loop.
    inv = 1.0 / qscale
    top = np.float64(nlevels)
    for k in range(size):
        t = (box[k] - qzero) * inv + 0.499999
        t = t if t > -1.0 else -1.0
        t = t if t < top else top
        idx[k] = np.int32(t)
    for i in range(nlevels + 1):
        hist[i] = 0
    for k in range(size):
        b = idx[k]
        hist[b if b >= 0 else nlevels] += 1
    return _histogram_mode(hist, nlevels, qzero, qscale)


def _mesh_stats(image, bad, bw, bh, buf, idx, hist, out_back, out_sigma):
    """out_back/out_sigma[by, bx] = the box's mode and sigma, NaN for a box with too few.

    ``buf`` holds bh * (image width rounded up to bw) values, ``idx`` bw * bh and ``hist``
    NMAXLEVELS + 1.
    """
    ny, nx = image.shape
    nby, nbx = out_back.shape
    for by in range(nby):
        y0 = by * bh
        y1 = min(y0 + bh, ny)
        _copy_band(image, bad, y0, y1, bw, buf)
        for bx in range(nbx):
            x0 = bx * bw
            size = (y1 - y0) * (min(x0 + bw, nx) - x0)
            box = buf[x0 * (y1 - y0) : x0 * (y1 - y0) + size]
            mode, sig = _box_mode(box, idx, hist)
            out_back[by, bx] = mode
            out_sigma[by, bx] = sig


_SIG_STATS = (
    "void({t}[:, ::1], boolean[:, ::1], int64, int64, {t}[::1], int32[::1], int64[::1], "
    "float64[:, ::1], float64[:, ::1])"
)
mesh_stats = njit([_SIG_STATS.format(t=t) for t in ("float32", "float64")])(_mesh_stats)


@njit("void(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[:, ::1])")
def fill_mesh(back, sigma, out_back, out_sigma):
    """out = back/sigma with every NaN box replaced by the mean of its nearest good boxes.

    Only the boxes good in the input are sources (a filled box never feeds another).
    """
    nby, nbx = back.shape
    for py in range(nby):
        for px in range(nbx):
            if not math.isnan(back[py, px]):
                out_back[py, px] = back[py, px]
                out_sigma[py, px] = sigma[py, px]
                continue
            d2min = -1
            nmin = 0
            val = 0.0
            sval = 0.0
            for y in range(nby):
                for x in range(nbx):
                    if math.isnan(back[y, x]):
                        continue
                    d2 = (x - px) * (x - px) + (y - py) * (y - py)
                    if d2min < 0 or d2 < d2min:
                        d2min = d2
                        val = back[y, x]
                        sval = sigma[y, x]
                        nmin = 1
                    elif d2 == d2min:
                        val += back[y, x]
                        sval += sigma[y, x]
                        nmin += 1
            out_back[py, px] = val / nmin if nmin else 0.0
            out_sigma[py, px] = sval / nmin if nmin else 1.0


@njit(inline="always")
def _median_odd(w, n):
    """Median of w[:n], n odd (insertion sort in place: n is a filter window, ~9)."""
    for i in range(1, n):
        v = w[i]
        k = i - 1
        while k >= 0 and w[k] > v:
            w[k + 1] = w[k]
            k -= 1
        w[k + 1] = v
    return w[n // 2]


@njit(
    "void(float64[:, ::1], float64[:, ::1], int64, int64, float64[::1], "
    "float64[:, ::1], float64[:, ::1])"
)
def median_filter_mesh(back, sigma, fw, fh, window, out_back, out_sigma):
    """out = the fw x fh median of back and of sigma; windows shrink symmetrically at edges."""
    nby, nbx = back.shape
    hx = fw // 2
    hy = fh // 2
    for py in range(nby):
        ry = min(hy, nby - 1 - py, py)
        for px in range(nbx):
            rx = min(hx, nbx - 1 - px, px)
            for which in range(2):
                src = back if which == 0 else sigma
                n = 0
                for y in range(py - ry, py + ry + 1):
                    for x in range(px - rx, px + rx + 1):
                        window[n] = src[y, x]
                        n += 1
                med = _median_odd(window, n)
                if which == 0:
                    out_back[py, px] = med
                else:
                    out_sigma[py, px] = med


@njit(inline="always")
def _derivs(v, d, u):
    """d = sep's "second derivatives / 6" of the values v at unit spacing (module doc)."""
    n = v.size
    d[0] = 0.0
    if n < 3:
        for i in range(n):
            d[i] = 0.0
        return
    u[0] = 0.0
    for i in range(1, n - 1):
        c = -1.0 / (d[i - 1] + 4.0)
        d[i] = c
        u[i] = c * (u[i - 1] - 6.0 * (v[i + 1] + v[i - 1] - 2.0 * v[i]))
    d[n - 1] = 0.0
    for i in range(n - 2, 0, -1):
        d[i] = (d[i] * d[i + 1] + u[i]) / 6.0


@njit("void(float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[:, ::1])")
def spline_y_derivs(mesh, col, dcol, u, out):
    """out[:, x] = _derivs(mesh[:, x]) for every mesh column; col/dcol/u hold nby floats."""
    nby, nbx = mesh.shape
    for x in range(nbx):
        for y in range(nby):
            col[y] = mesh[y, x]
        _derivs(col, dcol, u)
        for y in range(nby):
            out[y, x] = dcol[y]


@njit(inline="always")
def _row_nodes(mesh, dmesh, y, bh, u, node, dnode):
    """node/dnode = the mesh interpolated down to pixel row y, and their x derivatives."""
    nby, nbx = mesh.shape
    if nby == 1:
        for x in range(nbx):
            node[x] = mesh[0, x]
            dnode[x] = 0.0  # sep: one mesh row -> linear in x
        return
    t = y / bh - 0.5
    yl = int(t)  # truncates toward zero: rows above the first node stay in interval 0
    dy = t - yl
    if yl >= nby - 1:
        yl = nby - 2
        dy += 1.0
    cdy = 1.0 - dy
    dy3 = dy * dy * dy - dy
    cdy3 = cdy * cdy * cdy - cdy
    for x in range(nbx):
        node[x] = cdy * mesh[yl, x] + dy * mesh[yl + 1, x] + cdy3 * dmesh[yl, x]
        node[x] += dy3 * dmesh[yl + 1, x]
    _derivs(node, dnode, u)


@njit(inline="always")
def _fill_row(node, dnode, bw, out):
    """out[i] = the cubic in x through node/dnode at pixel column i (node k at (k+.5)bw-.5)."""
    nx = out.size
    nbx = node.size
    if nbx == 1:
        for i in range(nx):
            out[i] = node[0]
        return
    inv = 1.0 / bw
    for k in range(nbx - 1):
        # Interval k serves the pixels between the centres of boxes k and k + 1; the first
        # and last intervals also extrapolate to the image edges.
        i0 = 0 if k == 0 else k * bw + bw // 2
        i1 = nx if k == nbx - 2 else (k + 1) * bw + bw // 2
        i1 = min(i1, nx)
        a = node[k]
        b = dnode[k]
        c = node[k + 1]
        e = dnode[k + 1]
        for i in range(i0, i1):
            dx = (i + 0.5) * inv - 0.5 - k
            cdx = 1.0 - dx
            out[i] = cdx * (a + (cdx * cdx - 1.0) * b) + dx * (c + (dx * dx - 1.0) * e)


@njit(
    "void(float64[:, ::1], float64[:, ::1], int64, int64, float64[::1], float64[::1], "
    "float64[::1], float64[:, ::1])"
)
def background_map(mesh, dmesh, bw, bh, u, node, dnode, out):
    """out = the interpolated mesh at every pixel; u/node/dnode hold nbx floats."""
    for j in range(out.shape[0]):
        _row_nodes(mesh, dmesh, j, bh, u, node, dnode)
        _fill_row(node, dnode, bw, out[j])


@njit(
    "void(float32[:, ::1], float32[:, ::1], boolean[:, ::1], float64[:, ::1], float64[:, ::1], "
    "int64, int64, float64[::1], float64[::1], float64[::1], float64[::1], "
    "float32[:, ::1], float32[:, ::1])"
)
def subtract_rows(
    image, variance, bad, mesh, dmesh, bw, bh, u, node, dnode, row, out_image, out_variance
):
    """out_image = image - background, out_variance = variance; 0 and NaN where bad.

    The background is evaluated one row at a time into ``row`` (nx floats), so no
    full-frame background array is ever written.
    """
    ny, nx = image.shape
    nan = np.float32(np.nan)
    zero = np.float32(0.0)
    for j in range(ny):
        _row_nodes(mesh, dmesh, j, bh, u, node, dnode)
        _fill_row(node, dnode, bw, row)
        for i in range(nx):
            if bad[j, i]:
                out_image[j, i] = zero
                out_variance[j, i] = nan
            else:
                out_image[j, i] = np.float32(image[j, i] - row[i])
                out_variance[j, i] = variance[j, i]
