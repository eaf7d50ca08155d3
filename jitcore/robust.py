"""Robust scatter estimates: one family, named for what each computes (issue 13).

Three estimators were called ``robust_sigma`` or ``_robust`` in different modules and
computed different things.  They live here under honest names:

* :func:`mad_sigma`: 1.4826 x median absolute deviation.  50% breakdown point; for the
  small samples of star-level clipping (4-200 values: star sizes, chi2, offsets).
* :func:`iqr_sigma`: interquartile range / 1.349.  For large pixel samples (noise
  calibration), where its 25% breakdown is enough and a partition is cheaper than two.
* :func:`median_iqr`: the median and the IQR sigma together (one percentile call).
* :func:`median_noise`: sqrt(median(variance)) over good pixels, the typical stated noise
  of a tile (a statement about a variance plane, not a scatter measured from data).

All are sigma-consistent for Gaussian data (tests/unit/test_robust.py draws N(0, s^2)).
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.jitcore._kernels.quantiles import quartiles
from diffstream.jitcore.constants import IQR_PER_SIGMA, MAD_PER_SIGMA

__all__ = ["iqr_sigma", "mad_sigma", "median_iqr", "median_noise"]


def mad_sigma(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of ``values`` (NaN for an empty array)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return math.nan
    return float(np.median(np.abs(v - np.median(v))) / MAD_PER_SIGMA)


def iqr_sigma(values: np.ndarray, *, min_count: int = 100) -> float:
    """Interquartile range / 1.349 of the finite ``values``; at least ``min_count`` needed.

    The quartiles are np.percentile's (linear), bit for bit, from the selection kernel of
    jitcore/_kernels/quantiles.py: float32 values stay float32 (no float64 copy) and about
    one pass replaces the partition of the whole sample, ~3x less time on the noise steps'
    samples (issue 17; tests/unit/test_robust.py compares with np.percentile).
    """
    v = np.asarray(values)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    v = np.ascontiguousarray(v).ravel()
    q = np.empty(2)
    n = int(quartiles(v, np.empty_like(v), np.empty(v.size + 2, v.dtype), q))
    if n < min_count:
        raise ValueError(f"iqr_sigma needs >= {min_count} finite values, got {n}")
    return float((q[1] - q[0]) / IQR_PER_SIGMA)


def median_iqr(values: np.ndarray) -> tuple[float, float]:
    """(median, IQR / 1.349) of ``values`` in one percentile pass."""
    q25, med, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25.0, 50.0, 75.0])
    return float(med), float((q75 - q25) / IQR_PER_SIGMA)


def median_noise(variance: np.ndarray, good: np.ndarray, *, max_samples: int = 16384) -> float:
    """sqrt(median(variance)) over the ``good`` pixels (NaN when there are none).

    A regular subsample (at most ``max_samples`` pixels) is plenty for a median and keeps
    the cost per tile small (16384 rather than 65536: the median of a tile's variance moved
    by < 0.1% in the pipeline's 4k pairs, for a quarter of ZOGY's 1.3 ms per tile).
    """
    step = max(1, math.isqrt(max(1, variance.size // max_samples)))
    v = variance[::step, ::step][good[::step, ::step]]
    if v.size == 0:
        v = variance[good]
    if v.size == 0:
        return math.nan
    return float(math.sqrt(max(float(np.median(v)), 0.0)))
