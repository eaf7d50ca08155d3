"""Mask bit-plane loops for :func:`diffstream.jitcore.masks.remap`.  No checks here."""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = ["any_bits", "coverage_counts", "mark_bits", "remap_bytes", "value_range"]


@njit("boolean(int32[::1], int32)")
def any_bits(mask, bits):
    """True if some element of the flat ``mask`` has one of ``bits`` set (stops at the first)."""
    for k in range(mask.size):
        if mask[k] & bits:
            return True
    return False


@njit("int64(int32[::1], int32, boolean[::1])")
def mark_bits(mask, bits, out):
    """out[k] = (mask[k] & bits) != 0 over the flat ``mask``; returns how many are True."""
    n = 0
    for k in range(mask.size):
        hit = (mask[k] & bits) != 0
        out[k] = hit
        n += hit
    return n


@njit("UniTuple(int64, 2)(int32[::1], int32, int32[::1], int32)")
def coverage_counts(template, tbits, science, sbits):
    """(pixels with no ``sbits`` in ``science``, those of them with no ``tbits`` in
    ``template``) over the flat masks, in one pass."""
    good = 0
    covered = 0
    for k in range(science.size):
        g = (science[k] & sbits) == 0
        good += g
        covered += g & ((template[k] & tbits) == 0)
    return good, covered


@njit("void(int32[::1], int32[:, ::1], int32[::1])")
def remap_bytes(mask, lut, out):
    """out = OR over the 4 bytes b of each value of lut[b, byte b]: any bit permutation.

    ``lut[b, v]`` is the output for byte ``b`` (bits 8b .. 8b + 7) equal to ``v``; four
    lookups per pixel replace one shift/and/or pass over the image per plane.
    """
    for k in range(mask.size):
        v = mask[k]
        out[k] = (
            lut[0, v & 0xFF]
            | lut[1, (v >> 8) & 0xFF]
            | lut[2, (v >> 16) & 0xFF]
            | lut[3, (v >> 24) & 0xFF]
        )


@njit
def value_range(a):
    """(min, max) of the non-empty 2-D integer array ``a`` (any layout), as int64."""
    lo = np.int64(a[0, 0])
    hi = lo
    for j in range(a.shape[0]):
        for i in range(a.shape[1]):
            v = np.int64(a[j, i])
            lo = min(lo, v)
            hi = max(hi, v)
    return lo, hi
