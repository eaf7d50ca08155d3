"""Sky background and its RMS from a mesh of boxes (SExtractor's method, via sep).

sep is a compiled library, not a file or network touch, so it belongs in jitcore.  It wants
C-contiguous native-endian arrays; FITS data arrive big-endian, and a wrong byte order would
give garbage rather than an error, so the copy to native float64 happens here, once.
"""

from __future__ import annotations

import numpy as np
import sep

__all__ = ["estimate_background"]


def estimate_background(
    image: np.ndarray,
    mask_bool: np.ndarray | None = None,
    *,
    box: int = 128,
    filter_size: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(background, rms)``, float64 arrays of the image's shape.

    ``mask_bool`` (True = ignore) excludes pixels from the statistics; non-finite image
    pixels are always excluded (sep would otherwise propagate NaN into whole boxes).
    ``box`` is the mesh size in pixels, shrunk to the image size for small images;
    ``filter_size`` the median filter over the mesh (odd, in boxes).
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"image must not be empty, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"image must be a real numeric array, got dtype {arr.dtype}")
    if box < 1:
        raise ValueError(f"box must be >= 1 pixel, got {box}")
    if filter_size < 1 or filter_size % 2 == 0:
        raise ValueError(f"filter_size must be odd and >= 1, got {filter_size}")
    # Always a copy: masked pixels are zeroed below and the caller's array must not change.
    data = np.array(arr, dtype=np.float64, order="C", copy=True)
    bad = ~np.isfinite(data)
    if mask_bool is not None:
        mb = np.asarray(mask_bool)
        if mb.shape != data.shape:
            raise ValueError(f"mask_bool shape {mb.shape} != image shape {data.shape}")
        bad |= mb.astype(bool)
    if bad.all():
        raise ValueError("every pixel is masked or non-finite: no background can be estimated")
    if bad.any():
        data[bad] = 0.0
    ny, nx = data.shape
    bkg = sep.Background(
        data,
        mask=np.ascontiguousarray(bad, dtype=np.uint8),
        bw=int(min(box, nx)),
        bh=int(min(box, ny)),
        fw=filter_size,
        fh=filter_size,
    )
    return np.asarray(bkg.back(), dtype=np.float64), np.asarray(bkg.rms(), dtype=np.float64)
