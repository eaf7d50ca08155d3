"""Matched stars between the science and the warped template: registration scatter and flux ratio.

ZOGY needs the astrometric registration noise (sigma_x, sigma_y) for its S_corr term and the
relative flux scaling; real codes measure both from stars found in both images (see
../shared/reference/algorithms.md).  Both images are on the science pixel grid here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy.spatial import cKDTree

from diffstream.jitcore.robust import mad_sigma
from diffstream.jitcore.sources import extract

__all__ = ["StarMatch", "match_stars"]


@dataclass
class StarMatch:
    n_matched: int
    dx: np.ndarray
    dy: np.ndarray
    sigma_x: float
    sigma_y: float
    flux_ratio: float  # template / science, median over matched stars
    flux_ratio_err: float


def _find(image: np.ndarray, variance: np.ndarray, bad: np.ndarray, thresh: float) -> np.ndarray:
    data = np.ascontiguousarray(np.where(bad, 0.0, image), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        unusable = bad | ~(variance > 0) | ~np.isfinite(variance)
    # float64 before the fill: 1e60 overflows a float32 plane.
    var = np.where(unusable, 1e60, np.asarray(variance, dtype=np.float64))
    objs = extract(data, thresh, var=var, mask=bad, minarea=5)
    if len(objs) == 0:
        return objs
    good = (objs["flag"] == 0) & (objs["npix"] < 400)
    return objs[good]


def _bright(cat: np.ndarray, variance: np.ndarray, thresh: float) -> np.ndarray:
    """Clean, compact catalogue entries whose peak pixel is >= ``thresh`` sigma.

    The selection :func:`_find` makes by detecting at ``thresh``, applied to a catalogue
    found at a lower threshold (diffstream.jitcore.sources.find_stars), so one extraction serves.
    """
    if len(cat) == 0:
        return cat
    ny, nx = variance.shape
    iy = np.clip(cat["ycpeak"], 0, ny - 1)
    ix = np.clip(cat["xcpeak"], 0, nx - 1)
    with np.errstate(invalid="ignore"):
        sig = np.sqrt(variance[iy, ix].astype(np.float64))
        good = (cat["flag"] == 0) & (cat["npix"] < 400) & (cat["peak"] >= thresh * sig)
    return cat[good]


def _aperture(image: np.ndarray, bad: np.ndarray, x, y, r: float) -> np.ndarray:
    # sep never reads masked pixels, so any finite-or-not values there are fine.
    data = image if image.dtype in (np.float32, np.float64) else image.astype(np.float64)
    flux, _, flag = sep.sum_circle(np.ascontiguousarray(data), x, y, r, mask=bad)
    return np.where(flag == 0, flux, np.nan)


def match_stars(
    science: np.ndarray,
    science_variance: np.ndarray,
    template: np.ndarray,
    template_variance: np.ndarray,
    bad: np.ndarray,
    *,
    threshold: float = 20.0,
    radius: float = 1.5,
    aperture: float = 8.0,
    max_stars: int = 500,
    sources: tuple[np.ndarray, np.ndarray] | None = None,
) -> StarMatch:
    """Match bright, clean stars of two background-subtracted images on one pixel grid.

    The offsets' robust scatter (1.4826 MAD) is the registration noise; it includes the
    centroid noise of the stars themselves, which is what ZOGY's term wants (the noise of the
    registration actually achieved).  With fewer than 5 matches the scatter is reported as 0
    (no evidence beats weak evidence), and with fewer than 3 the flux ratio as 1.

    ``sources`` (science, template catalogues of jitcore.sources.find_stars on these very
    images) replaces the two detections at ``threshold`` by a selection of their entries.
    """
    if science.shape != template.shape or science.shape != bad.shape:
        raise ValueError(
            f"shapes must agree: science {science.shape}, template {template.shape}, "
            f"bad {bad.shape}"
        )
    if sources is not None:
        sci = _bright(sources[0], science_variance, threshold)
        tmp = _bright(sources[1], template_variance, threshold)
    else:
        sci = _find(science, science_variance, bad, threshold)
        tmp = _find(template, template_variance, bad, threshold)
    if len(sci) == 0 or len(tmp) == 0:
        return StarMatch(0, np.zeros(0), np.zeros(0), 0.0, 0.0, 1.0, 0.0)
    order = np.argsort(-sci["flux"])[:max_stars]
    sci = sci[order]
    tree = cKDTree(np.column_stack([tmp["x"], tmp["y"]]))
    dist, idx = tree.query(np.column_stack([sci["x"], sci["y"]]), distance_upper_bound=radius)
    ok = np.isfinite(dist)
    # Keep only one-to-one matches: a template star claimed twice is ambiguous.
    _, counts = np.unique(idx[ok], return_counts=True)
    dup = set(np.unique(idx[ok])[counts > 1].tolist())
    ok &= np.array([i not in dup for i in idx])
    n = int(ok.sum())
    # A flux ratio needs fewer stars than a scatter: the median of 3-4 aperture ratios of
    # bright stars is good to ~1-2% (a 256 x 256 DECam cut-out has 4), while a robust
    # scatter of 4 offsets is not worth reporting.
    if n < 3:
        return StarMatch(n, np.zeros(0), np.zeros(0), 0.0, 0.0, 1.0, 0.0)
    s, t = sci[ok], tmp[idx[ok]]
    dx = t["x"] - s["x"]
    dy = t["y"] - s["y"]

    # Isophotal fluxes depend on the seeing; a wide aperture at one position does not.
    fs = _aperture(science, bad, s["x"], s["y"], aperture)
    ft = _aperture(template, bad, s["x"], s["y"], aperture)
    ratio = ft / fs
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    fr = float(np.median(ratio)) if len(ratio) else 1.0
    fre = float(1.2533 * mad_sigma(ratio) / np.sqrt(max(len(ratio), 1))) if len(ratio) else 0.0
    if n < 5:
        return StarMatch(n, np.zeros(0), np.zeros(0), 0.0, 0.0, fr, fre)
    return StarMatch(n, dx, dy, mad_sigma(dx), mad_sigma(dy), fr, fre)
