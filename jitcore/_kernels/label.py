"""8-connected components of the thresholded score, both polarities, as runs of pixels.

No checks here (diffstream.jitcore.detect checks and allocates).  A pixel belongs to a positive
footprint where ``valid & isfinite(s) & (float32(s) > thr)`` and to a negative one where
``valid & isfinite(s) & (float32(s) < -thr)``; ``thr`` is float32.  The comparison is done in
float32 because that is what sep (SExtractor's PIXTYPE) does, so the footprints are the same
bit for bit as those of the sep path that ``deblend=True`` still takes; in native precision
they would differ only for pixels within float32 rounding of the threshold.

Why runs and not a label image: a label image is one int32 per pixel (64 MiB at 4096^2),
written and read in full, while the pixels above 5 sigma are ~0.3 % of a difference image.
:func:`find_runs` reads each score pixel once (``valid`` only where the score passes) and
writes one row per horizontal run; :func:`label_runs` joins runs with union-find, so its cost
is in the number of runs, not of pixels.  Connectivity is 8-neighbour, as in SExtractor's
Lutz algorithm: two runs on consecutive rows touch when their x ranges overlap after widening
one of them by a pixel on each side (tests/unit/test_label.py checks diagonal contacts
against scipy.ndimage.label and against sep).  :func:`star_moments` then measures the
positive components (sep.extract's isophotal fields) in one more pass over the runs, for
diffstream.jitcore.sources.find_stars.
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = [
    "COMP_COLUMNS", "RUN_COLUMNS", "STAR_COLUMNS", "STAR_WORK", "find_runs", "label_runs",
    "star_moments",
]  # fmt: skip

# Columns of the run table written by find_runs (int64).
RUN_COLUMNS = ("y", "x0", "x1", "sign", "peak_x")
# Columns of the component table written by label_runs (int64).
COMP_COLUMNS = ("peak_x", "peak_y", "sign", "npix", "x0", "x1", "y0", "y1")
# Columns of the positive-component table written by star_moments (float64); the names are
# sep.extract's, and so are the formulas (x2, y2, xy about the barycentre, a, b, theta).
STAR_COLUMNS = (
    "x", "y", "x2", "y2", "xy", "a", "b", "theta", "flux", "peak", "xpeak", "ypeak", "npix",
    "xmin", "xmax", "ymin", "ymax", "flag",
)  # fmt: skip
# Columns star_moments needs per run as workspace (its table has max(this, STAR_COLUMNS)).
STAR_WORK = 19
# sep's flag for a footprint cut by the image edge or by unusable pixels.
_TRUNCATED = 2
# Pixels tested at once by find_runs before it looks at any of them one by one.
# 64: 32 left the per-block loop overhead at ~40% of the scan (4k score and S/N planes:
# 25 ms with 32, 15-16 with 64, 128 or 256; issue 17).
_BLOCK = 64


def _find_runs(score, valid, thr, runs, peak):
    """Runs of consecutive same-polarity footprint pixels, in raster order.

    runs[n] <- (y, x0, x1, sign, peak_x) with x0..x1 inclusive, and peak[n] <- the largest
    ``sign * score`` in the run (native precision), peak_x its first pixel.  Returns the
    number of runs in the image; only the first ``runs.shape[0]`` are written, so a caller
    whose buffer was too small learns the size it needs (the count is exact either way).
    """
    ny, nx = score.shape
    cap = runs.shape[0]
    n = 0
    for j in range(ny):
        cur = 0  # polarity of the run being extended, 0 when none is open
        for b0 in range(0, nx, _BLOCK):
            b1 = min(b0 + _BLOCK, nx)
            # Branch-free test of a whole block first, which LLVM vectorises: nearly every
            # block of a difference image is empty sky, and this halves the scan time of a
            # pixel-by-pixel loop (~34 -> ~17 ms at 4096^2).  NaN fails the test.
            hit = False
            for i in range(b0, b1):
                hit |= abs(np.float32(score[j, i])) > thr
            if not hit:
                if cur != 0 and n <= cap:
                    runs[n - 1, 2] = b0 - 1
                cur = 0
                continue
            for i in range(b0, b1):
                v = score[j, i]
                f = np.float32(v)
                sgn = 0
                if abs(f) > thr and valid[j, i] and math.isfinite(v):
                    sgn = 1 if f > 0 else -1
                if sgn != cur:
                    if cur != 0 and n <= cap:
                        runs[n - 1, 2] = i - 1
                    if sgn != 0:
                        if n < cap:
                            runs[n, 0] = j
                            runs[n, 1] = i
                            runs[n, 3] = sgn
                            runs[n, 4] = i
                            peak[n] = sgn * np.float64(v)
                        n += 1
                    cur = sgn
                elif sgn != 0 and n <= cap:
                    # Strictly greater: ties keep the first pixel in raster order.
                    val = sgn * np.float64(v)
                    if val > peak[n - 1]:
                        peak[n - 1] = val
                        runs[n - 1, 4] = i
        if cur != 0 and n <= cap:
            runs[n - 1, 2] = nx - 1
    return n


def _find(parent, a):
    # Path halving: every other node on the way up points to its grandparent.
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def _union(parent, a, b):
    # The smaller index becomes the root, so a component's root is its first run in raster
    # order (label_runs relies on this: the root's y is the footprint's y0).
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


def _label_runs(runs, peak, nruns, min_area, parent, best, comp):
    """Join the first ``nruns`` runs into 8-connected same-sign components.

    comp[k] <- (peak_x, peak_y, sign, npix, x0, x1, y0, y1) for each component with
    npix >= min_area, in the raster order of the component's first pixel; returns their
    number.  The peak is the largest ``sign * score`` (ties: first pixel in raster order).
    parent (int64) and best (float64) are workspaces of at least ``nruns`` entries, and comp
    must have ``nruns`` rows: statistics are accumulated in the root run's row, then
    compacted in place (the k-th kept root has index >= k, so no row is overwritten early).
    """
    row = -2
    cur_lo = 0
    prev_lo = 0
    prev_hi = 0
    p = 0
    for r in range(nruns):
        parent[r] = r
        y = runs[r, 0]
        if y != row:
            if y == row + 1:
                prev_lo = cur_lo
                prev_hi = r
            else:
                prev_lo = r
                prev_hi = r
            cur_lo = r
            row = y
            p = prev_lo
        x0 = runs[r, 1]
        x1 = runs[r, 2]
        # Runs of one row are disjoint and sorted, so a previous-row run ending left of
        # x0 - 1 cannot touch this run or any later one.
        while p < prev_hi and runs[p, 2] < x0 - 1:
            p += 1
        q = p
        while q < prev_hi and runs[q, 1] <= x1 + 1:
            if runs[q, 3] == runs[r, 3]:
                _union(parent, q, r)
            q += 1

    for r in range(nruns):
        root = _find(parent, r)
        parent[r] = root
        y = runs[r, 0]
        if root == r:
            comp[r, 0] = runs[r, 4]
            comp[r, 1] = y
            comp[r, 2] = runs[r, 3]
            comp[r, 3] = runs[r, 2] - runs[r, 1] + 1
            comp[r, 4] = runs[r, 1]
            comp[r, 5] = runs[r, 2]
            comp[r, 6] = y
            comp[r, 7] = y
            best[r] = peak[r]
        else:
            comp[root, 3] += runs[r, 2] - runs[r, 1] + 1
            comp[root, 4] = min(comp[root, 4], runs[r, 1])
            comp[root, 5] = max(comp[root, 5], runs[r, 2])
            comp[root, 7] = y  # runs come in raster order
            # Strictly greater, runs in raster order: ties keep the earliest pixel.
            if peak[r] > best[root]:
                best[root] = peak[r]
                comp[root, 0] = runs[r, 4]
                comp[root, 1] = y

    k = 0
    for r in range(nruns):
        if parent[r] == r and comp[r, 3] >= min_area:
            for c in range(8):
                comp[k, c] = comp[r, c]
            k += 1
    return k


def _star_moments(image, score, invalid, runs, nruns, parent, min_area, table):
    """sep.extract's isophotal measurements of the positive components, from the runs.

    ``parent[r]`` must hold run r's root (as :func:`label_runs` leaves it); ``table`` has
    ``nruns`` rows and ``max(STAR_WORK, len(STAR_COLUMNS))`` columns.  Row k <- STAR_COLUMNS
    of the k-th positive component with npix >= min_area (raster order of its first pixel);
    returns their number.  Sums use ``image``; the peak is the pixel of largest ``score``
    (ties: first in raster order) and ``peak`` the image there.  flag is 2 when the
    footprint touches the image edge or a pixel 8-adjacent to it is ``invalid``: sep's
    "truncated", for a footprint that may continue where it could not be seen.

    Sums are accumulated in the root's row relative to the root run's first pixel, so the
    second moments lose no digits to the cancellation sum(v x^2)/sum(v) - xbar^2 at x ~ 4000.
    """
    ny, nx = image.shape
    for r in range(nruns):
        root = parent[r]
        if runs[root, 3] <= 0:
            continue  # negative components are not wanted
        y = runs[r, 0]
        x0 = runs[r, 1]
        x1 = runs[r, 2]
        if root == r:
            for c in range(STAR_WORK):
                table[r, c] = 0.0
            table[r, 7] = -np.inf
            table[r, 12] = x0
            table[r, 13] = x1
            table[r, 14] = y
            table[r, 17] = x0
            table[r, 18] = y
        ox = table[root, 17]
        oy = table[root, 18]
        dy = y - oy
        sv = 0.0
        svx = 0.0
        svxx = 0.0
        flux = 0.0
        for i in range(x0, x1 + 1):
            v = np.float64(image[y, i])
            flux += v
            s = np.float64(score[y, i])
            # Strictly greater, raster order: ties keep the first pixel.
            if s > table[root, 7]:
                table[root, 7] = s
                table[root, 8] = v
                table[root, 9] = i
                table[root, 10] = y
            if v > 0:  # SExtractor weights the barycentre by positive values only
                dx = i - ox
                sv += v
                svx += v * dx
                svxx += v * dx * dx
        table[root, 0] += sv
        table[root, 1] += svx
        table[root, 2] += sv * dy
        table[root, 3] += svxx
        table[root, 4] += sv * dy * dy
        table[root, 5] += svx * dy
        table[root, 6] += flux
        table[root, 11] += x1 - x0 + 1
        table[root, 12] = min(table[root, 12], x0)
        table[root, 13] = max(table[root, 13], x1)
        table[root, 15] = y  # runs come in raster order
        if table[root, 16] == 0.0:
            if x0 == 0 or x1 == nx - 1 or y == 0 or y == ny - 1:
                table[root, 16] = _TRUNCATED
            else:
                # The union of the 3x3 neighbourhoods of a run is this 3-row rectangle.
                for j in range(y - 1, y + 2):
                    for i in range(x0 - 1, x1 + 2):
                        if invalid[j, i]:
                            table[root, 16] = _TRUNCATED

    k = 0
    for r in range(nruns):
        if parent[r] != r or runs[r, 3] <= 0 or table[r, 11] < min_area:
            continue
        tv = table[r, 0]
        if tv > 0:
            xm = table[r, 1] / tv
            ym = table[r, 2] / tv
            x2 = table[r, 3] / tv - xm * xm
            y2 = table[r, 4] / tv - ym * ym
            xy = table[r, 5] / tv - xm * ym
        else:
            xm = ym = x2 = y2 = xy = np.nan
        # sep/SExtractor: a footprint one pixel wide has a singular moment matrix; add the
        # variance of a uniform pixel (1/12) to both axes.
        if abs(x2 * y2 - xy * xy) < 0.00694:
            x2 += 0.0833333
            y2 += 0.0833333
        d = x2 - y2
        # sep's pi/4 for round moments; NaN moments (no positive pixel) give a NaN angle.
        theta = math.pi / 4.0 if d == 0 else math.atan2(2.0 * xy, d) / 2.0
        half = math.sqrt(0.25 * d * d + xy * xy)
        mean = 0.5 * (x2 + y2)
        a = math.sqrt(mean + half)
        b = math.sqrt(max(mean - half, 0.0))
        x = xm + table[r, 17]
        y = ym + table[r, 18]
        flux = table[r, 6]
        peak = table[r, 8]
        xpeak = table[r, 9]
        ypeak = table[r, 10]
        npix = table[r, 11]
        xmin = table[r, 12]
        xmax = table[r, 13]
        ymin = table[r, 14]
        ymax = table[r, 15]
        flag = table[r, 16]
        # Row k <= r: every value of row r is read above before row k is written.
        table[k, 0] = x
        table[k, 1] = y
        table[k, 2] = x2
        table[k, 3] = y2
        table[k, 4] = xy
        table[k, 5] = a
        table[k, 6] = b
        table[k, 7] = theta
        table[k, 8] = flux
        table[k, 9] = peak
        table[k, 10] = xpeak
        table[k, 11] = ypeak
        table[k, 12] = npix
        table[k, 13] = xmin
        table[k, 14] = xmax
        table[k, 15] = ymin
        table[k, 16] = ymax
        table[k, 17] = flag
        k += 1
    return k


_I8_2 = "int64[:, ::1]"

find_runs = njit(
    [
        f"int64({t}[:, ::1], boolean[:, ::1], float32, {_I8_2}, float64[::1])"
        for t in ("float32", "float64")
    ]
)(_find_runs)
_find = njit("int64(int64[::1], int64)")(_find)
_union = njit("void(int64[::1], int64, int64)")(_union)
label_runs = njit(f"int64({_I8_2}, float64[::1], int64, int64, int64[::1], float64[::1], {_I8_2})")(
    _label_runs
)
star_moments = njit(
    [
        f"int64({t}[:, ::1], {t}[:, ::1], boolean[:, ::1], {_I8_2}, int64, int64[::1], int64, "
        "float64[:, ::1])"
        for t in ("float32", "float64")
    ]
)(_star_moments)
