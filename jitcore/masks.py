"""Mask plane conventions (LSST afw): bit indices and helpers.

Exposures carry an int32 mask and a ``{name: bit}`` mapping read from ``MP_<NAME>`` header
keywords; when a file does not name its planes we use LSST's default order below.
"""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._kernels.bitplanes import any_bits, mark_bits, remap_bytes
from diffstream.jitcore._kernels.bitplanes import value_range as _value_range

MASK_DTYPE = np.int32

# LSST afw's default plane order.
DEFAULT_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}

# Pixels that must not be used as data in the subtraction (filled/zero-weighted there).
UNUSABLE_PLANES = ("BAD", "SAT", "CR", "EDGE", "NO_DATA")

# Defects repaired by interpolation before any convolution (diffstream.jitcore.interpolate);
# a repaired pixel keeps its plane and gains INTERPOLATED_PLANE.  SAT is not among them: a
# saturated core filled from its wings underestimates the star by far more than the other
# image's noise, so it would not cancel; it stays unusable (flagged pixelFlags_saturated).
INTERPOLATE_PLANES = ("BAD", "CR")
INTERPOLATED_PLANE = "INTRP"


def bits(planes: dict[str, int], names: tuple[str, ...] | list[str]) -> int:
    """OR of the bit values of the named planes that exist in ``planes``."""
    value = 0
    for name in names:
        if name in planes:
            value |= 1 << planes[name]
    return value


MAX_PLANE = (
    30  # bit 31 is the sign bit of the int32 mask (diffstream.stream.io.fitsio allows 0..30)
)


def with_planes(planes: dict[str, int], names: tuple[str, ...]) -> dict[str, int]:
    """``planes`` plus each missing name at the lowest free bit (a new dict; unchanged if none).

    Raises ValueError when no bit in 0..MAX_PLANE is free.
    """
    out = dict(planes)
    for name in names:
        if name in out:
            continue
        used = set(out.values())
        free = [b for b in range(MAX_PLANE + 1) if b not in used]
        if not free:
            raise ValueError(f"no free mask bit for plane {name!r}: all 0..{MAX_PLANE} used")
        out[name] = free[0]
    return out


def _plane_bits(name: str, planes: dict[str, int]) -> None:
    for plane, bit in planes.items():
        if isinstance(bit, bool) or not isinstance(bit, int | np.integer):
            raise TypeError(f"{name} plane {plane!r} must map to an int bit, got {bit!r}")
        if not 0 <= bit <= MAX_PLANE:
            raise ValueError(f"{name} plane {plane!r} bit must be in 0..{MAX_PLANE}, got {bit}")


def has_bits(mask: np.ndarray, value: int) -> tuple[np.ndarray, int]:
    """(``(mask & value) != 0`` as a bool plane of ``mask``'s shape, how many it marks).

    One pass over an int32 mask; the NumPy form makes an int32 temporary (64 MB at 4k) and
    the count reads the plane once more (issue 17: the defect step on frames with none).
    Other integer masks go through NumPy.
    """
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"mask must have an integer dtype, got {mask.dtype}")
    if mask.dtype != MASK_DTYPE or not -(2**31) <= value < 2**31:
        hit = (mask & value) != 0
        return hit, int(hit.sum())
    flat = np.ascontiguousarray(mask).reshape(-1)
    out = np.empty(mask.shape, dtype=bool)
    n = mark_bits(flat, np.int32(value), out.reshape(-1))
    return out, int(n)


def remap(mask: np.ndarray, src: dict[str, int], dst: dict[str, int]) -> np.ndarray:
    """Translate a mask from one plane mapping to another (planes missing in dst dropped).

    Bits that no plane of ``src`` names are dropped too.  Returns an int32 array; when the
    translation changes nothing (every src plane has the same bit in dst and no other bit
    is set) that is ``mask`` itself, not a copy: the usual case, both exposures using
    LSST's default planes, then costs one read of the mask instead of a new 64 MB array
    at 4k x 4k.  Masks of another integer dtype must hold values in [0, 2**31).
    """
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"mask must have an integer dtype, got {mask.dtype}")
    _plane_bits("src", src)
    _plane_bits("dst", dst)
    if mask.dtype != MASK_DTYPE:
        if mask.size and (mask.min() < 0 or mask.max() > 2**31 - 1):
            rng = f"[{mask.min()}, {mask.max()}]"
            raise ValueError(f"mask values must fit int32 bit planes, got range {rng}")
        mask = mask.astype(MASK_DTYPE)
    mask = np.ascontiguousarray(mask)
    flat = mask.reshape(-1)
    named = 0
    for bit in src.values():
        named |= 1 << bit
    if all(dst.get(name) == bit for name, bit in src.items()):
        # Identity on every named plane: only stray (unnamed) bits could change.
        if not any_bits(flat, np.int32(~named)):
            return mask
    # Any other translation is a bit permutation with drops: a lookup per byte.
    lut = np.zeros((4, 256), dtype=np.int64)
    values = np.arange(256)
    for name, sbit in src.items():
        if name in dst:
            lut[sbit // 8] |= ((values >> (sbit % 8)) & 1) << dst[name]
    out = np.empty(mask.shape, dtype=MASK_DTYPE)
    remap_bytes(flat, lut.astype(MASK_DTYPE), out.reshape(-1))
    return out


def value_range(mask: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty 2-D integer array (a mask, or a window of one: any layout).

    One Numba call: NumPy's ``min()`` and ``max()`` were ~6 us of each alert cutout's ~25
    (stream.alerts.cutouts picks a mask's FITS type from them)."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype.kind not in "iu":
        got = getattr(mask, "dtype", type(mask).__name__)
        raise TypeError(f"mask must be a 2-D integer array, got {got}")
    if mask.size == 0:
        raise ValueError("mask must not be empty")
    if mask.dtype == np.uint64:  # beyond int64: NumPy's own
        return int(mask.min()), int(mask.max())
    lo, hi = _value_range(mask)
    return int(lo), int(hi)
