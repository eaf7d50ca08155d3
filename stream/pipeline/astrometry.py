"""fitAstrometry: refine the science -> template pixel mapping from matched stars.

The WCS pair gives a mapping (stream.pipeline.warping.wcs_mapping); a template whose WCS is off by a
fraction of a pixel turns every star of the difference into a dipole.  :func:`refit_mapping`
finds bright stars in both exposures on their own pixel grids, predicts the template
position of each science star through the WCS mapping, matches, and fits a polynomial
correction C (diffstream.jitcore.astrom.fit_transform) so that

    template pixel = C(WCS mapping(science pixel)).

Fitting the correction (not the whole mapping) keeps the WCS's distortion terms (SIP, TPV)
and only absorbs what is wrong with them at low order.  The warp then takes the corrected
mapping (``diffstream.stream.pipeline.warping.warp_template(..., mapping=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from diffstream.jitcore.astrom import fit_transform, match_positions, n_terms, star_centroids
from diffstream.jitcore.background import estimate_background
from diffstream.jitcore.constants import FWHM_PER_SIGMA
from diffstream.jitcore.masks import UNUSABLE_PLANES
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.pipeline.warping import wcs_mapping

__all__ = ["refit_mapping", "Mapping"]

Mapping = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
_FWHM_DEFAULT = 3.0  # px, when an exposure has no PSF to size the centroid window
_ERROR_FLOOR = 0.01  # px, added in quadrature to each star's centroid error


def _stars(exposure: Exposure, threshold: float, max_stars: int):
    bad = (exposure.mask & exposure.bitmask(*UNUSABLE_PLANES)) != 0
    image = exposure.image.astype(np.float64)
    bad |= ~np.isfinite(image) | ~np.isfinite(exposure.variance)
    if bad.all():
        raise BadExposure("no usable pixel to find stars in", path=exposure.path or None)
    bkg, _ = estimate_background(image, bad)
    fwhm = _FWHM_DEFAULT
    if exposure.psf is not None:
        ny, nx = exposure.shape
        fwhm = float(exposure.psf.fwhm_at((nx - 1) / 2.0, (ny - 1) / 2.0))
    x, y, _, snr = star_centroids(
        image - bkg, exposure.variance, bad, threshold=threshold, fwhm=fwhm, max_stars=max_stars
    )
    # Centroid error per axis ~ sigma_psf sqrt(2) / snr (background-limited PSF fit).
    return x, y, fwhm / FWHM_PER_SIGMA * math.sqrt(2.0) / snr


def refit_mapping(
    science: Exposure,
    template: Exposure,
    *,
    order: int = 1,
    threshold: float = 10.0,
    search_radius: float = 5.0,
    match_radius: float = 1.0,
    max_stars: int = 500,
    clip: float = 3.0,
    iterations: int = 3,
) -> tuple[Mapping, dict[str, Any]]:
    """The science -> template pixel mapping corrected by matched stars, and what was done.

    Stars above ``threshold`` sigma (at most ``max_stars``, brightest first) are found in
    both exposures; science stars are mapped through the WCSs, matched within
    ``search_radius`` px to estimate the median offset, then re-matched within
    ``match_radius`` px after removing it; ``order`` (1 affine, 2, 3) polynomial with
    ``clip``-sigma rejection (``iterations``) maps the WCS prediction to the measured
    template position.

    Returns ``(mapping, info)``.  ``mapping(x, y) -> (xt, yt)`` is vectorised like
    :func:`stream.pipeline.warping.wcs_mapping`.  ``info`` holds ``applied`` (False when there were
    too few matches, n_terms(order) + 2: then ``mapping`` is the plain WCS mapping and
    ``reason`` says why), ``order``, ``nScience``/``nTemplate`` (stars found),
    ``nMatched``, ``nUsed`` (after clipping), ``offsetMedian`` [dx, dy] (template px,
    measured - WCS), ``residualRmsBefore`` (RMS of |measured - WCS prediction| over the
    matched stars, px) and ``residualRmsAfter`` (the same after the correction, over the
    stars kept).  Raises BadExposure when a WCS is not a celestial 2-D WCS, ValueError for
    bad knobs.
    """
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    for name, value in (
        ("threshold", threshold),
        ("search_radius", search_radius),
        ("match_radius", match_radius),
    ):
        if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if match_radius > search_radius:
        raise ValueError(
            f"match_radius ({match_radius}) must be <= search_radius ({search_radius})"
        )
    if isinstance(max_stars, bool) or not isinstance(max_stars, int) or max_stars < 1:
        raise ValueError(f"max_stars must be an integer >= 1, got {max_stars!r}")
    try:
        wcs_map = wcs_mapping(science.wcs, template.wcs)
    except (TypeError, ValueError) as exc:
        raise BadExposure(f"cannot refit astrometry: {exc}", path=science.path or None) from exc

    xs, ys, es = _stars(science, threshold, max_stars)
    xt, yt, et = _stars(template, threshold, max_stars)
    info: dict[str, Any] = {
        "applied": False,
        "order": int(order),
        "nScience": int(xs.size),
        "nTemplate": int(xt.size),
        "nMatched": 0,
        "nUsed": 0,
        "offsetMedian": [math.nan, math.nan],
        "residualRmsBefore": math.nan,
        "residualRmsAfter": math.nan,
    }
    need = n_terms(order) + 2
    px, py = wcs_map(xs, ys)
    inside = np.isfinite(px) & np.isfinite(py)
    pred = np.column_stack([px[inside], py[inside]])
    es = es[inside]
    found = np.column_stack([xt, yt])
    ia, ib = match_positions(pred, found, radius=search_radius)
    if ia.size < need:
        info["reason"] = f"{ia.size} stars matched within {search_radius} px < required {need}"
        return wcs_map, info
    offset = np.median(found[ib] - pred[ia], axis=0)
    ia, ib = match_positions(pred + offset, found, radius=match_radius)
    info["nMatched"] = int(ia.size)
    info["offsetMedian"] = [float(offset[0]), float(offset[1])]
    if ia.size < need:
        info["reason"] = f"{ia.size} stars matched within {match_radius} px < required {need}"
        return wcs_map, info
    src, dst = pred[ia], found[ib]
    # Both centroids' errors, plus a floor for what no centroid error describes (PSF
    # asymmetry, resampling): a few bright stars must not carry the whole fit.
    weights = 1.0 / (es[ia] ** 2 + et[ib] ** 2 + _ERROR_FLOOR**2)
    info["residualRmsBefore"] = float(np.sqrt(np.mean(np.sum((dst - src) ** 2, axis=1))))
    try:
        correction, rms, n_used = fit_transform(
            src, dst, order=order, clip=clip, iterations=iterations, weights=weights
        )
    except ValueError as exc:
        info["reason"] = str(exc)
        return wcs_map, info
    info.update(applied=True, nUsed=n_used, residualRmsAfter=rms)

    def mapping(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return correction(*wcs_map(x, y))

    return mapping, info
