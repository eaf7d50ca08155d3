"""Per-source loops for detection refinement, adaptive moments, mask flags and sampling.

No checks here (jitcore.detect and jitcore.measure check and allocate).  Every batch kernel
loops over sources and writes one row of a caller-supplied ``out`` per source; sums are
accumulated in float64 whatever the image dtype.  Conventions (pixel centres, good pixels,
nearest pixel) are those of diffstream.jitcore._kernels.psffit, whose helpers are reused here.  The
PSF fits live there.
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit
from diffstream.jitcore._kernels.psffit import (
    _F8_1,
    _F8_2,
    _F8_3,
    _I8_1,
    _MASK,
    _good,
    _nearest,
    _sigs,
)

__all__ = [
    "SHAPE_OK",
    "adaptive_moments",
    "mask_or",
    "quadratic_sample",
    "refine_peaks",
    "stamp_adaptive_moments",
]

# Result codes of the adaptive moments (adaptive_moments out[:, 3]).
SHAPE_OK = 0
SHAPE_NO_PIXELS = 1
SHAPE_NOT_POSITIVE = 2
SHAPE_NOT_CONVERGED = 3
SHAPE_TOO_LARGE = 4
# Adaptive-moment weights exp(-q / 2) are cut to 0 beyond q = 60 (exp(-30) ~ 1e-13 of the
# peak), far below the double rounding of the sums they would join.
MOMENT_QMAX = 60.0


@njit
def _quadratic_3x3(z, coef):
    """Least-squares quadratic through a 3x3 patch, x, y in {-1, 0, 1}.

    coef <- (c0, bx, by, exy, dxx, dyy) of c0 + bx x + by y + exy x y + dxx (x^2 - 2/3)
    + dyy (y^2 - 2/3): that basis is orthogonal on the grid, so each coefficient is one sum.
    """
    for q in range(6):
        coef[q] = 0.0
    for b in range(3):
        for a in range(3):
            x = a - 1.0
            y = b - 1.0
            coef[0] += z[b, a] / 9.0
            coef[1] += x * z[b, a] / 6.0
            coef[2] += y * z[b, a] / 6.0
            coef[3] += x * y * z[b, a] / 4.0
            coef[4] += (x * x - 2.0 / 3.0) * z[b, a] / 2.0
            coef[5] += (y * y - 2.0 / 3.0) * z[b, a] / 2.0


def _refine_peaks(score, valid, px, py, sign, out):
    ny, nx = score.shape
    z = np.empty((3, 3))
    coef = np.empty(6)
    for n in range(px.shape[0]):
        i0 = px[n]
        j0 = py[n]
        out[n, 0] = i0
        out[n, 1] = j0
        if i0 < 1 or j0 < 1 or i0 > nx - 2 or j0 > ny - 2:
            continue
        ok = True
        for b in range(3):
            for a in range(3):
                v = sign[n] * score[j0 + b - 1, i0 + a - 1]
                if not (valid[j0 + b - 1, i0 + a - 1] and math.isfinite(v)):
                    ok = False
                z[b, a] = v
        if not ok:
            continue
        _quadratic_3x3(z, coef)
        bx = coef[1]
        by = coef[2]
        exy = coef[3]
        hxx = 2.0 * coef[4]  # Hessian of the fitted quadratic
        hyy = 2.0 * coef[5]
        det = hxx * hyy - exy * exy
        if hxx < 0.0 and det > 0.0:
            # Stationary point of a maximum: H d = -grad.
            dx = (-bx * hyy + by * exy) / det
            dy = (-by * hxx + bx * exy) / det
        else:
            # Not a 2-D maximum (noise, saddle): separable parabolas along each axis.
            cx = z[1, 0] - 2.0 * z[1, 1] + z[1, 2]
            cy = z[0, 1] - 2.0 * z[1, 1] + z[2, 1]
            dx = 0.5 * (z[1, 0] - z[1, 2]) / cx if cx < 0.0 else 0.0
            dy = 0.5 * (z[0, 1] - z[2, 1]) / cy if cy < 0.0 else 0.0
        # The peak pixel is the discrete maximum, so the true peak lies within half a pixel.
        out[n, 0] = i0 + min(0.5, max(-0.5, dx))
        out[n, 1] = j0 + min(0.5, max(-0.5, dy))


@njit
def _moments_one(img, var, mask, badbits, x, y, sgn, m0xx, m0yy, m0xy, half, max_iter, tol, res):
    """Adaptive (elliptical-Gaussian-weighted) second moments about a fixed centre.

    SDSS/Bernstein & Jarvis iteration: weight covariance M -> 2 x (weighted moments), whose
    fixed point is the source covariance for a Gaussian source.  The image is multiplied by
    ``sgn`` so that negative sources are measured like positive ones.  Weights beyond
    q = MOMENT_QMAX are 0 (and those pixels do not count as data).
    res <- (ixx, iyy, ixy, code).
    """
    ny, nx = img.shape
    cx = _nearest(x)
    cy = _nearest(y)
    mxx = m0xx
    myy = m0yy
    mxy = m0xy
    code = SHAPE_NOT_CONVERGED
    for _ in range(max_iter):
        det = mxx * myy - mxy * mxy
        if not (mxx > 0.0 and myy > 0.0 and det > 0.0):
            code = SHAPE_NOT_POSITIVE
            break
        # Inverse of the weight covariance.
        ixx = myy / det
        iyy = mxx / det
        ixy = -mxy / det
        s0 = 0.0
        sxx = 0.0
        syy = 0.0
        sxy = 0.0
        ngood = 0
        # Only the bounding box of the ellipse q <= MOMENT_QMAX (|dx| <= sqrt(QMAX mxx), same
        # in y) can carry weight: for a PSF-sized source that is ~15^2 pixels of the
        # (2 half + 1)^2 window (49^2 for a 25 px PSF stamp), ~4x less work at equal results.
        # (+2: the box is centred on the nearest pixel, not on (x, y).)
        hx = int(min(float(half), math.sqrt(MOMENT_QMAX * mxx) + 2.0))
        hy = int(min(float(half), math.sqrt(MOMENT_QMAX * myy) + 2.0))
        for j in range(max(cy - hy, 0), min(cy + hy + 1, ny)):
            dy = j - y
            for i in range(max(cx - hx, 0), min(cx + hx + 1, nx)):
                if not _good(img, var, mask, badbits, j, i):
                    continue
                dx = i - x
                q = ixx * dx * dx + 2.0 * ixy * dx * dy + iyy * dy * dy
                if q > MOMENT_QMAX:
                    continue
                wi = math.exp(-0.5 * q) * sgn * img[j, i]
                ngood += 1
                s0 += wi
                sxx += wi * dx * dx
                syy += wi * dy * dy
                sxy += wi * dx * dy
        if ngood == 0 or not s0 > 0.0:
            code = SHAPE_NO_PIXELS
            break
        nxx = 2.0 * sxx / s0
        nyy = 2.0 * syy / s0
        nxy = 2.0 * sxy / s0
        change = max(abs(nxx - mxx), abs(nyy - myy), abs(nxy - mxy))
        mxx = nxx
        myy = nyy
        mxy = nxy
        if not (mxx > 0.0 and myy > 0.0 and mxx * myy - mxy * mxy > 0.0):
            code = SHAPE_NOT_POSITIVE
            break
        if max(mxx, myy) > half * half:
            code = SHAPE_TOO_LARGE
            break
        if change < tol * (mxx + myy):
            code = SHAPE_OK
            break
    res[0] = mxx
    res[1] = myy
    res[2] = mxy
    res[3] = code


def _adaptive_moments(img, var, mask, badbits, xs, ys, sgn, m0, half, max_iter, tol, out):
    """Adaptive moments per source: out[n] <- (ixx, iyy, ixy, code)."""
    for n in range(xs.shape[0]):
        _moments_one(
            img, var, mask, badbits, xs[n], ys[n], sgn[n], m0[n, 0], m0[n, 1], m0[n, 2],
            half, max_iter, tol, out[n],
        )  # fmt: skip


def _stamp_adaptive_moments(psfs, max_iter, tol, out):
    """Adaptive moments of each PSF stamp about its centroid: out[n] <- (ixx, iyy, ixy, code)."""
    k = psfs.shape[1]
    h = k // 2
    var = np.ones((k, k))
    mask = np.zeros((k, k), dtype=np.int32)
    for n in range(psfs.shape[0]):
        s = 0.0
        sx = 0.0
        sy = 0.0
        for b in range(k):
            for a in range(k):
                s += psfs[n, b, a]
                sx += psfs[n, b, a] * a
                sy += psfs[n, b, a] * b
        xc = sx / s if s > 0.0 else float(h)
        yc = sy / s if s > 0.0 else float(h)
        _moments_one(psfs[n], var, mask, 0, xc, yc, 1.0, 1.0, 1.0, 0.0, h, max_iter, tol, out[n])


def _mask_or(mask, cx, cy, half, out):
    """OR of the mask over the clipped square of half-size half[n] and over the 3x3 centre.

    out[n] <- (region_or, centre_or).
    """
    ny, nx = mask.shape
    for n in range(cx.shape[0]):
        region = np.int32(0)
        for j in range(max(cy[n] - half[n], 0), min(cy[n] + half[n] + 1, ny)):
            for i in range(max(cx[n] - half[n], 0), min(cx[n] + half[n] + 1, nx)):
                region |= mask[j, i]
        centre = np.int32(0)
        for j in range(max(cy[n] - 1, 0), min(cy[n] + 2, ny)):
            for i in range(max(cx[n] - 1, 0), min(cx[n] + 2, nx)):
                centre |= mask[j, i]
        out[n, 0] = region
        out[n, 1] = centre


def _quadratic_sample(img, xs, ys, out):
    """Value at (x, y) of the least-squares quadratic through the 3x3 around the nearest pixel.

    Falls back to the nearest pixel near edges or non-finite neighbours; NaN off the image.
    """
    ny, nx = img.shape
    z = np.empty((3, 3))
    coef = np.empty(6)
    for n in range(xs.shape[0]):
        out[n] = np.nan
        if not (math.isfinite(xs[n]) and math.isfinite(ys[n])):
            continue
        i0 = _nearest(xs[n])
        j0 = _nearest(ys[n])
        if i0 < 0 or j0 < 0 or i0 >= nx or j0 >= ny:
            continue
        out[n] = img[j0, i0]
        if i0 < 1 or j0 < 1 or i0 > nx - 2 or j0 > ny - 2:
            continue
        ok = True
        for b in range(3):
            for a in range(3):
                z[b, a] = img[j0 + b - 1, i0 + a - 1]
                ok = ok and math.isfinite(z[b, a])
        if not ok:
            continue
        _quadratic_3x3(z, coef)
        fx = xs[n] - i0
        fy = ys[n] - j0
        out[n] = (
            coef[0] + coef[1] * fx + coef[2] * fy + coef[3] * fx * fy
            + coef[4] * (fx * fx - 2.0 / 3.0) + coef[5] * (fy * fy - 2.0 / 3.0)
        )  # fmt: skip


refine_peaks = njit(_sigs(f"void({{img}}, boolean[:, ::1], {_I8_1}, {_I8_1}, {_F8_1}, {_F8_2})"))(
    _refine_peaks
)
adaptive_moments = njit(
    _sigs(
        f"void({{img}}, {{img}}, {_MASK}, int64, {_F8_1}, {_F8_1}, {_F8_1}, {_F8_2}, int64, "
        f"int64, float64, {_F8_2})"
    )
)(_adaptive_moments)
stamp_adaptive_moments = njit(f"void({_F8_3}, int64, float64, {_F8_2})")(_stamp_adaptive_moments)
mask_or = njit(f"void({_MASK}, {_I8_1}, {_I8_1}, {_I8_1}, int64[:, ::1])")(_mask_or)
quadratic_sample = njit(_sigs(f"void({{img}}, {_F8_1}, {_F8_1}, {_F8_1})"))(_quadratic_sample)
