"""Relative astrometry: bright-star positions, matching, and a sigma-clipped polynomial fit.

The seed's fitAstrometry refines the template-to-science mapping from stars found in both
exposures.  Here the pieces are plain functions on arrays (stream.pipeline.astrometry applies them
to exposures and WCSs):

* :func:`star_centroids`: sep detection (diffstream.jitcore.sources.extract) on a
  background-subtracted image, then windowed centroids (sep's ``winpos``, SExtractor's XWIN:
  iterated Gaussian-weighted first moments).
  Rejected: the isophotal barycentres of ``sep.extract``, whose noise is 2-3x larger for the
  faint stars and biased by the isophote's asymmetry.
* :func:`match_positions`: nearest neighbours within a radius, one-to-one.
* :func:`fit_transform`: least-squares polynomial ``dst = T(src)`` (affine for order 1,
  full polynomial in x, y of total degree 2 or 3 otherwise) in coordinates centred on the
  sources' mean and scaled by their spread, so the normal equations stay well conditioned
  for 4k x 4k images; iterated ``clip``-sigma rejection of residual outliers (mismatches,
  blends, moving objects), sigma from the median squared residual (robust, 2-D).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from diffstream.jitcore.constants import FWHM_PER_SIGMA
from diffstream.jitcore.photometry import APER_HASMASKED, sum_circle, winpos
from diffstream.jitcore.sources import extract

__all__ = ["PolyTransform", "fit_transform", "match_positions", "n_terms", "star_centroids"]

# Median of r^2 / sigma^2 for a 2-D Gaussian residual (chi^2 with 2 degrees of freedom).
_MEDIAN_CHI2_2 = 2.0 * math.log(2.0)
_MIN_SIGMA2 = 1e-12  # (1e-6 px)^2: residuals below this are rounding, never rejected


def n_terms(order: int) -> int:
    """Number of monomials x^i y^j with i + j <= order."""
    return (order + 1) * (order + 2) // 2


@dataclass(frozen=True)
class PolyTransform:
    """``(x, y) -> (x', y')`` as polynomials of total degree ``order`` in
    u = (x - centre_x) / scale, v = (y - centre_y) / scale; ``coeffs`` has shape
    (2, n_terms(order)) for x' and y', terms ordered 1, u, v, u^2, u v, v^2, u^3, ..."""

    order: int
    coeffs: np.ndarray
    centre: tuple[float, float]
    scale: float

    def design(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = (np.asarray(x, dtype=np.float64) - self.centre[0]) / self.scale
        v = (np.asarray(y, dtype=np.float64) - self.centre[1]) / self.scale
        cols = []
        for total in range(self.order + 1):
            for j in range(total + 1):
                cols.append(u ** (total - j) * v**j)
        return np.stack(cols, axis=-1)

    def __call__(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        a = self.design(x, y)
        return a @ self.coeffs[0], a @ self.coeffs[1]


def _points(name: str, arr) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(a)).sum())} bad values")
    return a


def fit_transform(
    src_xy: np.ndarray,
    dst_xy: np.ndarray,
    *,
    order: int = 1,
    clip: float = 3.0,
    iterations: int = 3,
    weights: np.ndarray | None = None,
) -> tuple[PolyTransform, float, int]:
    """Fit ``dst = T(src)`` by least squares with sigma clipping.

    ``src_xy``, ``dst_xy``: (n, 2) matched positions (pixels).  ``weights`` (n,), > 0,
    optional: inverse variances of the points' position errors (relative values suffice);
    the clipping then uses the weighted residuals.  ``order`` 1 (affine), 2 or
    3; at least n_terms(order) + 2 points are needed (so that the residual RMS has degrees
    of freedom left).  ``clip``: residuals beyond clip x sigma are rejected and the fit
    repeated, at most ``iterations`` times (0: no clipping), never below that minimum.
    Returns ``(transform, residual_rms, n_used)``: the RMS (px) of |dst - T(src)| over the
    points kept, and how many they are.  Raises ValueError for bad input and for points
    that do not determine the polynomial (e.g. all on one line).
    """
    src = _points("src_xy", src_xy)
    dst = _points("dst_xy", dst_xy)
    if src.shape != dst.shape:
        raise ValueError(f"src_xy has {src.shape[0]} points but dst_xy has {dst.shape[0]}")
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if (
        isinstance(clip, bool)
        or not isinstance(clip, numbers.Real)
        or not (math.isfinite(clip) and clip > 0)
    ):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    n = src.shape[0]
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {w.shape}")
        if not np.all(np.isfinite(w) & (w > 0)):
            raise ValueError("weights must be finite and > 0")
    need = n_terms(order) + 2
    if n < need:
        raise ValueError(f"order {order} needs at least {need} matched points, got {n}")

    centre = (float(src[:, 0].mean()), float(src[:, 1].mean()))
    scale = float(max(np.abs(src - centre).max(), 1.0))
    used = np.ones(n, dtype=bool)
    for it in range(int(iterations) + 1):
        transform = _solve(src[used], dst[used], w[used], order, centre, scale)
        px, py = transform(src[:, 0], src[:, 1])
        r2 = (dst[:, 0] - px) ** 2 + (dst[:, 1] - py) ** 2
        if it == iterations:
            break
        # The floor keeps round-off residuals of exact data from being "outliers".
        sigma2 = max(float(np.median((w * r2)[used])) / _MEDIAN_CHI2_2, _MIN_SIGMA2)
        keep = w * r2 <= clip * clip * sigma2
        if keep.sum() < need or np.array_equal(keep, used):
            break
        used = keep
    rms = float(math.sqrt(r2[used].mean()))
    return transform, rms, int(used.sum())


def _solve(src, dst, w, order, centre, scale) -> PolyTransform:
    probe = PolyTransform(order, np.zeros((2, n_terms(order))), centre, scale)
    a = probe.design(src[:, 0], src[:, 1])
    sw = np.sqrt(w)[:, None]
    coeffs, _, rank, _ = np.linalg.lstsq(a * sw, dst * sw, rcond=None)
    if rank < a.shape[1]:
        raise ValueError(
            f"the {src.shape[0]} points do not determine an order-{order} polynomial "
            f"(rank {rank} < {a.shape[1]} terms); are they on a line?"
        )
    return PolyTransform(order, np.ascontiguousarray(coeffs.T), centre, scale)


def star_centroids(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    *,
    threshold: float = 10.0,
    fwhm: float = 3.0,
    max_stars: int = 500,
    max_npix: int = 400,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bright isolated stars of a background-subtracted image: (x, y, flux, snr), brightest
    first.

    ``variance``: per-pixel variance (same shape), ``bad``: True where unusable.
    Detections above ``threshold`` sigma (sep's default 3x3 filter) with at least 5 pixels,
    no sep flags (truncated at the edge, ...), fewer than ``max_npix`` pixels (not saturated
    bleeds or galaxies); positions are windowed centroids with a Gaussian of FWHM ``fwhm``
    px; ``flux`` and ``snr`` from a circular aperture of radius ``fwhm`` (snr weights the
    positions: a centroid's error scales as FWHM / snr).  Was ``find_stars`` with an rms
    argument; the package's one ``find_stars`` (a catalogue) is in jitcore.sources.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {arr.shape}")
    for name, other in (("variance", variance), ("bad", bad)):
        if np.shape(other) != arr.shape:
            raise ValueError(f"{name} shape {np.shape(other)} != image shape {arr.shape}")
    if not (math.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be a finite number > 0, got {fwhm!r}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    var = np.asarray(variance, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = np.asarray(bad, dtype=bool) | ~np.isfinite(arr) | ~np.isfinite(var) | ~(var > 0)
    data = np.ascontiguousarray(np.where(bad, 0.0, arr), dtype=np.float64)
    var = np.ascontiguousarray(np.where(bad, 1e60, var), dtype=np.float64)
    objs = extract(data, threshold, var=var, mask=bad, minarea=5)
    empty = (np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    if len(objs) == 0:
        return empty
    objs = objs[(objs["flag"] == 0) & (objs["npix"] < max_npix)]
    objs = objs[np.argsort(-objs["flux"])][:max_stars]
    if len(objs) == 0:
        return empty
    sig = np.full(len(objs), fwhm / FWHM_PER_SIGMA)
    # sep's winpos and sum_circle, bit for bit, without the GIL (jitcore/_kernels/apertures.py).
    x, y, flag = winpos(data, bad, objs["x"], objs["y"], sig)
    ok = (flag == 0) & np.isfinite(x) & np.isfinite(y)
    # winpos must not wander off to a neighbour: keep it near the detection.
    ok &= np.hypot(x - objs["x"], y - objs["y"]) < fwhm
    x, y = np.asarray(x[ok]), np.asarray(y[ok])
    flux, ferr, aflag = sum_circle(data, var, bad, x, y, fwhm)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(aflag & APER_HASMASKED, np.nan, flux / ferr)
    good = np.flatnonzero(np.isfinite(snr) & (snr > 0))
    good = good[np.argsort(-flux[good], kind="stable")]
    return x[good], y[good], np.asarray(flux[good]), np.asarray(snr[good])


def match_positions(
    xy_a: np.ndarray, xy_b: np.ndarray, *, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of one-to-one nearest-neighbour matches within ``radius``.

    Each point of ``xy_a`` takes its nearest point of ``xy_b``; a point of ``xy_b`` claimed
    by several is ambiguous and dropped with all its claimants.
    """
    a = _points("xy_a", xy_a)
    b = _points("xy_b", xy_b)
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    none = np.zeros(0, dtype=np.int64)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return none, none.copy()
    dist, idx = cKDTree(b).query(a, distance_upper_bound=radius)
    hit = np.flatnonzero(np.isfinite(dist))
    ib = idx[hit]
    values, counts = np.unique(ib, return_counts=True)
    unique = ~np.isin(ib, values[counts > 1])
    return hit[unique].astype(np.int64), ib[unique].astype(np.int64)
