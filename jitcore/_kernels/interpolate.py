"""Ordinary-kriging fill of masked pixels (no checks: diffstream.jitcore.interpolate checks).

Each masked pixel gets sum_i w_i y_i over the unmasked pixels i of the (2r+1)^2 window around
it, with the kriging weights of a Gaussian covariance C(d) = exp(-d^2 / (2 l^2)) plus a
nugget eta on the diagonal, under the constraint sum_i w_i = 1 (so a constant background is
reproduced exactly whatever it is).  The weights depend only on which window pixels are
usable, so consecutive masked pixels with the same window pattern (down a bad column) reuse
them: one small Cholesky per distinct pattern, not per pixel.
"""

from __future__ import annotations

import math

from diffstream.jitcore._jit import njit

__all__ = ["kriging_fill"]


@njit
def _cholesky_solve(a, n, b):
    """Solve a x = b in place in b (a: n x n SPD, overwritten by its Cholesky factor).

    Returns False when a is not numerically positive definite.
    """
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        if s <= 0.0:
            return False
        d = math.sqrt(s)
        a[j, j] = d
        for i in range(j + 1, n):
            t = a[i, j]
            for k in range(j):
                t -= a[i, k] * a[j, k]
            a[i, j] = t / d
    for i in range(n):  # L z = b
        t = b[i]
        for k in range(i):
            t -= a[i, k] * b[k]
        b[i] = t / a[i, i]
    for i in range(n - 1, -1, -1):  # L^T x = z
        t = b[i]
        for k in range(i + 1, n):
            t -= a[k, i] * b[k]
        b[i] = t / a[i, i]
    return True


@njit
def kriging_fill(
    image, variance, bad, ys, xs, radius, length, nugget, min_good,
    out_image, out_variance, filled, pattern, last, offs, cov, rhs, ones, weights,
):  # fmt: skip
    """Fill ``out_image``/``out_variance`` at the masked pixels (ys[k], xs[k]).

    Neighbours are the pixels of the window with ``bad`` False, a finite value and a finite
    variance > 0 (never another filled pixel, so the result does not depend on the order;
    checked here rather than in a full-frame mask: only windows around defects are read).
    ``out_variance`` gets the |w|-weighted mean of the neighbours' variances (the local
    level; sum w_i v_i could go negative next to a bright star, where some weights are
    negative) times max(1, 2 sum_i w_i g_i + sum_i w_i^2),
    g_i = exp(-d_i^2 / l^2).  Why: the fill is made of its neighbours' noise, so a matched
    filter (a PSF of sigma l / sqrt 2) centred on it sums that noise coherently; its true
    variance there is v sum_j (k_j + k_0 w_j)^2, not the v sum_j k_j^2 that white noise of
    variance v in the fill would give.  The factor makes the two equal at the fill.  Pixels
    with fewer than ``min_good`` usable neighbours, or whose system is singular, are left
    untouched with ``filled`` False.
    Scratch (sizes m = (2 radius + 1)^2): pattern, last (bool m), offs (int64 m x 2),
    cov (m x m), rhs, ones, weights (m).  Returns the number of distinct patterns solved.
    """
    ny, nx = image.shape
    side = 2 * radius + 1
    m = side * side
    inv2l2 = 0.5 / (length * length)
    have = False
    n = 0
    solves = 0
    infl = 1.0
    for t in range(m):
        last[t] = False
    for k in range(ys.shape[0]):
        y = ys[k]
        x = xs[k]
        same = have
        n_new = 0
        for t in range(m):
            dy = t // side - radius
            dx = t % side - radius
            yy = y + dy
            xx = x + dx
            ok = False
            if 0 <= yy < ny and 0 <= xx < nx and not bad[yy, xx]:
                v = variance[yy, xx]
                ok = math.isfinite(image[yy, xx]) and v > 0.0 and math.isfinite(v)
            pattern[t] = ok
            if ok != last[t]:
                same = False
            if ok:
                n_new += 1
        if not same:
            for t in range(m):
                last[t] = pattern[t]
            n = n_new
            have = False
            if n < min_good:
                filled[y, x] = False
                continue
            j = 0
            for t in range(m):
                if pattern[t]:
                    offs[j, 0] = t // side - radius
                    offs[j, 1] = t % side - radius
                    j += 1
            for i in range(n):
                for j in range(i + 1):
                    ddy = offs[i, 0] - offs[j, 0]
                    ddx = offs[i, 1] - offs[j, 1]
                    c = math.exp(-(ddy * ddy + ddx * ddx) * inv2l2)
                    cov[i, j] = c
                    cov[j, i] = c
                cov[i, i] = 1.0 + nugget
                d2 = offs[i, 0] * offs[i, 0] + offs[i, 1] * offs[i, 1]
                rhs[i] = math.exp(-d2 * inv2l2)
                ones[i] = 1.0
            # One factorisation for both right-hand sides (k, then 1).
            if not _cholesky_solve(cov, n, rhs):
                filled[y, x] = False
                continue
            # ones: forward/back substitution with the factor now in cov.
            for i in range(n):
                t2 = ones[i]
                for q in range(i):
                    t2 -= cov[i, q] * ones[q]
                ones[i] = t2 / cov[i, i]
            for i in range(n - 1, -1, -1):
                t2 = ones[i]
                for q in range(i + 1, n):
                    t2 -= cov[q, i] * ones[q]
                ones[i] = t2 / cov[i, i]
            # Ordinary kriging: w = A^-1 k + A^-1 1 (1 - 1' A^-1 k) / (1' A^-1 1).
            s1 = 0.0
            s2 = 0.0
            for i in range(n):
                s1 += rhs[i]
                s2 += ones[i]
            lam = (1.0 - s1) / s2
            for i in range(n):
                weights[i] = rhs[i] + lam * ones[i]
            # Variance inflation for the matched filter (see the docstring): g_i is the
            # PSF-shaped filter at the neighbour relative to its centre, exp(-d^2 / l^2).
            cross = 0.0
            sq = 0.0
            for i in range(n):
                d2 = offs[i, 0] * offs[i, 0] + offs[i, 1] * offs[i, 1]
                cross += weights[i] * math.exp(-d2 * 2.0 * inv2l2)
                sq += weights[i] * weights[i]
            infl = max(1.0, 2.0 * cross + sq)
            have = True
            solves += 1
        elif n < min_good or not have:
            filled[y, x] = False
            continue
        acc = 0.0
        vacc = 0.0
        wabs = 0.0
        for i in range(n):
            yy = y + offs[i, 0]
            xx = x + offs[i, 1]
            acc += weights[i] * image[yy, xx]
            vacc += abs(weights[i]) * variance[yy, xx]
            wabs += abs(weights[i])
        out_image[y, x] = acc
        out_variance[y, x] = infl * vacc / wabs
        filled[y, x] = True
    return solves
