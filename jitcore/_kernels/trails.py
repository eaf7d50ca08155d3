"""Trailed-source model and its Levenberg-Marquardt fit (Veres et al. 2012), allocation-free.

No checks here (diffstream.jitcore.trails checks and allocates).  The model of a source moving
uniformly during the exposure, seen through a circular Gaussian PSF of sigma ``s``, is the
PSF convolved with a segment of length L at angle theta (counter-clockwise from +x), centred
at (xc, yc), total flux F:

    u = (x - xc) cos(theta) + (y - yc) sin(theta)      (along the trail)
    v = -(x - xc) sin(theta) + (y - yc) cos(theta)     (across it)
    I = F G(v) B(u, L),   G(v) = exp(-v^2 / 2 s^2) / (sqrt(2 pi) s),
    B(u, L) = [erf((u + L/2) / (sqrt 2 s)) - erf((u - L/2) / (sqrt 2 s))] / (2 L)

(LSST's ext_trailedSources_Naive, Veres et al. 2012 eq. 3, written with unit integral so that F
is the total flux).  B is even in L and tends to the Gaussian G(u) as L -> 0: a point source
is the L = 0 member of the family, so the fit may cross L = 0 and the length is |L|.  The
model is evaluated at pixel centres: the Gaussian sigma is the measured PSF's, which is
already pixel-convolved.

Parameters: F, xc, yc, L, theta.  Jacobian analytic (the unit tests compare it with finite
differences of a NumPy reference).  Near L = 0 the erf difference loses precision as eps/L
and dB/dL as eps/L^2, so below ``_SMALL`` (in sigma) the series B = G(u) (1 + L^2 (u^2 -
s^2) / (24 s^4)) is used; its neglected term is O(L^4 / s^4) < 1e-8 relative there.
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit
from diffstream.jitcore._kernels.dipole import _solve_scaled
from diffstream.jitcore._kernels.psffit import _good

__all__ = [
    "NPAR",
    "NOUT",
    "TRAIL_OK",
    "TRAIL_NO_PIXELS",
    "TRAIL_SINGULAR",
    "TRAIL_NOT_CONVERGED",
    "TRAIL_OUT_OF_BOUNDS",
    "fit_trails",
    "trail_chi2",
    "trail_model",
]

NPAR = 5  # F, xc, yc, L, theta
# out columns: params (5), errors (5), code, chi2, good pixels, iterations
NOUT = 14

TRAIL_OK = 0
TRAIL_NO_PIXELS = 1
TRAIL_SINGULAR = 2  # the fit converged but its Fisher matrix is singular (errors NaN)
TRAIL_NOT_CONVERGED = 3
TRAIL_OUT_OF_BOUNDS = 4  # the centre left the fitted window

_SMALL = 1e-2  # |L| / sigma below which B and dB/dL use their series
_SQRT2PI = math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRTPI = 2.0 / math.sqrt(math.pi)


@njit
def trail_model(x, y, f, xc, yc, length, theta, sigma, grad, want_grad):
    """Model value at pixel (x, y); ``grad`` (NPAR) <- dI/dparams when ``want_grad``."""
    value, g0, g1, g2, g3, g4 = _model_cs(x, y, f, xc, yc, length, math.cos(theta),
                                          math.sin(theta), sigma, want_grad)  # fmt: skip
    if want_grad:
        grad[0], grad[1], grad[2], grad[3], grad[4] = g0, g1, g2, g3, g4
    return value


@njit
def _model_cs(x, y, f, xc, yc, length, c, s, sigma, want_grad):
    """(value, dI/dF, dI/dxc, dI/dyc, dI/dL, dI/dtheta) at pixel (x, y) with cos(theta),
    sin(theta) given (the derivatives 0 unless ``want_grad``).

    cos and sin once per pass: a fit's chi^2 pass evaluates the model at every pixel of its
    window with one theta, and the two per-pixel transcendentals were ~a quarter of the trail
    step's time (issue 17).  The derivatives come back as scalars, not through an array: the
    chi^2 pass sums them in registers (see :func:`trail_chi2`)."""
    dx = x - xc
    dy = y - yc
    u = dx * c + dy * s
    v = -dx * s + dy * c
    s2 = sigma * sigma
    g = math.exp(-0.5 * v * v / s2) / (_SQRT2PI * sigma)
    small = abs(length) < _SMALL * sigma
    gu = 0.0
    corr = 0.0
    if small:
        # G(u) only here: the erf form below does not use it (one exp per pixel fewer).
        gu = math.exp(-0.5 * u * u / s2) / (_SQRT2PI * sigma)
        corr = (u * u - s2) / (s2 * s2)
        b = gu * (1.0 + length * length * corr / 24.0)
    else:
        r = math.sqrt(2.0) * sigma
        b = (math.erf((u + 0.5 * length) / r) - math.erf((u - 0.5 * length) / r)) / (2.0 * length)
    value = f * g * b
    if not want_grad:
        return value, 0.0, 0.0, 0.0, 0.0, 0.0
    if small:
        db_du = -u / s2 * gu
        db_dl = length / 12.0 * corr * gu
    else:
        r = math.sqrt(2.0) * sigma
        ep = _TWO_OVER_SQRTPI / r * math.exp(-(((u + 0.5 * length) / r) ** 2))
        em = _TWO_OVER_SQRTPI / r * math.exp(-(((u - 0.5 * length) / r) ** 2))
        db_du = (ep - em) / (2.0 * length)
        db_dl = 0.25 * (ep + em) / length - b / length
    dg_dv = -v / s2 * g
    return (
        value,
        g * b,
        f * (g * db_du * (-c) + b * dg_dv * s),
        f * (g * db_du * (-s) + b * dg_dv * (-c)),
        f * g * db_dl,
        f * (g * db_du * v - b * dg_dv * u),
    )


@njit
def trail_chi2(img, var, mask, badbits, box, par, sigma, nmat, rhs, grad, accumulate):
    """chi^2 of the model ``par`` over ``box`` (x0, x1, y0, y1 inclusive, inside the image)
    and, when ``accumulate``, J^T W J into ``nmat`` and J^T W r into ``rhs`` (all of both
    written here).  Returns (chi2, good pixels).  ``grad`` (NPAR) is left as scratch.

    The 15 + 5 sums run in scalars, written out, rather than in ``nmat`` and ``rhs``: Numba
    cannot tell that those arrays do not alias the image, so every += went through memory
    (~20% of a pass).  Same terms, same order: the sums are bit for bit those of the array
    form (tests/unit/test_trails.py::test_chi2_and_normal_equations_match_numpy)."""
    chi2 = 0.0
    ngood = 0
    f, xc, yc, length = par[0], par[1], par[2], par[3]
    c = math.cos(par[4])
    s = math.sin(par[4])
    r0 = r1 = r2 = r3 = r4 = 0.0
    n00 = n01 = n02 = n03 = n04 = n11 = n12 = n13 = n14 = 0.0
    n22 = n23 = n24 = n33 = n34 = n44 = 0.0
    for j in range(box[2], box[3] + 1):
        for i in range(box[0], box[1] + 1):
            if not _good(img, var, mask, badbits, j, i):
                continue
            ngood += 1
            m, g0, g1, g2, g3, g4 = _model_cs(float(i), float(j), f, xc, yc, length, c, s,
                                              sigma, accumulate)  # fmt: skip
            w = 1.0 / var[j, i]
            r = img[j, i] - m
            chi2 += w * r * r
            if accumulate:
                r0 += w * g0 * r
                r1 += w * g1 * r
                r2 += w * g2 * r
                r3 += w * g3 * r
                r4 += w * g4 * r
                n00 += w * g0 * g0
                n01 += w * g0 * g1
                n02 += w * g0 * g2
                n03 += w * g0 * g3
                n04 += w * g0 * g4
                n11 += w * g1 * g1
                n12 += w * g1 * g2
                n13 += w * g1 * g3
                n14 += w * g1 * g4
                n22 += w * g2 * g2
                n23 += w * g2 * g3
                n24 += w * g2 * g4
                n33 += w * g3 * g3
                n34 += w * g3 * g4
                n44 += w * g4 * g4
    if accumulate:
        rhs[0], rhs[1], rhs[2], rhs[3], rhs[4] = r0, r1, r2, r3, r4
        nmat[0, 0], nmat[0, 1], nmat[0, 2], nmat[0, 3], nmat[0, 4] = n00, n01, n02, n03, n04
        nmat[1, 1], nmat[1, 2], nmat[1, 3], nmat[1, 4] = n11, n12, n13, n14
        nmat[2, 2], nmat[2, 3], nmat[2, 4] = n22, n23, n24
        nmat[3, 3], nmat[3, 4] = n33, n34
        nmat[4, 4] = n44
        for p in range(NPAR):
            for q in range(p):
                nmat[p, q] = nmat[q, p]
    return chi2, ngood


@njit
def _start(img, var, mask, badbits, box, sign, sigma, xc, yc, par):
    """Starting point from the window's flux-weighted second moments about (xc, yc).

    Pixels of sign * D below 2 sigma are left out (noise would inflate the moments); the
    segment's moment along the trail is s^2 + L^2 / 12, so L0 = sqrt(12 (lambda_max - s^2)),
    at least 2 sigma so that the derivative in L (proportional to L) is not zero at the
    start.  Flux: the window's sum of D."""
    sw = 0.0
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    tot = 0.0
    for j in range(box[2], box[3] + 1):
        for i in range(box[0], box[1] + 1):
            if not _good(img, var, mask, badbits, j, i):
                continue
            d = img[j, i]
            tot += d
            w = sign * d
            if w < 2.0 * math.sqrt(var[j, i]):
                continue
            ddx = i - xc
            ddy = j - yc
            sw += w
            sxx += w * ddx * ddx
            syy += w * ddy * ddy
            sxy += w * ddx * ddy
    length = 2.0 * sigma
    theta = 0.0
    if sw > 0.0:
        ixx = sxx / sw
        iyy = syy / sw
        ixy = sxy / sw
        half = 0.5 * (ixx + iyy)
        lam = half + math.sqrt(max(0.25 * (ixx - iyy) ** 2 + ixy * ixy, 0.0))
        length = max(math.sqrt(max(12.0 * (lam - sigma * sigma), 0.0)), 2.0 * sigma)
        theta = 0.5 * math.atan2(2.0 * ixy, ixx - iyy)
    par[0] = tot if sign * tot > 0.0 else sign * sw
    par[1] = xc
    par[2] = yc
    par[3] = length
    par[4] = theta


def _fit_trails(
    img, var, mask, badbits, sigma, centre, sign, boxes, max_iter, tol, out, cov
):  # fmt: skip
    """Fit one trailed source per row of ``centre`` (x, y start) over ``boxes[n]``.

    Levenberg-Marquardt (Marquardt's diagonal scaling, lambda x10 on a rejected step, /10 on
    an accepted one): the point-source end of the family is a saddle in (L, theta) where Gauss
    Newton steps are undefined.  Converged when chi^2 falls by less than ``tol`` in an
    accepted step (chi^2 units: 1e-3 is far below the 1 that the errors are made of), or no
    step decreases it with lambda up to 1e10.  out[n] <- NOUT columns (see NOUT),
    cov[n] <- the parameter covariance (inverse Fisher matrix at the solution; NaN unless
    TRAIL_OK).  L is reported as |L| and theta folded into [0, pi).
    """
    nmat = np.empty((NPAR, NPAR))
    nmat_t = np.empty((NPAR, NPAR))  # the trial step's normal equations
    rhs_t = np.empty(NPAR)
    damped = np.empty((NPAR, NPAR))
    low = np.empty((NPAR, NPAR))
    inv = np.empty((NPAR, NPAR))
    rhs = np.empty(NPAR)
    scale = np.empty(NPAR)
    scratch = np.empty((2, NPAR))
    delta = np.empty(NPAR)
    par = np.empty(NPAR)
    trial = np.empty(NPAR)
    grad = np.empty(NPAR)
    for n in range(centre.shape[0]):
        box = boxes[n]
        for c in range(NOUT):
            out[n, c] = np.nan
        for p in range(NPAR):
            for q in range(NPAR):
                cov[n, p, q] = np.nan
        sg = sigma[n]
        _start(img, var, mask, badbits, box, sign[n], sg, centre[n, 0], centre[n, 1], par)
        chi2, ngood = trail_chi2(img, var, mask, badbits, box, par, sg, nmat, rhs, grad, True)
        code = TRAIL_NOT_CONVERGED
        niter = 0
        lam = 1e-3
        if ngood < NPAR + 1:
            code = TRAIL_NO_PIXELS
        else:
            while niter < max_iter:
                niter += 1
                accepted = False
                retry = False
                while lam <= 1e10:
                    for p in range(NPAR):
                        for q in range(NPAR):
                            damped[p, q] = nmat[p, q]
                        # Marquardt: damp by the diagonal, floored so that a zero column
                        # (theta at L = 0) is damped too.
                        damped[p, p] = nmat[p, p] * (1.0 + lam) + 1e-12 * (1.0 + nmat[p, p])
                    if _solve_scaled(damped, rhs, scale, low, scratch, delta, inv, False):
                        for p in range(NPAR):
                            trial[p] = par[p] + delta[p]
                        # A first trial with the gradient: most are accepted (2 in 3 on the
                        # 4k pair), and an accepted one's normal equations are then those of
                        # the next step (a second pass for them was ~30% of the fit; issue
                        # 17).  A retry (lambda raised) is accepted 2 times in 5: chi^2 alone,
                        # and the gradient pass only once it is.
                        c2, ngood_t = trail_chi2(img, var, mask, badbits, box, trial, sg,
                                                 nmat_t, rhs_t, grad, not retry)  # fmt: skip
                        if c2 <= chi2:
                            if retry:
                                c2, ngood_t = trail_chi2(img, var, mask, badbits, box, trial,
                                                         sg, nmat_t, rhs_t, grad, True)  # fmt: skip
                            accepted = True
                            break
                    retry = True
                    lam *= 10.0
                if not accepted:
                    code = TRAIL_OK
                    break
                drop = chi2 - c2
                for p in range(NPAR):
                    par[p] = trial[p]
                lam = max(lam / 10.0, 1e-7)
                if not (box[0] - 0.5 <= par[1] <= box[1] + 0.5
                        and box[2] - 0.5 <= par[2] <= box[3] + 0.5):  # fmt: skip
                    code = TRAIL_OUT_OF_BOUNDS
                    break
                chi2 = c2
                ngood = ngood_t
                for p in range(NPAR):
                    rhs[p] = rhs_t[p]
                    for q in range(NPAR):
                        nmat[p, q] = nmat_t[p, q]
                if drop < tol:
                    code = TRAIL_OK
                    break
        # chi2, ngood, nmat and rhs are those of ``par`` here (OK or not converged): the
        # errors below need no further pass.
        if code == TRAIL_OK:
            if _solve_scaled(nmat, rhs, scale, low, scratch, delta, inv, True):
                for p in range(NPAR):
                    out[n, NPAR + p] = math.sqrt(inv[p, p]) if inv[p, p] > 0.0 else np.nan
                    for q in range(NPAR):
                        cov[n, p, q] = inv[p, q]
            else:
                code = TRAIL_SINGULAR
        if par[3] < 0.0:
            # B is even in L: the same model, and the same errors.
            par[3] = -par[3]
            for q in range(NPAR):
                cov[n, 3, q] = -cov[n, 3, q]
                cov[n, q, 3] = -cov[n, q, 3]
        par[4] = par[4] % math.pi
        for p in range(NPAR):
            out[n, p] = par[p]
        out[n, 10] = code
        out[n, 11] = chi2
        out[n, 12] = ngood
        out[n, 13] = niter


_IMG = "{t}[:, ::1]"


def _sigs():
    return [
        f"void({_IMG.format(t=t)}, {_IMG.format(t=t)}, int32[:, ::1], int64, float64[::1], "
        "float64[:, ::1], float64[::1], int64[:, ::1], int64, float64, float64[:, ::1], "
        "float64[:, :, ::1])"
        for t in ("float32", "float64")
    ]


fit_trails = njit(_sigs())(_fit_trails)
