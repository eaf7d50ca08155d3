"""Sky background and its RMS from a mesh of boxes (SExtractor's method, as sep does it).

The mesh, its median filter and the cubic interpolation are our Numba kernels
(diffstream.jitcore._kernels.background), written to reproduce sep's maps, quirks included (see that
module), to float rounding.  sep itself did the same work until it was replaced because it
holds the GIL: the science and template backgrounds could not run on two threads, and on
a 4k x 4k float32 frame its mesh plus the full-frame ``back()`` array cost ~2x our whole
:func:`subtract_background`.  tests/unit/test_background.py compares with sep (still a test
dependency) on seeded star fields.

The kernels take C-contiguous native-endian float32 or float64; FITS data arrive
big-endian, and a wrong byte order would give garbage rather than an error, so the
conversion happens here.
"""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._kernels.background import (
    NMAXLEVELS,
    background_map,
    fill_mesh,
    median_filter_mesh,
    mesh_stats,
    spline_y_derivs,
    subtract_rows,
)

__all__ = ["estimate_background", "subtract_background"]


def _mesh(
    data: np.ndarray, bad: np.ndarray, box: int, filter_size: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(bw, bh, back, dback, sigma, dsigma)``: the filtered mesh and its y derivatives."""
    ny, nx = data.shape
    bw = int(min(box, nx))
    bh = int(min(box, ny))
    nbx = (nx - 1) // bw + 1
    nby = (ny - 1) // bh + 1
    raw_back = np.empty((nby, nbx))
    raw_sigma = np.empty((nby, nbx))
    buf = np.empty(bh * nbx * bw, data.dtype)
    idx = np.empty(bw * bh, np.int32)
    hist = np.empty(NMAXLEVELS + 1, np.int64)
    mesh_stats(data, bad, bw, bh, buf, idx, hist, raw_back, raw_sigma)
    filled_back = np.empty_like(raw_back)
    filled_sigma = np.empty_like(raw_sigma)
    fill_mesh(raw_back, raw_sigma, filled_back, filled_sigma)
    back = np.empty_like(raw_back)
    sigma = np.empty_like(raw_sigma)
    window = np.empty(filter_size * filter_size)
    median_filter_mesh(filled_back, filled_sigma, filter_size, filter_size, window, back, sigma)
    col, dcol, u = np.empty(nby), np.empty(nby), np.empty(nby)
    dback = np.empty_like(back)
    dsigma = np.empty_like(sigma)
    spline_y_derivs(back, col, dcol, u, dback)
    spline_y_derivs(sigma, col, dcol, u, dsigma)
    return bw, bh, back, dback, sigma, dsigma


def estimate_background(
    image: np.ndarray,
    mask_bool: np.ndarray | None = None,
    *,
    box: int = 128,
    filter_size: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(background, rms)``, float64 arrays of the image's shape.

    ``mask_bool`` (True = ignore) excludes pixels from the statistics; non-finite image
    pixels are always excluded (one NaN would otherwise spoil a whole box).
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
    # float32 stays float32 (no 2x larger copy); anything else, byte-swapped float32
    # included, becomes native float64.  The kernels only read it: the caller's array is
    # never changed.
    dtype = np.float32 if arr.dtype.type is np.float32 else np.float64
    data = np.ascontiguousarray(arr, dtype=dtype)
    bad = ~np.isfinite(data)
    if mask_bool is not None:
        mb = np.asarray(mask_bool)
        if mb.shape != data.shape:
            raise ValueError(f"mask_bool shape {mb.shape} != image shape {data.shape}")
        bad |= mb.astype(bool)
    if bad.all():
        raise ValueError("every pixel is masked or non-finite: no background can be estimated")
    bw, bh, back, dback, sigma, dsigma = _mesh(data, bad, box, filter_size)
    u, node, dnode = (np.empty(back.shape[1]) for _ in range(3))
    out_back = np.empty(data.shape)
    out_rms = np.empty(data.shape)
    background_map(back, dback, bw, bh, u, node, dnode, out_back)
    background_map(sigma, dsigma, bw, bh, u, node, dnode, out_rms)
    return out_back, out_rms


def subtract_background(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    *,
    box: int = 128,
    filter_size: int = 3,
    overwrite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(image - background, variance)`` as new float32 arrays, bad pixels 0 and NaN.

    ``overwrite``: write the result into ``image`` and ``variance`` themselves when they are
    writeable C-contiguous float32 arrays (otherwise into new ones, as without it) and return
    them; for a caller that owns both planes (the pipeline's calibrated copies: two 64 MB
    planes fewer at 4k).  The kernel reads each pixel before writing it, so the result is the
    same bit for bit (tests/unit/test_pipeline_planes.py).

    The pipeline's form of :func:`estimate_background`: the same mesh, but no float64
    copy, no RMS map, and the background evaluated row by row inside the one pass that
    subtracts and masks (on a 4k x 4k image each full-frame pass costs about as much as
    the whole mesh).  ``bad`` (bool, True = ignore) must cover every non-finite pixel of
    ``image`` and ``variance``.  Safe to call from several threads at once: the kernels
    release the GIL.
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
    # The mesh skips pixels under ``bad`` (and any non-finite one), so NaNs never enter a
    # box's statistics.
    bw, bh, back, dback, _, _ = _mesh(img32, mask_c, box, filter_size)
    u, node, dnode = (np.empty(back.shape[1]) for _ in range(3))
    row = np.empty(img32.shape[1])
    reuse = overwrite and img32 is img and var32 is var
    out_img = img32 if reuse and img32.flags.writeable else np.empty_like(img32)
    out_var = var32 if reuse and var32.flags.writeable else np.empty_like(var32)
    subtract_rows(img32, var32, mask_c, back, dback, bw, bh, u, node, dnode, row, out_img,
                  out_var)  # fmt: skip
    return out_img, out_var
