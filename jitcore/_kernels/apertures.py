"""sep's sub-sampled circular apertures (``sum_circle``, ``flux_radius``, ``winpos``), without
the GIL.

No checks here (diffstream.jitcore.photometry checks and allocates).  These are sep 1.4.1's
``sep_sum_circle`` (src/aperture.i), ``sep_flux_radius`` and ``sep_windowed``
(src/aperture.c) operation for operation: the same box, the same annuli of sub-sampled
boundary pixels, the same float32 pixel values (sep converts every input to its float
PIXTYPE), the same sums in the same order, so the results are sep's to the last bit in
practice (tests/unit/test_apertures.py compares them).  Why: sep holds the GIL for the
whole call, so the PSF step's science and template halves, each ~3,700 flux radii on a 4k
frame, ran one after the other on two cores (issue 17).  Only what the pipeline uses is
here: a bool mask (True = masked, sep's ``maskthresh=0``), no segmentation map, no gain,
``subpix >= 1`` (exact overlap is ``subpix=0``: jitcore/photometry.py keeps sep for it).

Flags are sep's: :data:`APER_TRUNC` (the box was cut by the image edge) and
:data:`APER_HASMASKED` (a masked pixel lies within the aperture's outer annulus).
The error model is NumPy's so that sep's divisions by a zero unmasked area give its inf/NaN.
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = [
    "APER_HASMASKED",
    "APER_TRUNC",
    "FLUX_RADIUS_BINS",
    "flux_radius",
    "sum_circle",
    "winpos",
]

APER_TRUNC = 0x0010
APER_HASMASKED = 0x0020
FLUX_RADIUS_BINS = 64  # sep's FLUX_RADIUS_BUFSIZE: annuli out to rmax


@njit(error_model="numpy")
def _box(x, y, r, w, h):
    """sep's boxextent: [xmin, xmax) x [ymin, ymax) holding the circle, and TRUNC if cut.

    C's (int64_t) cast truncates toward zero, as Numba's int() of a float does."""
    xmin = int(x - r + 0.5)
    xmax = int(x + r + 1.4999999)
    ymin = int(y - r + 0.5)
    ymax = int(y + r + 1.4999999)
    flag = 0
    if xmin < 0:
        xmin = 0
        flag |= APER_TRUNC
    if xmax > w:
        xmax = w
        flag |= APER_TRUNC
    if ymin < 0:
        ymin = 0
        flag |= APER_TRUNC
    if ymax > h:
        ymax = h
        flag |= APER_TRUNC
    return xmin, xmax, ymin, ymax, flag


@njit(error_model="numpy")
def _annuli(r):
    """(r^2, r_in^2, r_out^2) of sep's circle of radius ``r``: pixels whose centre is nearer
    than r_in lie wholly inside, farther than r_out wholly outside, and those between are
    sub-sampled (0.7072: half a pixel's diagonal, rounded up as sep has it)."""
    r_in = r - 0.7072
    r_in2 = r_in * r_in if r_in > 0.0 else 0.0
    r_out2 = (r + 0.7072) * (r + 0.7072)
    return r * r, r_in2, r_out2


@njit(error_model="numpy")
def _fill_steps(subpix, acc):
    """acc[n] <- scale^2 added n times to 0.0, one addition at a time, as sep accumulates a
    pixel's overlap (so a count of sub-samples gives sep's overlap to the bit)."""
    scale = 1.0 / subpix
    scale2 = scale * scale
    acc[0] = 0.0
    for n in range(1, subpix * subpix + 1):
        acc[n] = acc[n - 1] + scale2


@njit(error_model="numpy")
def _overlap(dx, dy, r2, subpix, xs, acc):
    """sep's sub-sampled overlap of the pixel at offset (dx, dy) with the circle r^2 = r2:
    the same sub-sample coordinates (repeated additions of 1/subpix from the first one) and
    the same test, but the column coordinates are made once per pixel instead of once per
    sub-row, and the inside ones counted (a loop LLVM vectorises) instead of adding the
    overlap sub-sample by sub-sample (a chain of dependent additions): winpos's 11 x 11
    sub-samples ran 1.5x faster (at sum_circle's 5 x 5 it was slower, so that one keeps
    sep's loop).  ``xs``: (subpix,) scratch; ``acc``: :func:`_fill_steps`'s table."""
    scale = 1.0 / subpix
    offset = 0.5 * (scale - 1.0)
    dx += offset
    dy += offset
    for sx in range(subpix):
        xs[sx] = dx
        dx += scale
    n = 0
    for _sy in range(subpix):
        dy2 = dy * dy
        for sx in range(subpix):
            n += 1 if xs[sx] * xs[sx] + dy2 < r2 else 0
        dy += scale
    return acc[n]


@njit(error_model="numpy")
def sum_circle(data, var, mask, x, y, r, subpix, out_sum, out_err, out_flag):
    """out_sum/out_err/out_flag[i] <- sep.sum_circle(data, x, y, r, var=var, mask=mask,
    subpix=subpix)[:][i] (the masked area is made up: sum and variance scaled by
    total / unmasked area, NaN when nothing is unmasked)."""
    h, w = data.shape
    scale = 1.0 / subpix
    scale2 = scale * scale
    offset = 0.5 * (scale - 1.0)
    for i in range(x.shape[0]):
        xi = x[i]
        yi = y[i]
        ri = r[i]
        r2, r_in2, r_out2 = _annuli(ri)
        xmin, xmax, ymin, ymax, flag = _box(xi, yi, ri, w, h)
        tv = 0.0
        sigtv = 0.0
        totarea = 0.0
        maskarea = 0.0
        for iy in range(ymin, ymax):
            for ix in range(xmin, xmax):
                dx = ix - xi
                dy = iy - yi
                rpix2 = dx * dx + dy * dy
                if rpix2 < r_out2:
                    if rpix2 > r_in2:  # might be partly inside: sub-sample
                        dx += offset
                        dy += offset
                        overlap = 0.0
                        for _sy in range(subpix):
                            dx1 = dx
                            dy2 = dy * dy
                            for _sx in range(subpix):
                                if dx1 * dx1 + dy2 < r2:
                                    overlap += scale2
                                dx1 += scale
                            dy += scale
                    else:
                        overlap = 1.0
                    if mask[iy, ix]:
                        flag |= APER_HASMASKED
                        maskarea += overlap
                    else:
                        # float32 values, as sep's PIXTYPE converter reads them.
                        tv += np.float64(np.float32(data[iy, ix])) * overlap
                        sigtv += np.float64(np.float32(var[iy, ix])) * overlap
                    totarea += overlap
        tmp = totarea / (totarea - maskarea)
        tv *= tmp
        sigtv *= tmp
        out_sum[i] = tv
        out_err[i] = math.sqrt(sigtv)
        out_flag[i] = flag


@njit(error_model="numpy")
def flux_radius(data, mask, x, y, rmax, frac, subpix, out_r, out_flag, work):
    """out_r/out_flag[i] <- sep.flux_radius(data, x, y, rmax, frac, mask=mask,
    subpix=subpix)[:][i]: the radius enclosing ``frac`` of the flux within ``rmax[i]``,
    interpolated linearly between FLUX_RADIUS_BINS annuli.  ``work``: (3,
    FLUX_RADIUS_BINS) float64 scratch."""
    h, w = data.shape
    n = FLUX_RADIUS_BINS
    scale = 1.0 / subpix
    scale2 = scale * scale
    offset = 0.5 * (scale - 1.0)
    total = work[0]
    area = work[1]
    maskarea = work[2]
    for i in range(x.shape[0]):
        xi = x[i]
        yi = y[i]
        rm = rmax[i]
        for j in range(n):
            total[j] = 0.0
            area[j] = 0.0
            maskarea[j] = 0.0
        r_out = rm + 1.5  # sep's margin for the interpolation
        r_out2 = r_out * r_out
        step = rm / n
        stepdens = 1.0 / step
        prevbinmargin = 0.7072
        nextbinmargin = step - 0.7072
        xmin, xmax, ymin, ymax, flag = _box(xi, yi, r_out, w, h)
        for iy in range(ymin, ymax):
            for ix in range(xmin, xmax):
                dx = ix - xi
                dy = iy - yi
                rpix2 = dx * dx + dy * dy
                if rpix2 < r_out2:
                    pix = np.float64(np.float32(data[iy, ix]))
                    masked = mask[iy, ix]
                    if masked:
                        flag |= APER_HASMASKED
                    rpix = math.sqrt(rpix2)
                    d = np.fmod(rpix, step)  # C fmod: exact, as sep computes it
                    if d < prevbinmargin or d > nextbinmargin:  # near an annulus edge
                        dx += offset
                        dy += offset
                        for _sy in range(subpix):
                            dx1 = dx
                            dy2 = dy * dy
                            for _sx in range(subpix):
                                j = int(math.sqrt(dx1 * dx1 + dy2) * stepdens)
                                if j < n:
                                    if masked:
                                        maskarea[j] += scale2
                                    else:
                                        total[j] += scale2 * pix
                                    area[j] += scale2
                                dx1 += scale
                            dy += scale
                    else:
                        j = int(rpix * stepdens)
                        if j < n:
                            if masked:
                                maskarea[j] += 1.0
                            else:
                                total[j] += pix
                            area[j] += 1.0
        for j in range(n):  # masked area made up annulus by annulus
            total[j] *= 0.0 if area[j] == maskarea[j] else area[j] / (area[j] - maskarea[j])
        for j in range(1, n):
            total[j] += total[j - 1]
        target = frac * total[n - 1]
        # sep's inverse(): first annulus whose cumulative flux reaches the target, then
        # linear interpolation (annulus j's cumulative flux belongs to radius step (j + 1)).
        k = 0
        while k < n and total[k] < target:
            k += 1
        if k == 0:
            out_r[i] = 0.0 if (target <= 0.0 or total[0] == 0.0) else step * target / total[0]
        elif k == n:
            out_r[i] = rm
        else:
            out_r[i] = step * (k + (target - total[k - 1]) / (total[k] - total[k - 1]))
        out_flag[i] = flag


WINPOS_NITERMAX = 16  # sep's iteration limit
WINPOS_NSIG = 4.0  # window radius in sigmas
WINPOS_STEPMIN = 0.0001  # pixels: smaller steps end the iteration
WINPOS_FAC = 2.0  # centroid offset factor (2 for a Gaussian)


@njit(error_model="numpy")
def winpos(data, mask, x, y, sig, subpix, out_x, out_y, out_flag, xs, acc):
    """out_x/out_y/out_flag[i] <- sep.winpos(data, x, y, sig, mask=mask, subpix=subpix)
    (SExtractor's XWIN_IMAGE: iterated Gaussian-weighted centroid in a 4 sigma circle;
    masked pixels take the mean unmasked value; ``sig`` already raised to sep's minsig).
    ``xs``: (subpix,) and ``acc``: (subpix^2 + 1,) float64 scratch."""
    h, w = data.shape
    _fill_steps(subpix, acc)
    for i in range(x.shape[0]):
        xi = x[i]
        yi = y[i]
        si = sig[i]
        invtwosig2 = 1.0 / (2.0 * si * si)
        r = WINPOS_NSIG * si
        r2, r_in2, r_out2 = _annuli(r)
        flag = 0
        for _it in range(WINPOS_NITERMAX):
            xmin, xmax, ymin, ymax, bflag = _box(xi, yi, r, w, h)
            flag |= bflag  # sep never clears its flag between iterations
            tv = 0.0
            twv = 0.0
            totarea = 0.0
            maskarea = 0.0
            maskweight = 0.0
            dxpos = 0.0
            dypos = 0.0
            maskdxpos = 0.0
            maskdypos = 0.0
            for iy in range(ymin, ymax):
                for ix in range(xmin, xmax):
                    dx = ix - xi
                    dy = iy - yi
                    rpix2 = dx * dx + dy * dy
                    if rpix2 < r_out2:
                        if rpix2 > r_in2:
                            overlap = _overlap(dx, dy, r2, subpix, xs, acc)
                        else:
                            overlap = 1.0
                        pix = np.float64(np.float32(data[iy, ix]))
                        weight = math.exp(-rpix2 * invtwosig2)
                        if mask[iy, ix]:
                            flag |= APER_HASMASKED
                            maskarea += overlap
                            maskweight += overlap * weight
                            maskdxpos += overlap * weight * dx
                            maskdypos += overlap * weight * dy
                        else:
                            tv += pix * overlap
                            wpix = pix * overlap * weight
                            twv += wpix
                            dxpos += wpix * dx
                            dypos += wpix * dy
                        totarea += overlap
            tmp = tv / (totarea - maskarea)  # mean unmasked value stands in for the masked
            twv += tmp * maskweight
            dxpos += tmp * maskdxpos
            dypos += tmp * maskdypos
            if twv > 0.0:
                dxpos /= twv
                dypos /= twv
                xi += dxpos * WINPOS_FAC
                yi += dypos * WINPOS_FAC
            else:
                break
            if dxpos * dxpos + dypos * dypos < WINPOS_STEPMIN * WINPOS_STEPMIN:
                break
        out_x[i] = xi
        out_y[i] = yi
        out_flag[i] = flag
