"""Exact quartiles of large samples without sorting or partitioning the whole sample.

No checks here (diffstream.jitcore.robust checks and allocates).  The results are NumPy's
``np.percentile(values, [25, 75])`` (the default "linear" method, in float64) bit for bit:
the same two order statistics, combined by the same arithmetic as NumPy's ``_lerp``.

Why not np.percentile: it converts the sample to float64 (a copy) and partitions all of it
(introselect, ~15 ns a value), and the noise steps take ~260 of these per 4k exposure (the
empty-sky score factor per 256 px tile, the global factors).  Floyd and Rivest's idea does
the same selection in about one pass: the quartiles of a small regular subsample bound each
wanted order statistic (with a margin of several of the subsample's own standard errors), one
pass counts the values below each band and gathers those inside it, and only the band (a few
per cent of the values) is selected from.  When a band misses its order statistic (a
subsample very unlike the whole, many ties) the whole sample is selected from instead: the
result is exact either way; only the time differs.
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = ["finite_count", "masked_tile_quartiles", "quartiles"]

# Below this many values the band search is not worth its subsample: select from all.
_SMALL = 4096
# Size of the regular subsample the bands come from, and the band's half-width in units of
# the standard error of the subsample's rank (sqrt(m q (1 - q))), plus a few ranks.
_SUBSAMPLE = 1024
_MARGIN_SIGMAS = 4.0
_MARGIN_RANKS = 3


@njit
def _select(a, lo, hi, k):
    """Reorder a[lo:hi] so that a[k] is its (k - lo)-th smallest value, with nothing larger
    before it and nothing smaller after it (Hoare partitions, median-of-three pivots)."""
    hi -= 1
    while hi > lo:
        mid = (lo + hi) >> 1
        x, y, z = a[lo], a[mid], a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
        if x > y:
            y = x
        pivot = y
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@njit
def _lerp(a, b, t):
    # NumPy's _lerp, for one value: a + (b - a) t, or b - (b - a)(1 - t) from t = 0.5 on.
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


@njit
def _pair(a, lo, hi, k):
    """(k-th, (k + 1)-th) smallest of a[lo:hi] as float64 (k counted from lo; the second is
    the first when k is the last); reorders a[lo:hi]."""
    _select(a, lo, hi, k)
    x = np.float64(a[k])
    if k + 1 >= hi:
        return x, x
    y = a[k + 1]
    for i in range(k + 2, hi):
        if a[i] < y:
            y = a[i]
    return x, np.float64(y)


@njit
def _from_all(work, n, out):
    """Both quartiles by selecting from all of work[:n] (reordered)."""
    for m in range(2):
        q = 0.25 if m == 0 else 0.75
        v = (n - 1) * q
        k = int(math.floor(v))
        x, y = _pair(work, 0, n, k)
        out[m] = _lerp(x, y, v - k)


@njit
def _quartiles_of(src, size, n, work, band, out):
    """np.percentile of the ``n`` finite values of src[:size] at 25 and 75 into out[0],
    out[1].

    ``src`` (1-D) may hold non-finite values, which are skipped; it is not changed.
    ``work`` (src's dtype, length >= n) receives the finite values when the whole sample
    has to be selected from; ``band`` (src's dtype, length >= len(src) + 2) the values
    inside the two bands."""
    if n < _SMALL:
        _from_all(work, _gather_finite(src, size, work), out)
        return
    step = size // _SUBSAMPLE
    m = 0
    sample = np.empty(size // step + 1, src.dtype)
    for i in range(0, size, step):
        x = src[i]
        if math.isfinite(x):
            sample[m] = x
            m += 1
    if m < _SUBSAMPLE // 4:  # mostly non-finite at the sampled places
        _from_all(work, _gather_finite(src, size, work), out)
        return
    sample = np.sort(sample[:m])
    los = np.empty(2, src.dtype)
    his = np.empty(2, src.dtype)
    ks = np.empty(2, np.int64)
    vs = np.empty(2)
    for b in range(2):
        q = 0.25 if b == 0 else 0.75
        vs[b] = (n - 1) * q
        ks[b] = int(math.floor(vs[b]))
        r = ks[b] / (n - 1) * (m - 1)
        d = _MARGIN_SIGMAS * math.sqrt(m * q * (1.0 - q)) + _MARGIN_RANKS
        los[b] = sample[max(0, int(math.floor(r - d)))]
        his[b] = sample[min(m - 1, int(math.ceil(r + d)))]
    if not his[0] < los[1]:  # overlapping bands (a narrow or tied sample)
        _from_all(work, _gather_finite(src, size, work), out)
        return
    # One branch-free pass (the comparisons are coin flips the CPU would mispredict): the
    # lower quartile's band fills band[] upwards from 0, the upper's downwards from
    # size + 1, each value written at the next free place and the place kept only if the
    # value belongs there; the bands are disjoint, so the two never meet.  NaN fails every
    # comparison, and -inf is kept out of the counts below the bands.
    lo0, hi0, lo1, hi1 = los[0], his[0], los[1], his[1]
    neg = -np.inf
    below0 = 0
    below1 = 0
    n0 = 0
    n1 = 0
    top = size + 1
    for i in range(size):
        x = src[i]
        finite_low = x > neg
        below0 += (x < lo0) & finite_low
        below1 += (x < lo1) & finite_low
        band[n0] = x
        n0 += (x >= lo0) & (x <= hi0)
        band[top - n1] = x
        n1 += (x >= lo1) & (x <= hi1)
    k0, k1 = ks[0], ks[1]
    # Each band must hold its order statistic and the next one (or be the last values).
    ok0 = below0 <= k0 and (k0 + 1 < below0 + n0 or k0 + 1 >= n)
    ok1 = below1 <= k1 and (k1 + 1 < below1 + n1 or k1 + 1 >= n)
    if not (ok0 and ok1):
        _from_all(work, _gather_finite(src, size, work), out)
        return
    x, y = _pair(band, 0, n0, k0 - below0)
    out[0] = _lerp(x, y, vs[0] - k0)
    first = top - n1 + 1
    x, y = _pair(band, first, top + 1, first + k1 - below1)
    out[1] = _lerp(x, y, vs[1] - k1)


@njit
def _gather_finite(src, size, work):
    n = 0
    for i in range(size):
        x = src[i]
        if math.isfinite(x):
            work[n] = x
            n += 1
    return n


@njit
def quartiles(values, work, band, out):
    """np.percentile of the finite values of ``values`` (1-D) at 25 and 75 into out[0],
    out[1] (float64); returns how many values were finite (out untouched when none).
    Scratch of ``values``' dtype: ``work`` of its length, ``band`` of its length + 2."""
    n = finite_count(values)
    if n > 0:
        _quartiles_of(values, values.shape[0], n, work, band, out)
    return n


@njit
def finite_count(values):
    """How many of ``values`` (1-D) are finite."""
    n = 0
    for i in range(values.shape[0]):
        n += math.isfinite(values[i])
    return n


@njit
def masked_tile_quartiles(s, free, t, min_count, vals, work, band, q25, q75, counts):
    """Per t x t tile (i, j) of ``s`` (2-D, any strides; edge tiles smaller): the count of
    finite ``s`` where ``free``, into counts[i, j], and when that is >= min_count[i, j] the
    quartiles of those values into q25[i, j], q75[i, j] (np.percentile's, as
    :func:`quartiles`).  Scratch of ``s``' dtype: ``vals`` and ``work`` of t * t values,
    ``band`` of t * t + 2."""
    ny, nx = s.shape
    nty, ntx = counts.shape
    out = np.empty(2)
    for i in range(nty):
        for j in range(ntx):
            n = 0
            for y in range(i * t, min((i + 1) * t, ny)):
                for x in range(j * t, min((j + 1) * t, nx)):
                    v = s[y, x]
                    if free[y, x] and math.isfinite(v):
                        vals[n] = v
                        n += 1
            counts[i, j] = n
            if n > 0 and n >= min_count[i, j]:
                _quartiles_of(vals, n, n, work, band, out)
                q25[i, j] = out[0]
                q75[i, j] = out[1]
