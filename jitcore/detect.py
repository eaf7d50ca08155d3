"""Detection of positive and negative sources on the ZOGY score image.

The score S_corr is already the matched-filter output of the difference, normalised to unit
variance on empty sky, so detection is a plain threshold on it, with no filter kernel
(filtering S again would correlate it twice and break the N(0, 1) calibration of the
threshold; tests/unit/test_detect.py checks the false detection rate on pure noise against
Gaussian-field theory).  A source is an 8-connected footprint of valid pixels above
``threshold`` (jitcore._kernels.label, a run-based union-find that reads the score once and
holds no full-frame temporaries).  Deblending is off by default: a difference image is mostly
isolated point sources, and deblending noise peaks of one transient into several alerts is
worse than merging a rare blended pair.  ``deblend=True`` takes sep.extract (``err=1``, no
filter, no cleaning, 32-level multi-threshold deblending), which the labeller does not
replicate; without deblending the two paths give the same footprints and peaks
(tests/unit/test_detect.py compares them), the labeller being ~10x faster, free of the GIL
and of sep's failure on a huge footprint (sep builds its sub-threshold tree even without
deblending and raises past 1024 pieces).  Peak ties (equal score in one footprint) go to
the first pixel in raster order; sep takes the first in its pixel-list order, which is the
same for simple shapes.  For float64 scores the peak is the maximum in float64, sep's in
float32.

Both polarities are found separately and never merged: a dipole gives two sources, and
``adjacent_opposite`` points each to its nearest opposite-polarity neighbour within
``dipole_radius`` so that a later dipole fit can pair them.

The sub-pixel position is the maximum of a least-squares quadratic through the 3x3 pixels
around the peak of ``sign * S``: S is the log-likelihood ratio of a point source at each
pixel, so its maximum is the maximum-likelihood position.

Sources are returned sorted by (peak_y, peak_x), a deterministic order that the diaSource id
numbering relies on (diffstream.jitcore.ids).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from diffstream.jitcore._kernels.measure import refine_peaks
from diffstream.jitcore.labels import label_footprints
from diffstream.jitcore.sources import extract

__all__ = ["SOURCE_DTYPE", "detect", "pair_opposites"]

SOURCE_DTYPE = np.dtype(
    [
        ("peak_x", np.int64),  # pixel of the extreme of sign * score
        ("peak_y", np.int64),
        ("x", np.float64),  # sub-pixel peak, 0-based pixel coordinates
        ("y", np.float64),
        ("sign", np.int8),  # +1 positive, -1 negative source
        ("peak_score", np.float64),  # signed score at the peak pixel
        ("npix", np.int64),  # pixels above threshold in the footprint
        ("bbox", np.int64, (4,)),  # footprint bounding box x0, x1, y0, y1 (inclusive)
        ("adjacent_opposite", np.int64),  # index of the nearest opposite-sign source or -1
    ]
)


def _extract(data: np.ndarray, mask: np.ndarray, threshold: float, min_area: int, deblend: bool):
    # err=1: the score is already in sigma; no filter (see the module docstring), no
    # cleaning; jitcore.sources grows sep's pixel buffer when a bad subtraction fills it.
    return extract(data, threshold, err=1.0, mask=mask, minarea=min_area, filter_kernel=None,
                   clean=False, deblend=deblend)  # fmt: skip


def _footprints_sep(
    data: np.ndarray, valid: np.ndarray, threshold: float, min_area: int, deblend: bool
) -> np.ndarray:
    """Footprints from sep.extract, both polarities: SOURCE_DTYPE with peak_x, peak_y, sign,
    npix and bbox filled, unsorted.  ``data`` native-order and C-contiguous."""
    finite = np.isfinite(data)
    invalid = ~(valid & finite)
    # Masked pixels are zeroed by sep, but NaNs must not reach its arithmetic at all.
    if not finite.all():
        data = np.where(finite, data, 0).astype(data.dtype)
    parts = []
    for sgn in (1, -1):
        img = data if sgn > 0 else np.negative(data)
        obj = _extract(img, invalid, float(threshold), int(min_area), deblend)
        part = np.zeros(len(obj), dtype=SOURCE_DTYPE)
        part["peak_x"] = obj["xpeak"]
        part["peak_y"] = obj["ypeak"]
        part["sign"] = sgn
        part["npix"] = obj["npix"]
        part["bbox"] = np.column_stack([obj["xmin"], obj["xmax"], obj["ymin"], obj["ymax"]])
        parts.append(part)
    return np.concatenate(parts)


def _footprints(data: np.ndarray, valid: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Footprints from the run labeller; same contract as :func:`_footprints_sep` without
    deblending.  ``data`` native-order and C-contiguous, ``valid`` C-contiguous."""
    comp = label_footprints(data, valid, threshold, min_area).comp
    ncomp = len(comp)
    out = np.zeros(ncomp, dtype=SOURCE_DTYPE)
    out["peak_x"] = comp[:, 0]
    out["peak_y"] = comp[:, 1]
    out["sign"] = comp[:, 2]
    out["npix"] = comp[:, 3]
    out["bbox"] = comp[:, 4:8]
    return out


def _check(score: np.ndarray, valid: np.ndarray, threshold: float, min_area: int) -> None:
    if not isinstance(score, np.ndarray) or score.dtype not in (np.float32, np.float64):
        got = score.dtype if isinstance(score, np.ndarray) else type(score).__name__
        raise TypeError(f"score must be a float32 or float64 ndarray, got {got}")
    if score.ndim != 2:
        raise ValueError(f"score must be 2-D, got shape {score.shape}")
    if not isinstance(valid, np.ndarray) or valid.dtype != np.bool_:
        got = valid.dtype if isinstance(valid, np.ndarray) else type(valid).__name__
        raise TypeError(f"valid must be a bool ndarray, got {got}")
    if valid.shape != score.shape:
        raise ValueError(f"valid shape {valid.shape} differs from score shape {score.shape}")
    if not (_is_real(threshold) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    if isinstance(min_area, bool) or not isinstance(min_area, numbers.Integral) or min_area < 1:
        raise ValueError(f"min_area must be an integer >= 1, got {min_area!r}")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def pair_opposites(x: np.ndarray, y: np.ndarray, sign: np.ndarray, radius: float) -> np.ndarray:
    """Index of the nearest opposite-sign source within ``radius`` (ties: lowest index), or -1."""
    from scipy.spatial import cKDTree

    out = np.full(x.shape[0], -1, dtype=np.int64)
    pos = np.flatnonzero(sign > 0)
    neg = np.flatnonzero(sign < 0)
    if pos.size == 0 or neg.size == 0 or radius <= 0:
        return out
    xy = np.column_stack([x, y])
    for mine, other in ((pos, neg), (neg, pos)):
        tree = cKDTree(xy[other])
        dist, idx = tree.query(xy[mine], k=1, distance_upper_bound=radius)
        hit = np.isfinite(dist)
        out[mine[hit]] = other[idx[hit]]
    return out


def detect(
    score: np.ndarray,
    valid: np.ndarray,
    *,
    threshold: float = 5.0,
    min_area: int = 1,
    deblend: bool = False,
    dipole_radius: float = 10.0,
) -> np.ndarray:
    """Detect sources above ``threshold`` in ``score`` and below ``-threshold``.

    Parameters
    ----------
    score : (ny, nx) float32 or float64
        ZOGY S_corr, N(0, 1) on empty sky.
    valid : (ny, nx) bool
        False where the score must not be used (masked, outside the template, ...);
        non-finite score pixels are treated as invalid too.
    threshold : float
        Detection threshold in units of the score's standard deviation (sigma).
    min_area : int
        Minimum number of connected pixels above threshold.
    deblend : bool
        Use sep's multi-threshold deblending (32 levels, contrast 0.005).
    dipole_radius : float
        Distance in pixels within which opposite-polarity sources are marked as adjacent.

    Returns
    -------
    numpy structured array of dtype :data:`SOURCE_DTYPE`, sorted by (peak_y, peak_x).
    """
    _check(score, valid, threshold, min_area)
    if not (_is_real(dipole_radius) and math.isfinite(dipole_radius) and dipole_radius >= 0):
        raise ValueError(f"dipole_radius must be a finite number >= 0, got {dipole_radius!r}")
    data = np.ascontiguousarray(score, dtype=score.dtype.newbyteorder("="))
    valid = np.ascontiguousarray(valid)
    if deblend:
        src = _footprints_sep(data, valid, threshold, min_area, deblend=True)
    else:
        src = _footprints(data, valid, threshold, min_area)
    src = src[np.lexsort((src["peak_x"], src["peak_y"]))]
    if src.size == 0:
        return src

    src["peak_score"] = data[src["peak_y"], src["peak_x"]]
    refined = np.empty((src.size, 2), dtype=np.float64)
    # refine_peaks treats non-finite pixels as invalid itself: no valid & isfinite frame.
    refine_peaks(
        data,
        valid,
        np.ascontiguousarray(src["peak_x"]),
        np.ascontiguousarray(src["peak_y"]),
        src["sign"].astype(np.float64),
        refined,
    )
    src["x"] = refined[:, 0]
    src["y"] = refined[:, 1]
    src["adjacent_opposite"] = pair_opposites(src["x"], src["y"], src["sign"], dipole_radius)
    return src
