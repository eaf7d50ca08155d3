"""Mask plane conventions (LSST afw): bit indices and helpers.

Exposures carry an int32 mask and a ``{name: bit}`` mapping read from ``MP_<NAME>`` header
keywords; when a file does not name its planes we use LSST's default order below.
"""

from __future__ import annotations

import numpy as np

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


def bits(planes: dict[str, int], names: tuple[str, ...] | list[str]) -> int:
    """OR of the bit values of the named planes that exist in ``planes``."""
    value = 0
    for name in names:
        if name in planes:
            value |= 1 << planes[name]
    return value


def remap(mask: np.ndarray, src: dict[str, int], dst: dict[str, int]) -> np.ndarray:
    """Translate a mask from one plane mapping to another (planes missing in dst dropped)."""
    out = np.zeros(mask.shape, dtype=MASK_DTYPE)
    for name, sbit in src.items():
        if name in dst:
            out |= ((mask >> sbit) & 1).astype(MASK_DTYPE) << dst[name]
    return out
