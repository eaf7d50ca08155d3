"""Source extraction: the one wrapper around sep, and the one star finder (issue 13).

Five modules called ``sep.extract`` each with its own buffer settings (detect, psfmeasure,
astrom, starmatch, alstars), and each rewrote sep's process-wide pixel-stack size while
other threads (science and template run side by side) were extracting.  Now:

* :func:`extract` is the only call of ``sep.extract`` in the package.  Every use passes
  its own configuration (threshold, noise, minimum area, filter, deblending); the buffer
  sizes sep keeps process-wide (``set_extract_pixstack``, ``set_sub_object_limit``) are set
  for the call and restored after it, under one lock, so a call never runs with another
  call's settings.  sep holds the GIL during extraction anyway (jitcore/background.py), so
  the lock serialises nothing that ran in parallel before.  A full pixel buffer is grown
  (x4, up to 2^26 pixels) and the extraction retried, instead of failing on a crowded field.
* :func:`find_stars` is the one star finder: the catalogue of the positive footprints of
  ``image / sqrt(variance) > threshold`` (a variance, never an rms), with sep's field names,
  measured by the run labeller of jitcore._kernels.label (no sep: it holds no GIL and has no
  pixel buffer).  Callers make their own selections from it (psfmeasure: PSF stars,
  starmatch: bright matched stars) or refine it (astrom: windowed centroids).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import sep

from diffstream.jitcore._kernels.label import STAR_COLUMNS, STAR_WORK, star_moments
from diffstream.jitcore._kernels.planes import snr_plane
from diffstream.jitcore.labels import label_footprints

__all__ = ["STAR_DTYPE", "extract", "find_stars"]

_SEP_LOCK = threading.Lock()
_MIN_PIXSTACK = 300_000  # pixels; sep's default
_MAX_PIXSTACK = 1 << 26
_SUB_OBJECT_LIMIT = 4096  # deblending sub-objects; sep's default 1024 fails on big blends


def extract(
    data: np.ndarray,
    threshold: float,
    *,
    err: np.ndarray | float | None = None,
    var: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    minarea: int = 5,
    filter_kernel: Any = "default",
    clean: bool = True,
    deblend: bool = False,
    segmentation_map: bool = False,
) -> Any:
    """``sep.extract`` with this call's settings, safe to call from several threads.

    ``filter_kernel="default"`` is sep's own 3x3 default, ``None`` no filtering; ``deblend``
    False is sep's ``deblend_cont=1.0`` (off), True its 32-level, 0.005-contrast deblending.
    ``data`` (and ``err``/``var`` arrays) must be C-contiguous native float32/float64, as
    sep requires; ``mask`` a numeric or bool array (True = ignore).  Raises ValueError when
    sep fails for another reason than a full pixel buffer, or when that buffer would need
    more than 2^26 pixels.
    """
    kwargs: dict[str, Any] = {
        "mask": None if mask is None else np.asarray(mask).view(np.uint8),
        "minarea": int(minarea),
        "clean": bool(clean),
        "deblend_cont": 0.005 if deblend else 1.0,
        "segmentation_map": bool(segmentation_map),
    }
    if err is not None:
        kwargs["err"] = err
    if var is not None:
        kwargs["var"] = var
    if filter_kernel is None or not isinstance(filter_kernel, str):
        kwargs["filter_kernel"] = filter_kernel
    # The buffer is sized from the image and grown on overflow (below: the extraction is
    # redone, so the catalogue does not depend on the start; tests/unit/test_sources.py).
    # A sixteenth of the image, not a quarter: sep allocates the whole buffer per call, and
    # a 4k frame's quarter (4.2M pixels) cost ~0.1 s more per extraction than 1M
    # (0.53-0.57 s against 0.43-0.44 s for the Alard-Lupton star detection; issue 17).
    pixstack = int(min(max(_MIN_PIXSTACK, data.size // 16), _MAX_PIXSTACK))
    with _SEP_LOCK:
        saved = (sep.get_extract_pixstack(), sep.get_sub_object_limit())
        try:
            sep.set_sub_object_limit(_SUB_OBJECT_LIMIT)
            while True:
                sep.set_extract_pixstack(pixstack)
                try:
                    return sep.extract(data, float(threshold), **kwargs)
                except Exception as exc:  # sep raises plain Exceptions
                    if "pixel buffer full" in str(exc) and pixstack < _MAX_PIXSTACK:
                        pixstack = min(4 * pixstack, _MAX_PIXSTACK)
                        continue
                    raise ValueError(f"source extraction failed: {exc}") from exc
        finally:
            sep.set_extract_pixstack(saved[0])
            sep.set_sub_object_limit(saved[1])


# sep.extract's field names and dtypes for what find_stars measures.
STAR_DTYPE = np.dtype(
    [(name, np.float64) for name in ("x", "y", "x2", "y2", "xy", "a", "b", "theta")]
    + [("flux", np.float64), ("peak", np.float64)]
    + [(name, np.int64) for name in ("xpeak", "ypeak", "xcpeak", "ycpeak", "npix")]
    + [(name, np.int64) for name in ("xmin", "xmax", "ymin", "ymax")]
    + [("flag", np.int16)]
)


def find_stars(
    image: np.ndarray, variance: np.ndarray, bad: np.ndarray, *, threshold: float = 5.0
) -> np.ndarray:
    """Catalogue of the sources of a background-subtracted image (``bad``: bool, True = ignore).

    The footprints are the 8-connected groups of at least 5 pixels with
    ``image / sqrt(variance) > threshold`` (compared in float32), i.e. sep.extract's with
    ``var=variance``, ``minarea=5``, no smoothing and no deblending; the fields are sep's
    (:data:`STAR_DTYPE`): isophotal barycentre ``x``, ``y``, moments and ``a``, ``b``,
    ``theta``, ``flux`` (sum), ``npix``, ``peak`` (image at the highest-S/N pixel, which is
    ``xpeak``/``ypeak`` = ``xcpeak``/``ycpeak``), and ``flag`` 2 (truncated) where the
    footprint touches the edge or an unusable pixel.  One extraction per image serves the
    PSF measurement, the star matching and the astrometric centroids.

    Why not sep itself: it took ~0.4 s per 4k x 4k image holding the GIL, most of the PSF
    step; the run labeller of diffstream.jitcore.detect plus one pass over the runs does the same.
    Without deblending, blends come out as one source with flag 0; measure_psf's size
    clipping and match_stars' npix/isolation cuts reject them.  Unusable pixels (``bad``,
    variance not > 0, non-finite image) need no particular value: they are never read.
    tests/unit/test_psfmeasure.py compares the result with sep.extract.
    """
    img = np.asarray(image)
    var = np.asarray(variance)
    msk = np.asarray(bad)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if var.shape != img.shape or msk.shape != img.shape:
        raise ValueError(f"shapes differ: image {img.shape}, variance {var.shape}, bad {msk.shape}")
    if msk.dtype != np.bool_:
        raise TypeError(f"bad must be a bool array, got dtype {msk.dtype}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    img = np.ascontiguousarray(img, dtype=np.float32)
    var = np.ascontiguousarray(var, dtype=np.float32)
    # S/N and the usable pixels (not bad, variance > 0, image finite) in one fused pass
    # (eight NumPy passes over the frame cost ~20 ms at 4096^2; issue 17).
    snr = np.empty(img.shape, dtype=np.float32)
    valid = np.empty(img.shape, dtype=bool)
    if snr_plane(img, var, np.ascontiguousarray(msk), snr, valid) == 0:
        raise ValueError("no pixel has a positive finite variance: cannot detect stars")
    return _star_catalogue(img, snr, valid, float(threshold), 5)


def _star_catalogue(img, snr, valid, threshold: float, min_area: int) -> np.ndarray:
    """STAR_DTYPE rows of the positive components of ``snr > threshold`` (npix >= min_area)."""
    unusable = ~valid
    fp = label_footprints(snr, valid, threshold, min_area)
    runs, nruns, parent = fp.runs, fp.nruns, fp.parent
    table = np.empty((nruns, max(STAR_WORK, len(STAR_COLUMNS))))
    n = star_moments(img, snr, unusable, runs, nruns, parent, min_area, table)
    out = np.zeros(n, dtype=STAR_DTYPE)
    for c, name in enumerate(STAR_COLUMNS):
        out[name] = table[:n, c]
    out["xcpeak"] = out["xpeak"]  # no smoothing: the "convolved" peak is the peak
    out["ycpeak"] = out["ypeak"]
    return out
