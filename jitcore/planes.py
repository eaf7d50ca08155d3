"""The combined mask and the bad-pixel map of a science/template pair, in one pass."""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._kernels.planes import combine_masks
from diffstream.jitcore.masks import MASK_DTYPE

__all__ = ["combine_planes"]


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
    planes = (science_mask, template_mask, science_image, template_image,
              science_variance, template_variance)  # fmt: skip
    shape = np.shape(science_mask)
    if len(shape) != 2:
        raise ValueError(f"masks must be 2-D, got shape {shape}")
    for p in planes:
        if np.shape(p) != shape:
            raise ValueError(f"all planes must have shape {shape}, got {np.shape(p)}")
    if isinstance(unusable, bool) or not isinstance(unusable, int | np.integer):
        raise TypeError(f"unusable must be an int bit mask, got {type(unusable).__name__}")
    if not 0 <= int(unusable) < 1 << 31:
        raise ValueError(f"unusable must be in [0, 2**31), got {unusable}")
    ma = np.ascontiguousarray(science_mask, dtype=MASK_DTYPE)
    mb = np.ascontiguousarray(template_mask, dtype=MASK_DTYPE)
    f32 = [np.ascontiguousarray(p, dtype=np.float32) for p in planes[2:]]
    mask = np.empty(shape, dtype=MASK_DTYPE)
    bad = np.empty(shape, dtype=np.bool_)
    combine_masks(ma, mb, np.int32(unusable), f32[0], f32[1], f32[2], f32[3], mask, bad)
    return mask, bad
