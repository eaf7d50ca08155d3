"""The combined mask and the bad-pixel map of a science/template pair, in one pass."""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._kernels.planes import combine_masks, combine_masks_hard
from diffstream.jitcore._kernels.planes import input_counts as _input_counts
from diffstream.jitcore.masks import MASK_DTYPE

__all__ = ["combine_planes", "combine_planes_hard", "input_counts", "native_float"]


def combine_planes(
    science_mask: np.ndarray,
    template_mask: np.ndarray,
    unusable: int,
    science_image: np.ndarray,
    template_image: np.ndarray,
    science_variance: np.ndarray,
    template_variance: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, bad)``: the OR of both int32 masks, and True where an ``unusable`` bit is set
    or any of the four planes is non-finite (what ZOGY, PSFs and backgrounds must ignore).

    Both masks must already use one plane layout (diffstream.jitcore.masks.remap).
    """
    ma, mb, f32 = _checked(science_mask, template_mask, unusable, science_image,
                           template_image, science_variance, template_variance)  # fmt: skip
    mask = np.empty(ma.shape, dtype=MASK_DTYPE)
    bad = np.empty(ma.shape, dtype=np.bool_)
    combine_masks(ma, mb, np.int32(unusable), f32[0], f32[1], f32[2], f32[3], mask, bad)
    return mask, bad


def combine_planes_hard(
    science_mask: np.ndarray,
    template_mask: np.ndarray,
    unusable: int,
    hard: int,
    science_image: np.ndarray,
    template_image: np.ndarray,
    science_variance: np.ndarray,
    template_variance: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, bad, hard_bad)``: :func:`combine_planes` and the same bad map for the ``hard``
    bits, in one pass over the six planes instead of two (the pipeline's unusable and no-data
    maps: a 4k pass is ~80 ms)."""
    ma, mb, f32 = _checked(science_mask, template_mask, unusable, science_image,
                           template_image, science_variance, template_variance)  # fmt: skip
    _bits("hard", hard)
    mask = np.empty(ma.shape, dtype=MASK_DTYPE)
    bad = np.empty(ma.shape, dtype=np.bool_)
    hard_bad = np.empty(ma.shape, dtype=np.bool_)
    combine_masks_hard(ma, mb, np.int32(unusable), np.int32(hard), f32[0], f32[1], f32[2],
                       f32[3], mask, bad, hard_bad)  # fmt: skip
    return mask, bad, hard_bad


def _bits(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int bit mask, got {type(value).__name__}")
    if not 0 <= int(value) < 1 << 31:
        raise ValueError(f"{name} must be in [0, 2**31), got {value}")


def _checked(science_mask, template_mask, unusable, *images):
    planes = (science_mask, template_mask, *images)
    shape = np.shape(science_mask)
    if len(shape) != 2:
        raise ValueError(f"masks must be 2-D, got shape {shape}")
    for p in planes:
        if np.shape(p) != shape:
            raise ValueError(f"all planes must have shape {shape}, got {np.shape(p)}")
    _bits("unusable", unusable)
    ma = np.ascontiguousarray(science_mask, dtype=MASK_DTYPE)
    mb = np.ascontiguousarray(template_mask, dtype=MASK_DTYPE)
    f32 = [np.ascontiguousarray(p, dtype=np.float32) for p in planes[2:]]
    return ma, mb, f32


def native_float(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous native-endian float array: itself when it already is one
    (float32 stays float32: no image-sized copy), else a float64 copy."""
    a = np.asarray(a)
    if a.dtype in (np.float32, np.float64) and a.dtype.isnative:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a, dtype=np.float64)


def input_counts(image: np.ndarray, variance: np.ndarray) -> tuple[int, int]:
    """(pixels where ``image`` or ``variance`` is not finite, pixels whose variance is
    finite and negative), from one pass over the two planes: the loader's checks of an
    exposure (stream.io.fitsio).  2-D float32/float64 planes of one shape, any byte order
    and layout (others are converted first)."""
    img = native_float(np.asarray(image))
    var = native_float(np.asarray(variance))
    if img.ndim != 2 or var.shape != img.shape:
        raise ValueError(f"need 2-D image and variance of one shape, got {img.shape}, {var.shape}")
    n_nonfinite, n_negative = _input_counts(img, var)
    return int(n_nonfinite), int(n_negative)
