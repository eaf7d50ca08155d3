"""Sky background and its RMS from a mesh of boxes (SExtractor's method, via sep).

sep is a compiled library, not a file or network touch, so it belongs in jitcore.  It wants
C-contiguous native-endian arrays; FITS data arrive big-endian, and a wrong byte order would
give garbage rather than an error, so the copy to native float64 happens here, once.
"""

from __future__ import annotations

import numpy as np
import sep

from jitcore._kernels.planes import subtract_masked

__all__ = ["estimate_background", "subtract_background"]


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


def subtract_background(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    *,
    box: int = 128,
    filter_size: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """``(image - background, variance)`` as new float32 arrays, bad pixels 0 and NaN.

    The pipeline's form of :func:`estimate_background`: the same sep mesh, but no float64
    copy, no RMS map, and the subtraction and masking fused into one pass (on a 4k x 4k
    image those full-frame passes cost ~10x sep's own mesh).  ``bad`` (bool, True = ignore)
    must cover every non-finite pixel of ``image`` and ``variance``.
    """
    img = np.asarray(image)
    var = np.asarray(variance)
    mask = np.asarray(bad)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {img.shape}")
    if var.shape != img.shape or mask.shape != img.shape:
        raise ValueError(
            f"shapes differ: image {img.shape}, variance {var.shape}, bad {mask.shape}"
        )
    if mask.dtype != np.bool_:
        raise TypeError(f"bad must be a bool array, got dtype {mask.dtype}")
    if box < 1:
        raise ValueError(f"box must be >= 1 pixel, got {box}")
    if filter_size < 1 or filter_size % 2 == 0:
        raise ValueError(f"filter_size must be odd and >= 1, got {filter_size}")
    if mask.all():
        raise ValueError("every pixel is masked or non-finite: no background can be estimated")
    img32 = np.ascontiguousarray(img, dtype=np.float32)
    var32 = np.ascontiguousarray(var, dtype=np.float32)
    mask_c = np.ascontiguousarray(mask)
    ny, nx = img32.shape
    # sep skips masked pixels, so the NaNs under ``bad`` never enter a box's statistics.
    bkg = sep.Background(
        img32, mask=mask_c.view(np.uint8), bw=int(min(box, nx)), bh=int(min(box, ny)),
        fw=filter_size, fh=filter_size,
    )  # fmt: skip
    back = bkg.back(dtype=np.float32)
    out_img = np.empty_like(img32)
    out_var = np.empty_like(var32)
    subtract_masked(img32, var32, back, mask_c, out_img, out_var)
    return out_img, out_var
