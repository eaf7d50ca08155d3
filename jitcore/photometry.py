"""Helpers of diffstream.jitcore.measure: PSF stamps per source and circular-aperture photometry."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sep

from diffstream.jitcore._kernels import apertures as _ap
from diffstream.jitcore._kernels.planes import unusable_in_boxes, unusable_pixels
from diffstream.jitcore.psf import PsfModel

__all__ = [
    "APER_HASMASKED",
    "APER_TRUNC",
    "aperture_boxes",
    "aperture_flux",
    "distinct_stamps",
    "flux_radius",
    "stack_psfs",
    "sum_circle",
    "unusable_map",
    "winpos",
]

# sep's aperture flags, for the results of :func:`sum_circle` and :func:`flux_radius`.
APER_TRUNC = _ap.APER_TRUNC
APER_HASMASKED = _ap.APER_HASMASKED


def stack_psfs(
    psf_at: Callable[[float, float], np.ndarray], xs: np.ndarray, ys: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate ``psf_at`` at each position; return a (n, K, K) unit-sum cube and half-sizes.

    Stamps of different sizes are zero-padded to the largest (odd) size so the kernels see
    one array; ``halves[n]`` is the half-size of the stamp before padding.  A
    :meth:`PsfModel.at <diffstream.jitcore.psf.PsfModel.at>` is evaluated for all positions at once
    (:meth:`PsfModel.stack`); other callables once per position, each distinct stamp they
    return (e.g. one per ZOGY tile) checked and normalised once.
    """
    model = getattr(psf_at, "__self__", None)
    if isinstance(model, PsfModel) and getattr(psf_at, "__func__", None) is PsfModel.at:
        stamps = model.stack(xs, ys)
        sums = stamps.sum(axis=(1, 2))
        ok = np.isfinite(stamps).all(axis=(1, 2)) & (sums > 0)
        if not ok.all():  # the first offender, with the per-stamp message
            n = int(np.flatnonzero(~ok)[0])
            _check_stamp(stamps[n], name, xs[n], ys[n])
        halves = np.full(len(stamps), stamps.shape[1] // 2, dtype=np.int64)
        return stamps / sums[:, None, None], halves
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id -> (returned, normalised)
    normalised = []
    for x, y in zip(xs, ys, strict=True):
        stamp = psf_at(float(x), float(y))
        hit = seen.get(id(stamp))
        if hit is not None and hit[0] is stamp:
            normalised.append(hit[1])
            continue
        arr = np.asarray(stamp, dtype=np.float64)
        _check_stamp(arr, name, x, y)
        norm = arr / arr.sum()
        seen[id(stamp)] = (stamp, norm)  # keeps ``stamp`` alive, so its id stays unique
        normalised.append(norm)
    halves = np.array([s.shape[0] // 2 for s in normalised], dtype=np.int64)
    k = 2 * int(halves.max(initial=0)) + 1
    cube = np.zeros((len(normalised), k, k))
    for n, s in enumerate(normalised):
        pad = (k - s.shape[0]) // 2
        cube[n, pad : pad + s.shape[0], pad : pad + s.shape[0]] = s
    return cube, halves


def distinct_stamps(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(distinct, inverse)`` with ``cube == distinct[inverse]``, the distinct stamps of
    ``cube`` (n, K, K) in order of first appearance; None when all n are distinct.

    PSF_D is one stamp per ZOGY tile, so a 4k exposure's ~1300 sources share a few dozen:
    a per-stamp computation whose rows do not depend on each other runs once per distinct
    stamp, with the same results bit for bit.  Compared by their bytes (np.unique(axis=0)
    sorted the rows as void records: ~10x slower)."""
    first: dict[bytes, int] = {}
    inverse = np.array([first.setdefault(p.tobytes(), len(first)) for p in cube], np.int64)
    if len(first) == len(cube):
        return None
    keep = np.unique(inverse, return_index=True)[1]
    return np.ascontiguousarray(cube[keep]), inverse


def _check_stamp(arr: np.ndarray, name: str, x: float, y: float) -> None:
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] % 2 == 0:
        msg = f"{name}({x:.2f}, {y:.2f}) must return a square stamp of odd size, got {arr.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}({x:.2f}, {y:.2f}) returned non-finite pixels")
    total = arr.sum()
    if not total > 0:
        raise ValueError(f"{name}({x:.2f}, {y:.2f}) must have a positive sum, got {total:g}")


def unusable_map(
    mask: np.ndarray,
    badbits: int,
    image: np.ndarray,
    variance: np.ndarray,
    *,
    near: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """True where a pixel is masked by ``badbits``, non-finite, or has variance <= 0.

    ``near=(xs, ys, radius)``: only within the square around each circle that sep's aperture
    sums read (+1 px; non-finite circles read nothing), False elsewhere.  The full map is a
    pass over four frame-sized planes (~30-50 ms at 4k x 4k, twice per exposure), for a
    few thousand apertures of ~100 px: the zeroed map's untouched pages are never even
    mapped (issue 17; tests/unit/test_measure.py checks the sums agree with the full map).
    """
    # One fused pass (a chain of NumPy masks is ~10x slower at 4k x 4k).
    m = np.ascontiguousarray(mask)
    img = np.ascontiguousarray(image)
    var = np.ascontiguousarray(variance)
    if near is None:
        bad = np.empty(m.shape, dtype=np.bool_)
        unusable_pixels(m, m.dtype.type(badbits), img, var, bad)
        return bad
    bad = np.zeros(m.shape, dtype=np.bool_)
    unusable_in_boxes(m, m.dtype.type(badbits), img, var, aperture_boxes(*near, m.shape), bad)
    return bad


def aperture_boxes(
    xs: np.ndarray, ys: np.ndarray, radius: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """(n, 4) int64 windows (x0, x1, y0, y1, inclusive, clipped to ``shape``) holding every
    pixel that sep reads for a circle of ``radius`` at (x, y): its box runs from int(x - r +
    0.5) to int(x + r + 1.5) exclusive, inside floor(x - r) - 1 .. ceil(x + r) + 1.
    Circles with a non-finite value, which sep does not sum, and windows wholly off the
    image are dropped."""
    ny, nx = shape
    x = np.asarray(xs, dtype=np.float64).ravel()
    y = np.asarray(ys, dtype=np.float64).ravel()
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), x.shape)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(r)
    x, y, r = x[ok], y[ok], np.abs(r[ok])
    boxes = np.column_stack([
        np.floor(x - r) - 1, np.ceil(x + r) + 1, np.floor(y - r) - 1, np.ceil(y + r) + 1,
    ])  # fmt: skip
    inside = (boxes[:, 1] >= 0) & (boxes[:, 0] <= nx - 1) & (boxes[:, 3] >= 0)
    inside &= boxes[:, 2] <= ny - 1
    boxes = boxes[inside]
    boxes[:, :2] = np.clip(boxes[:, :2], 0, nx - 1)
    boxes[:, 2:] = np.clip(boxes[:, 2:], 0, ny - 1)
    return np.ascontiguousarray(boxes, dtype=np.int64)


def aperture_flux(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    badbits: int,
    xs: np.ndarray,
    ys: np.ndarray,
    radius: np.ndarray,
    *,
    bad: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum in circles with exact pixel overlap: (flux, err, truncated, masked, failed).

    ``bad``: :func:`unusable_map` of these planes, when the caller already has it; without
    it the map is made around these apertures only (``unusable_map(near=...)``).

    Unusable pixels (masked by ``badbits``, non-finite, variance <= 0) are excluded and sep
    scales the sum by total / unmasked area (``masked`` says it did).  ``failed`` when every
    pixel is unusable or the result is not finite.  Rejected: our own sub-sampled overlap in
    Numba; sep's exact circle/pixel overlap is already compiled, tested and vectorised over
    sources.
    """
    if bad is None:
        bad = unusable_map(mask, badbits, image, variance, near=(xs, ys, radius))
    elif bad.shape != np.shape(image) or bad.dtype != np.bool_:
        raise ValueError(f"bad must be a bool array of the image's shape, got {bad.dtype} "
                         f"{bad.shape}")  # fmt: skip
    flux, err, flag = sep.sum_circle(image, xs, ys, radius, var=variance, mask=bad, subpix=0)
    truncated = (flag & sep.APER_TRUNC) != 0
    masked = (flag & sep.APER_HASMASKED) != 0
    failed = ((flag & sep.APER_ALLMASKED) != 0) | ~np.isfinite(flux) | ~np.isfinite(err)
    flux = np.where(failed, np.nan, flux)
    err = np.where(failed, np.nan, err)
    return flux, err, truncated, masked, failed


def _aperture_inputs(
    data: np.ndarray, mask: np.ndarray, x, y, r, name: str, subpix: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked, C-contiguous inputs of the sub-sampled aperture kernels."""
    img = np.asarray(data)
    msk = np.asarray(mask)
    if img.ndim != 2 or img.dtype not in (np.float32, np.float64):
        raise TypeError(f"data must be a 2-D float32/float64 array, got {img.dtype} {img.shape}")
    if msk.shape != img.shape or msk.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array of data's shape {img.shape}, got "
                         f"{msk.dtype} {msk.shape}")  # fmt: skip
    if int(subpix) < 1:
        raise ValueError(f"subpix must be >= 1 (exact overlap: aperture_flux), got {subpix}")
    xs = np.ascontiguousarray(x, dtype=np.float64).ravel()
    ys = np.ascontiguousarray(y, dtype=np.float64).ravel()
    rs = np.ascontiguousarray(np.broadcast_to(np.asarray(r, dtype=np.float64), xs.shape))
    if ys.shape != xs.shape:
        raise ValueError(f"x and y differ in length: {xs.size} != {ys.size}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all() and np.isfinite(rs).all()):
        raise ValueError("x, y and the radii must be finite")
    if (rs < 0).any() or (name == "rmax" and (rs <= 0).any()):
        raise ValueError(f"{name} must be {'> 0' if name == 'rmax' else '>= 0'}")
    return np.ascontiguousarray(img), np.ascontiguousarray(msk), xs, ys, rs


def _overlap_scratch(subpix: int) -> tuple[np.ndarray, np.ndarray]:
    """The aperture kernels' scratch for a pixel's sub-sample coordinates and overlaps."""
    return np.empty(subpix), np.empty(subpix * subpix + 1)


def sum_circle(
    data: np.ndarray, variance: np.ndarray, mask: np.ndarray, x, y, r, *, subpix: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sep.sum_circle(data, x, y, r, var=variance, mask=mask, subpix=subpix)`` in Numba,
    without the GIL: (sum, err, flag) per circle, equal to sep's (diffstream.jitcore._kernels.
    apertures says how; ``mask`` bool, True = masked, whose area is made up by scaling).

    ``subpix`` >= 1 sub-samples boundary pixels subpix x subpix; values are read as float32,
    as sep does.  ``flag``: :data:`APER_TRUNC`, :data:`APER_HASMASKED`.
    """
    img, msk, xs, ys, rs = _aperture_inputs(data, mask, x, y, r, "r", subpix)
    var = np.ascontiguousarray(variance)
    if var.shape != img.shape or var.dtype not in (np.float32, np.float64):
        raise ValueError(f"variance must be a float32/float64 array of data's shape "
                         f"{img.shape}, got {var.dtype} {var.shape}")  # fmt: skip
    total = np.empty(xs.size)
    err = np.empty(xs.size)
    flag = np.empty(xs.size, dtype=np.int16)
    _ap.sum_circle(img, var, msk, xs, ys, rs, int(subpix), total, err, flag)
    return total, err, flag


def flux_radius(
    data: np.ndarray, mask: np.ndarray, x, y, rmax, frac: float, *, subpix: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """``sep.flux_radius(data, x, y, rmax, frac, mask=mask, subpix=subpix)`` in Numba,
    without the GIL: (radius, flag) per position, equal to sep's; the flux normalising
    ``frac`` is the sum within ``rmax`` (64 annuli, boundary pixels sub-sampled).

    Rejected: sep itself, which holds the GIL through the loop over positions (the PSF
    step's two images queued on it: issue 17).
    """
    img, msk, xs, ys, rs = _aperture_inputs(data, mask, x, y, rmax, "rmax", subpix)
    if not 0.0 <= float(frac) <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    radius = np.empty(xs.size)
    flag = np.empty(xs.size, dtype=np.int16)
    work = np.empty((3, _ap.FLUX_RADIUS_BINS))
    _ap.flux_radius(img, msk, xs, ys, rs, float(frac), int(subpix), radius, flag, work)
    return radius, flag


# sep.winpos's floor on the window: SExtractor's 0.5 px minimum half-light radius.
WINPOS_MINSIG = 2.0 / 2.35 * 0.5


def winpos(
    data: np.ndarray, mask: np.ndarray, x, y, sig, *, subpix: int = 11
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sep.winpos(data, x, y, sig, mask=mask, subpix=subpix)`` in Numba, without the GIL:
    windowed centroids (SExtractor's XWIN/YWIN) and flags, equal to sep's; ``sig`` below
    sep's minimum (0.5 px half-light radius) is raised to it, as sep does."""
    img, msk, xs, ys, sg = _aperture_inputs(data, mask, x, y, sig, "sig", subpix)
    sg = np.maximum(sg, WINPOS_MINSIG)
    out_x = np.empty(xs.size)
    out_y = np.empty(xs.size)
    flag = np.empty(xs.size, dtype=np.int16)
    sub = int(subpix)
    _ap.winpos(img, msk, xs, ys, sg, sub, out_x, out_y, flag, *_overlap_scratch(sub))
    return out_x, out_y, flag
