"""Dipole fitting loop: two PSFs of opposite sign, positions and fluxes free, Gauss-Newton.

No checks here (diffstream.jitcore.dipole checks and allocates).  The model of the difference D is

    D(p) = f+ P_D(p - r+) - f- P_D(p - r-),      f+, f- > 0 (the lobes' absolute fluxes)

and, when the pre-subtraction images are given (weights w_s, w_t > 0), the science S and
the template T (both on the difference's grid, same flux unit) are fitted at the same time:

    S(p) = f+ P_S(p - r+),   T(p) = f- P_T(p - r-).

chi^2 = sum_D (D - model)^2 / V_D + w_s sum_S (...)^2 / V_S + w_t sum_T (...)^2 / V_T over
the good pixels (psffit's rule) of one rectangular window that holds both lobes' stamps at
their starting positions, fixed while iterating so that chi^2 is continuous in the
parameters.  Why the extra planes: a dipole much closer than the PSF width is, on D alone,
f d . grad(P) to first order, so only the product of flux and separation is measured (the
correlation of f and d is 1 - O(d^2 / sigma^2)); the science and template fix the fluxes,
which is what LSST's DipoleFitAlgorithm does with its posImage/negImage (relWeight 0.5).

Stamps are moved with psffit.shift_stamp (8-node Lagrange, exact position derivatives).
Each step is a Gauss-Newton step on the Jacobi-scaled normal equations (Cholesky), position
steps clipped to ``max_step`` px, then a backtracking line search on chi^2 that also rejects
non-positive fluxes.  Converged when every position step is below ``tol`` times its error.
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit
from diffstream.jitcore._kernels.psffit import (
    MAX_HALVINGS,
    NTAPS,
    PAD,
    _good,
    _nearest,
    shift_stamp,
)

__all__ = [
    "NPAR",
    "NOUT",
    "DIPOLE_OK",
    "DIPOLE_NO_PIXELS",
    "DIPOLE_SINGULAR",
    "DIPOLE_OUT_OF_BOUNDS",
    "DIPOLE_NOT_CONVERGED",
    "DIPOLE_NONPOSITIVE_FLUX",
    "fit_dipole_pairs",
    "plane_chi2",
]

NPAR = 6  # f+, x+, y+, f-, x-, y-
# out columns: params (6), errors (6), code, chi2 on D, good pixels on D, iterations,
# total weighted chi2, chi2 on D of a zero model
NOUT = 18

DIPOLE_OK = 0
DIPOLE_NO_PIXELS = 1
DIPOLE_SINGULAR = 2
DIPOLE_OUT_OF_BOUNDS = 3
DIPOLE_NOT_CONVERGED = 4
DIPOLE_NONPOSITIVE_FLUX = 5


@njit
def plane_chi2(
    img, var, mask, badbits, box, wa, ax, ay, ca, fa, wb, bx, by, cb, fb, weight,
    nmat, rhs, accumulate,
):  # fmt: skip
    """chi^2 of one plane over ``box`` (x0, x1, y0, y1 inclusive, inside the image) and,
    when ``accumulate``, its weighted J^T W J / J^T W r added into ``nmat`` / ``rhs``.

    The plane's model is ``ca fa Ta + cb fb Tb``: lobe a (parameters 0-2: flux, x, y) is the
    stamp moved into ``wa`` (see psffit.shift_stamp) centred near pixel (ax, ay), lobe b
    (parameters 3-5) likewise; ca, cb in {-1, 0, +1}.  Returns (chi2, good pixels).
    """
    ma = wa.shape[1]
    offa = (ma - 2 * PAD) // 2 + PAD
    mb = wb.shape[1]
    offb = (mb - 2 * PAD) // 2 + PAD
    chi2 = 0.0
    ngood = 0
    for j in range(box[2], box[3] + 1):
        for i in range(box[0], box[1] + 1):
            if not _good(img, var, mask, badbits, j, i):
                continue
            ngood += 1
            ta = 0.0
            dax = 0.0
            day = 0.0
            tb = 0.0
            dbx = 0.0
            dby = 0.0
            if ca != 0.0:
                c = i - ax + offa
                c2 = j - ay + offa
                if 0 <= c < ma and 0 <= c2 < ma:
                    ta = wa[0, c2, c]
                    dax = wa[1, c2, c]
                    day = wa[2, c2, c]
            if cb != 0.0:
                c = i - bx + offb
                c2 = j - by + offb
                if 0 <= c < mb and 0 <= c2 < mb:
                    tb = wb[0, c2, c]
                    dbx = wb[1, c2, c]
                    dby = wb[2, c2, c]
            w = weight / var[j, i]
            r = img[j, i] - ca * fa * ta - cb * fb * tb
            chi2 += w * r * r
            if accumulate:
                g0 = ca * ta
                g1 = ca * fa * dax
                g2 = ca * fa * day
                g3 = cb * tb
                g4 = cb * fb * dbx
                g5 = cb * fb * dby
                g = (g0, g1, g2, g3, g4, g5)
                for p in range(NPAR):
                    gp = g[p]
                    if gp == 0.0:
                        continue
                    rhs[p] += w * gp * r
                    for q in range(p, NPAR):
                        nmat[p, q] += w * gp * g[q]
    return chi2, ngood


@njit
def _cholesky_inplace(a, n):
    """Lower Cholesky factor of the symmetric n x n ``a`` (upper triangle read) in place.

    Returns False when a pivot is not positive (not positive definite to rounding)."""
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        if not (s > 1e-13 and math.isfinite(s)):
            return False
        d = math.sqrt(s)
        a[j, j] = d
        for i in range(j + 1, n):
            s = a[j, i]  # upper triangle holds the original symmetric entries
            for k in range(j):
                s -= a[i, k] * a[j, k]
            a[i, j] = s / d
    return True


@njit
def _cholesky_solve(low, b, x, n):
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= low[i, k] * x[k]
        x[i] = s / low[i, i]
    for i in range(n - 1, -1, -1):
        s = x[i]
        for k in range(i + 1, n):
            s -= low[k, i] * x[k]
        x[i] = s / low[i, i]


@njit
def _solve_scaled(nmat, rhs, scale, low, scratch, delta, cov, want_cov):
    """delta <- N^-1 rhs (and cov <- N^-1) through the Jacobi-scaled Cholesky factor.

    Fluxes (~1e4 nJy) and positions (~1 px) differ by orders of magnitude; scaling by the
    diagonal makes the pivots O(1) so that the positivity test of the factor is meaningful.
    ``scratch`` has shape (2, n).  Returns False when N is singular."""
    n = nmat.shape[0]  # NPAR here; the trail fit (trails.py) shares it for its own
    for p in range(n):
        d = nmat[p, p]
        if not (d > 0.0 and math.isfinite(d)):
            return False
        scale[p] = 1.0 / math.sqrt(d)
    for p in range(n):
        for q in range(p, n):
            low[p, q] = nmat[p, q] * scale[p] * scale[q]
            if q > p:
                low[q, p] = 0.0
    if not _cholesky_inplace(low, n):
        return False
    tmp = scratch[0]
    sol = scratch[1]
    for p in range(n):
        tmp[p] = rhs[p] * scale[p]
    _cholesky_solve(low, tmp, sol, n)
    for p in range(n):
        delta[p] = sol[p] * scale[p]
    if want_cov:
        for q in range(n):
            for p in range(n):
                tmp[p] = 1.0 if p == q else 0.0
            _cholesky_solve(low, tmp, sol, n)
            for p in range(n):
                cov[p, q] = sol[p] * scale[p] * scale[q]
    return True


@njit
def _place(par, psf_d, psf_s, psf_t, use_s, use_t, work_d, work_s, work_t, taps, near):
    """Move every stamp to the lobe positions in ``par``; near <- nearest pixels (4)."""
    near[0] = _nearest(par[1])
    near[1] = _nearest(par[2])
    near[2] = _nearest(par[4])
    near[3] = _nearest(par[5])
    shift_stamp(psf_d, par[1] - near[0], par[2] - near[1], work_d[0], taps)
    shift_stamp(psf_d, par[4] - near[2], par[5] - near[3], work_d[1], taps)
    if use_s:
        shift_stamp(psf_s, par[1] - near[0], par[2] - near[1], work_s, taps)
    if use_t:
        shift_stamp(psf_t, par[4] - near[2], par[5] - near[3], work_t, taps)


@njit
def _total(
    diff, dvar, sci, svar, tmpl, tvar, mask, badbits, box, par, near, work_d, work_s, work_t,
    w_d, w_s, w_t, nmat, rhs, accumulate, parts,
):  # fmt: skip
    """Total chi^2 (and normal equations when ``accumulate``) with plane weights w_d, w_s,
    w_t (a plane of weight 0 is skipped); parts <- (chi2_D, ngood_D), both 0 when w_d is 0."""
    if accumulate:
        for p in range(NPAR):
            rhs[p] = 0.0
            for q in range(NPAR):
                nmat[p, q] = 0.0
    total = 0.0
    parts[0] = 0.0
    parts[1] = 0.0
    if w_d > 0.0:
        chi_d, n_d = plane_chi2(
            diff, dvar, mask, badbits, box, work_d[0], near[0], near[1], 1.0, par[0],
            work_d[1], near[2], near[3], -1.0, par[3], w_d, nmat, rhs, accumulate,
        )  # fmt: skip
        total += chi_d
        parts[0] = chi_d / w_d
        parts[1] = n_d
    if w_s > 0.0:
        c, _ = plane_chi2(
            sci, svar, mask, badbits, box, work_s, near[0], near[1], 1.0, par[0],
            work_s, near[0], near[1], 0.0, 0.0, w_s, nmat, rhs, accumulate,
        )  # fmt: skip
        total += c
    if w_t > 0.0:
        c, _ = plane_chi2(
            tmpl, tvar, mask, badbits, box, work_t, near[2], near[3], 0.0, 0.0,
            work_t, near[2], near[3], 1.0, par[3], w_t, nmat, rhs, accumulate,
        )  # fmt: skip
        total += c
    if accumulate:
        for p in range(NPAR):
            for q in range(p):
                nmat[p, q] = nmat[q, p]
    return total


def _fit_dipole_pairs(
    diff, dvar, sci, svar, tmpl, tvar, mask, badbits, psf_d, psf_s, psf_t, w_s, w_t,
    start, boxes, bound, max_iter, max_step, tol, work_d, work_s, work_t, out, cov,
):  # fmt: skip
    """Fit one dipole per row of ``start`` (f+, x+, y+, f-, x-, y-) over ``boxes[n]``.

    psf_d/psf_s/psf_t: (n, K, K) unit-sum stamps (psf_s/psf_t are ignored when w_s/w_t are 0;
    any array of the right rank may be passed then, as for sci/tmpl).  ``bound``: how far
    (px) each lobe may move from its start.  work_d (2, 5, Md, Md), work_s (5, Ms, Ms),
    work_t (5, Mt, Mt) with M = K + 2 PAD.  out[n] <- NOUT columns (see NOUT), cov[n] <- the
    parameter covariance at the solution (NaN unless DIPOLE_OK): the inverse Fisher matrix
    of D alone, or of S and T alone when both are fitted.  On failure the parameters are the
    last accepted iterate, the errors NaN.
    """
    use_s = w_s > 0.0
    use_t = w_t > 0.0
    taps = np.empty((4, NTAPS))
    nmat = np.empty((NPAR, NPAR))
    low = np.empty((NPAR, NPAR))
    inv = np.empty((NPAR, NPAR))
    rhs = np.empty(NPAR)
    scale = np.empty(NPAR)
    scratch = np.empty((2, NPAR))
    delta = np.empty(NPAR)
    par = np.empty(NPAR)
    trial = np.empty(NPAR)
    near = np.empty(4, dtype=np.int64)
    parts = np.empty(2)
    for n in range(start.shape[0]):
        box = boxes[n]
        for p in range(NPAR):
            par[p] = start[n, p]
        for c in range(NOUT):
            out[n, c] = np.nan
        for p in range(NPAR):
            for q in range(NPAR):
                cov[n, p, q] = np.nan
        niter = 0
        if not (par[0] > 0.0 and par[3] > 0.0):
            code = DIPOLE_NONPOSITIVE_FLUX
        else:
            _place(par, psf_d[n], psf_s[n], psf_t[n], use_s, use_t, work_d, work_s, work_t,
                   taps, near)  # fmt: skip
            code = DIPOLE_NOT_CONVERGED
            for _ in range(max_iter):
                niter += 1
                chi2 = _total(
                    diff, dvar, sci, svar, tmpl, tvar, mask, badbits, box, par, near, work_d,
                    work_s, work_t, 1.0, w_s, w_t, nmat, rhs, True, parts,
                )  # fmt: skip
                if parts[1] < NPAR + 1:
                    code = DIPOLE_NO_PIXELS
                    break
                if not _solve_scaled(nmat, rhs, scale, low, scratch, delta, inv, True):
                    code = DIPOLE_SINGULAR
                    break
                for p in (1, 2, 4, 5):
                    delta[p] = min(max_step, max(-max_step, delta[p]))
                alpha = 1.0
                accepted = False
                for _ls in range(MAX_HALVINGS):
                    for p in range(NPAR):
                        trial[p] = par[p] + alpha * delta[p]
                    if trial[0] > 0.0 and trial[3] > 0.0:
                        _place(trial, psf_d[n], psf_s[n], psf_t[n], use_s, use_t, work_d,
                               work_s, work_t, taps, near)  # fmt: skip
                        c2 = _total(
                            diff, dvar, sci, svar, tmpl, tvar, mask, badbits, box, trial,
                            near, work_d, work_s, work_t, 1.0, w_s, w_t, nmat, rhs, False, parts,
                        )  # fmt: skip
                        if c2 <= chi2:
                            accepted = True
                            break
                    alpha *= 0.5
                if not accepted:
                    # No decrease along a descent direction: chi^2 is minimal to rounding.
                    _place(par, psf_d[n], psf_s[n], psf_t[n], use_s, use_t, work_d, work_s,
                           work_t, taps, near)  # fmt: skip
                    code = DIPOLE_OK
                    break
                for p in range(NPAR):
                    par[p] = trial[p]
                moved = False
                for p in (1, 2, 4, 5):
                    if abs(par[p] - start[n, p]) > bound[n]:
                        moved = True
                if moved:
                    code = DIPOLE_OUT_OF_BOUNDS
                    break
                small = True
                for p in (1, 2, 4, 5):
                    if not abs(alpha * delta[p]) < tol * math.sqrt(abs(inv[p, p])):
                        small = False
                if small:
                    code = DIPOLE_OK
                    break
        for p in range(NPAR):
            out[n, p] = par[p]
        if code == DIPOLE_OK:
            total = _total(
                diff, dvar, sci, svar, tmpl, tvar, mask, badbits, box, par, near, work_d,
                work_s, work_t, 1.0, w_s, w_t, nmat, rhs, False, parts,
            )  # fmt: skip
            out[n, 13] = parts[0]
            out[n, 14] = parts[1]
            out[n, 16] = total
            # chi^2 of the difference for a zero model: the dipole's significance is
            # sqrt(chi2_null - chi2_D), whatever the degeneracy of its parameters.
            out[n, 17] = plane_chi2(
                diff, dvar, mask, badbits, box, work_d[0], near[0], near[1], 0.0, 0.0,
                work_d[1], near[2], near[3], 0.0, 0.0, 1.0, nmat, rhs, False,
            )[0]  # fmt: skip
            # Errors: D repeats the information of S and T (it is a linear function of
            # them), so with both planes the Fisher matrix is theirs alone (weights 1); the
            # weighted normal matrix of the fit would count it twice.
            if w_s > 0.0 and w_t > 0.0:
                _total(
                    diff, dvar, sci, svar, tmpl, tvar, mask, badbits, box, par, near, work_d,
                    work_s, work_t, 0.0, 1.0, 1.0, nmat, rhs, True, parts,
                )  # fmt: skip
            else:
                _total(
                    diff, dvar, sci, svar, tmpl, tvar, mask, badbits, box, par, near, work_d,
                    work_s, work_t, 1.0, w_s, w_t, nmat, rhs, True, parts,
                )  # fmt: skip
            if not _solve_scaled(nmat, rhs, scale, low, scratch, delta, inv, True):
                code = DIPOLE_SINGULAR
            else:
                for p in range(NPAR):
                    out[n, 6 + p] = math.sqrt(inv[p, p]) if inv[p, p] > 0.0 else np.nan
                    for q in range(NPAR):
                        cov[n, p, q] = inv[p, q]
        out[n, 12] = code
        out[n, 15] = niter


def _score_peaks(score, xs, ys, radius, sign, out):
    """For each source n: out[n] <- (px, py, value) of the largest -sign[n] * score over the
    finite pixels within radius[n] of (xs[n], ys[n]) (first in row order on ties; a window
    cut by the image), or (-1, -1, -inf) where there is none.  The opposite lobe a dipole
    fit starts from (jitcore.dipole._hidden_lobes_on_score)."""
    ny, nx = score.shape
    for n in range(xs.shape[0]):
        x = xs[n]
        y = ys[n]
        r = int(math.ceil(radius[n]))
        ix = int(math.floor(x + 0.5))
        iy = int(math.floor(y + 0.5))
        best = -math.inf
        bx = -1
        by = -1
        for j in range(max(iy - r, 0), min(iy + r + 1, ny)):
            for i in range(max(ix - r, 0), min(ix + r + 1, nx)):
                v = -sign[n] * np.float64(score[j, i])
                if math.isfinite(v) and v > best and math.hypot(i - x, j - y) <= radius[n]:
                    best = v
                    bx = i
                    by = j
        out[n, 0] = bx
        out[n, 1] = by
        out[n, 2] = best


score_peaks = njit(
    [f"void({t}[:, ::1], float64[::1], float64[::1], float64[::1], float64[::1], float64[:, ::1])"
     for t in ("float32", "float64")]
)(_score_peaks)  # fmt: skip


_IMG = "{t}[:, ::1]"
_F8_1 = "float64[::1]"
_F8_2 = "float64[:, ::1]"
_F8_3 = "float64[:, :, ::1]"
_F8_4 = "float64[:, :, :, ::1]"
_I8_2 = "int64[:, ::1]"
_MASK = "int32[:, ::1]"


def _sigs():
    sigs = []
    for t in ("float32", "float64"):
        img = _IMG.format(t=t)
        sigs.append(
            f"void({img}, {img}, {img}, {img}, {img}, {img}, {_MASK}, int64, {_F8_3}, {_F8_3}, "
            f"{_F8_3}, float64, float64, {_F8_2}, {_I8_2}, {_F8_1}, int64, float64, float64, "
            f"{_F8_4}, {_F8_3}, {_F8_3}, {_F8_2}, {_F8_3})"
        )
    return sigs


fit_dipole_pairs = njit(_sigs())(_fit_dipole_pairs)
