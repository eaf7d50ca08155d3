"""Full-frame element-wise passes of the pipeline, fused so each plane is read once.

On a 4k x 4k pair every NumPy expression over the planes is a 64-128 MB temporary; chains of
them (mask OR, finite checks, background subtraction, masking) cost more than the FFTs.
No checks here (diffstream.jitcore.background / diffstream.jitcore.masks check and allocate).
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = [
    "combine_masks", "combine_masks_hard", "input_counts", "rescale_by_map", "snr_plane",
    "sep_planes", "star_bad",
    "unusable_in_boxes", "unusable_pixels", "usable_pair", "usable_pair_zeroed",
]  # fmt: skip


@njit
def combine_masks(
    mask_a, mask_b, unusable, image_a, image_b, variance_a, variance_b, out_mask, out_bad
):
    """out_mask = a | b; out_bad = unusable bits set, or any plane value non-finite."""
    ny, nx = mask_a.shape
    for j in range(ny):
        for i in range(nx):
            m = mask_a[j, i] | mask_b[j, i]
            out_mask[j, i] = m
            out_bad[j, i] = (
                (m & unusable) != 0
                or not math.isfinite(image_a[j, i])
                or not math.isfinite(image_b[j, i])
                or not math.isfinite(variance_a[j, i])
                or not math.isfinite(variance_b[j, i])
            )


@njit
def combine_masks_hard(
    mask_a, mask_b, unusable, hard, image_a, image_b, variance_a, variance_b, out_mask,
    out_bad, out_hard,
):  # fmt: skip
    """combine_masks, and out_hard = ``hard`` bits set or any plane value non-finite, in the
    same pass (the pipeline's two bad maps: unusable, and no data)."""
    ny, nx = mask_a.shape
    inf = np.inf
    for j in range(ny):
        ma, mb, ia, ib = mask_a[j], mask_b[j], image_a[j], image_b[j]
        va, vb, om, ob, oh = variance_a[j], variance_b[j], out_mask[j], out_bad[j], out_hard[j]
        for i in range(nx):
            m = ma[i] | mb[i]
            om[i] = m
            # Branch-free (``&``, ``abs(x) < inf``: False for NaN and inf), not a chain of
            # ``or`` / isfinite (4k pair: 29 -> 23 ms, now bound by memory traffic).
            finite = (
                (abs(ia[i]) < inf) & (abs(ib[i]) < inf) & (abs(va[i]) < inf) & (abs(vb[i]) < inf)
            )
            ob[i] = ((m & unusable) != 0) | (not finite)
            oh[i] = ((m & hard) != 0) | (not finite)


@njit
def unusable_pixels(mask, badbits, image, variance, out):
    """out = any of ``badbits`` set, image non-finite, or variance not finite and > 0."""
    ny, nx = mask.shape
    for j in range(ny):
        for i in range(nx):
            v = variance[j, i]
            out[j, i] = (
                (mask[j, i] & badbits) != 0
                or not math.isfinite(image[j, i])
                or not (v > 0.0 and math.isfinite(v))
            )


@njit
def unusable_in_boxes(mask, badbits, image, variance, boxes, out):
    """:func:`unusable_pixels` over the windows ``boxes[n]`` = (x0, x1, y0, y1), inclusive
    and inside the image; ``out`` is left as it is elsewhere (the caller zeroes it)."""
    for n in range(boxes.shape[0]):
        for j in range(boxes[n, 2], boxes[n, 3] + 1):
            for i in range(boxes[n, 0], boxes[n, 1] + 1):
                v = variance[j, i]
                out[j, i] = (
                    (mask[j, i] & badbits) != 0
                    or not math.isfinite(image[j, i])
                    or not (v > 0.0 and math.isfinite(v))
                )


@njit(inline="always")
def _usable(bad, a, b, va, vb):
    """One pixel of :func:`usable_pair`: not bad, both values finite, both variances finite
    and >= 0 (the one statement of the test; usable_pair_zeroed shares it)."""
    return (
        not bad
        and math.isfinite(a)
        and math.isfinite(b)
        and va >= 0.0
        and vb >= 0.0
        and math.isfinite(va)
        and math.isfinite(vb)
    )


@njit
def usable_pair(bad, image_a, image_b, variance_a, variance_b, out):
    """out = not bad, both images finite, both variances finite and >= 0 (ZOGY's inputs)."""
    ny, nx = bad.shape
    for j in range(ny):
        for i in range(nx):
            out[j, i] = _usable(bad[j, i], image_a[j, i], image_b[j, i], variance_a[j, i],
                                variance_b[j, i])  # fmt: skip


@njit
def usable_pair_zeroed(bad, image_a, image_b, variance_a, variance_b, out,
                       image_a0, image_b0, variance_a0, variance_b0):  # fmt: skip
    """:func:`usable_pair`, and the four planes copied with 0 where ``out`` is False.

    Alard-Lupton's inputs (diffstream.jitcore.alardlupton): the convolutions and stamps read
    the zeroed copies.  One pass for the five of usable_pair and four np.where (~80 ms of
    a 4k run, issue 17).  Copies have the dtypes of their outputs.
    """
    ny, nx = bad.shape
    for j in range(ny):
        for i in range(nx):
            a = image_a[j, i]
            b = image_b[j, i]
            va = variance_a[j, i]
            vb = variance_b[j, i]
            g = _usable(bad[j, i], a, b, va, vb)
            out[j, i] = g
            if g:
                image_a0[j, i] = a
                image_b0[j, i] = b
                variance_a0[j, i] = va
                variance_b0[j, i] = vb
            else:
                image_a0[j, i] = 0.0
                image_b0[j, i] = 0.0
                variance_a0[j, i] = 0.0
                variance_b0[j, i] = 0.0


@njit(error_model="numpy")
def rescale_by_map(rows, ky, ky1, ty, floor, outer_row, outer_col, j0, j1, score, variance):
    """Rows j0..j1-1: score /= m, variance *= m twice, with m the bilinear scale map
    (diffstream.jitcore.noisecorr.scale_map) made per pixel, never stored.

    m[j, i] = rows[ky[j], i] (1 - ty[j]) + rows[ky1[j], i] ty[j] in float32, raised to
    ``floor`` on the extrapolated rows (``outer_row``) and columns (``outer_col``): the same
    float32 operations as scale_map's NumPy bands, so the same values bit for bit."""
    one = np.float32(1.0)
    nx = score.shape[1]
    for j in range(j0, j1):
        a = rows[ky[j]]
        b = rows[ky1[j]]
        t = ty[j]
        u = one - t
        orow = outer_row[j]
        s_row, v_row = score[j], variance[j]
        for i in range(nx):
            f = a[i] * u + b[i] * t
            # Selects, not branches (with NumPy's error model, no division check either):
            # the loop vectorises.  The same values: the floor only where f < floor.
            low = floor if f < floor else f
            f = low if orow | outer_col[i] else f
            s_row[i] = s_row[i] / f
            v = v_row[i] * f
            v_row[i] = v * f


# NumPy's error model: x / 0 is inf or NaN as in NumPy, not a ZeroDivisionError (and the
# loop has no division check to branch on).
@njit(error_model="numpy")
def snr_plane(image, variance, bad, snr, valid):
    """snr = image / sqrt(variance) in float32 (NumPy's rounding: sqrt, then the quotient;
    every pixel, usable or not), valid = not bad, variance > 0, image finite (NaN variance
    fails ``> 0``); returns the number of valid pixels.  find_stars' inputs in one pass
    instead of eight (float32 planes)."""
    ny, nx = image.shape
    inf = np.inf
    n = 0
    for j in range(ny):
        img, var, b, out, ok_row = image[j], variance[j], bad[j], snr[j], valid[j]
        for i in range(nx):
            v = var[i]
            f = img[i]
            out[i] = f / np.sqrt(v)
            # ``&`` and ``abs(f) < inf`` (False for NaN and inf), not ``and`` / isfinite,
            # which branch: the loop stays branch-free.
            ok = (not b[i]) & (v > 0) & (abs(f) < inf)
            ok_row[i] = ok
            n += ok
    return n


@njit
def sep_planes(image, bad, variance, data, err):
    """data = 0 where bad else image; err = sqrt(variance) where not bad and variance > 0,
    else 1e30 (also where the float32 root is inf): jitcore.alstars' sep inputs (float32
    outputs) in one pass instead of six.  The root is of the float32 variance, as NumPy's
    ``np.sqrt(v, dtype=np.float32)``: a double root of a float32 rounds to the same float32."""
    ny, nx = image.shape
    inf = np.float32(np.inf)
    big = np.float32(1e30)
    zero = np.float32(0.0)
    for j in range(ny):
        img, b, var, d, e = image[j], bad[j], variance[j], data[j], err[j]
        for i in range(nx):
            v = var[i]
            d[i] = zero if b[i] else np.float32(img[i])
            r = np.float32(math.sqrt(np.float32(v))) if v > 0 else inf
            e[i] = big if (b[i] or not r < inf) else r


@njit
def star_bad(bad, image, variance, out):
    """out = bad, or image not finite, or variance not >= 0 (NaN included): the pixels a PSF
    star's stamp may not hold (jitcore.psfmeasure), in one pass instead of five."""
    ny, nx = bad.shape
    inf = np.inf
    for j in range(ny):
        b, img, var, o = bad[j], image[j], variance[j], out[j]
        for i in range(nx):
            # Branch-free (see snr_plane): NaN fails both ``abs(x) < inf`` and ``v >= 0``.
            o[i] = b[i] | (not abs(img[i]) < inf) | (not var[i] >= 0)


@njit
def input_counts(image, variance):
    """(pixels where image or variance is not finite, pixels whose variance is finite and
    < 0): a loaded exposure's two checks in one pass over both planes (float32/float64)."""
    ny, nx = image.shape
    inf = np.inf
    nonfinite = 0
    negative = 0
    for j in range(ny):
        img, var = image[j], variance[j]
        for i in range(nx):
            v = var[i]
            fin_v = abs(v) < inf  # branch-free: False for NaN and inf
            nonfinite += not ((abs(img[i]) < inf) & fin_v)
            negative += fin_v & (v < 0)
    return nonfinite, negative
