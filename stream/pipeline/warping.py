"""Warp a template exposure onto the science exposure's pixel grid (the astropy side).

The numerics live in diffstream.jitcore.warp (coarse-grid spline of the pixel map, Lanczos kernel);
this module only turns two astropy WCSs into that pixel map and picks the mask planes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from astropy.wcs import WCS, NoConvergence

from diffstream.jitcore.masks import bits
from diffstream.jitcore.warp import MapSpline, local_jacobian, map_spline, warp_image_spline
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import BadExposure

__all__ = ["wcs_mapping", "warp_template", "BAD_PLANES"]

# Template pixels whose *values* are not data: any output pixel whose kernel footprint
# touches one becomes NO_DATA (NaN).  SAT/CR/EDGE are kept as values and only OR-ed into
# the output mask (dilated by the footprint); the subtraction zero-weights them anyway
# (diffstream.jitcore.masks.UNUSABLE_PLANES), and making them NO_DATA would count every saturated
# star against the template coverage.
BAD_PLANES = ("NO_DATA", "BAD")

# all_world2pix solutions whose last correction is larger than this (px) are discarded.
_MAX_INVERSE_ERROR = 1e-3


def _check_celestial(wcs: WCS, name: str) -> None:
    if not isinstance(wcs, WCS):
        raise TypeError(f"{name} must be an astropy.wcs.WCS, got {type(wcs).__name__}")
    if wcs.naxis != 2 or not wcs.has_celestial:
        raise ValueError(
            f"{name} must be a 2-axis celestial WCS, got naxis={wcs.naxis}, "
            f"ctype={list(wcs.wcs.ctype)}"
        )


def wcs_mapping(
    science_wcs: WCS, template_wcs: WCS
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``f(x, y) -> (xt, yt)``: science pixel -> sky -> template pixel, 0-based, vectorised.

    Uses ``all_pix2world``/``all_world2pix`` so SIP, TPV and lookup-table distortions are
    honoured.  Positions the template WCS cannot invert (diverging iteration, or a sky point
    its projection cannot reach) come back NaN, which the warp turns into NO_DATA.
    """
    _check_celestial(science_wcs, "science_wcs")
    _check_celestial(template_wcs, "template_wcs")

    def mapping(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        shape = np.broadcast_shapes(x.shape, y.shape)
        xf = np.broadcast_to(x, shape).ravel()
        yf = np.broadcast_to(y, shape).ravel()
        sky = science_wcs.all_pix2world(np.column_stack([xf, yf]), 0)
        try:
            pix = template_wcs.all_world2pix(sky, 0)
        except NoConvergence as exc:
            # Keep the converged points; drop diverging ones and slow ones left inaccurate.
            pix = np.array(exc.best_solution, dtype=np.float64)
            if exc.divergent is not None:
                pix[exc.divergent] = np.nan
            if exc.slow_conv is not None:
                acc = np.asarray(exc.accuracy, dtype=np.float64)
                slow = np.asarray(exc.slow_conv)
                inaccurate = slow[np.any(acc[slow] > _MAX_INVERSE_ERROR, axis=1)]
                pix[inaccurate] = np.nan
        return pix[:, 0].reshape(shape), pix[:, 1].reshape(shape)

    return mapping


def warp_template(
    template: Exposure,
    science: Exposure,
    *,
    step: int = 32,
    order: int = 3,
    bad_planes: tuple[str, ...] = BAD_PLANES,
    mapping: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    workers: int | None = -1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The template resampled onto the science pixel grid.

    ``mapping(x, y) -> (xt, yt)`` (vectorised, 0-based science pixel -> template pixel)
    replaces the WCS mapping, e.g. the one stream.pipeline.astrometry.refit_mapping corrected with
    matched stars; None builds it from the two WCSs (:func:`wcs_mapping`).

    Returns ``(image, variance, mask, jacobian)``: float32 image and variance (template
    units; NaN where NO_DATA), the int32 mask in the *template's* plane layout
    (``template.mask_planes``), and the 2x2 d(template pix)/d(science pix) at the science
    image centre (for jitcore.warp.warp_stamp of a template PSF given in template pixels).
    ``workers`` threads share the Lanczos loop (scipy.fft convention: -1 all cores, None
    one thread); the result does not depend on it.
    """
    planes = template.mask_planes
    if "NO_DATA" not in planes:
        msg = f"template mask planes must include NO_DATA, got {sorted(planes)}"
        raise BadExposure(msg, path=template.path or None)
    for exposure, name in ((science, "science"), (template, "template")):
        try:
            _check_celestial(exposure.wcs, f"{name} WCS")
        except (TypeError, ValueError) as exc:
            raise BadExposure(str(exc), path=exposure.path or None) from exc

    if mapping is None:
        mapping = wcs_mapping(science.wcs, template.wcs)
    elif not callable(mapping):
        raise TypeError(
            f"mapping must be callable (x, y) -> (xt, yt), got {type(mapping).__name__}"
        )
    ny, nx = science.shape
    # The map stays a spline evaluated row by row inside the warp: full-frame xt/yt would
    # cost 256 MB and ~0.2 s at 4k x 4k (diffstream.jitcore.warp.warp_image_spline).
    spline = map_spline(mapping, (ny, nx), step=step)
    edge = bits(planes, ("EDGE",))
    image, variance, mask = warp_image_spline(
        template.image,
        template.variance,
        template.mask,
        spline,
        no_data_bit=bits(planes, ("NO_DATA",)),
        edge_bit=edge or None,
        bad_bits=bits(planes, tuple(bad_planes)),
        order=order,
        workers=workers,
    )
    return image, variance, mask, _centre_jacobian(spline)


def _centre_jacobian(spline: MapSpline) -> np.ndarray:
    """Jacobian at the science centre, or at the nearest pixel where the map is finite.

    All-NaN (no template anywhere) gives a NaN matrix; coverage is then 0 and the pipeline
    stops with NoWorkFound before any PSF is warped.
    """
    ny, nx = spline.shape
    cx, cy = (nx - 1) // 2, (ny - 1) // 2
    # local_jacobian reads only the 3 x 3 pixels around (cx, cy): evaluate just those
    # (the same numbers as the full grid there).
    y0, x0 = max(cy - 1, 0), max(cx - 1, 0)
    xt, yt = spline.grid((y0, min(cy + 2, ny)), (x0, min(cx + 2, nx)))
    try:
        return local_jacobian(xt, yt, cx - x0, cy - y0)
    except ValueError:
        pass
    # Rare (the centre has no template): search the full grid.
    xt, yt = spline.grid()
    finite = np.isfinite(xt) & np.isfinite(yt)
    # Interior finite pixels whose four neighbours are finite too (central differences).
    ok = np.zeros_like(finite)
    ok[1:-1, 1:-1] = (
        finite[1:-1, 1:-1] & finite[:-2, 1:-1] & finite[2:, 1:-1]
        & finite[1:-1, :-2] & finite[1:-1, 2:]
    )  # fmt: skip
    jj, ii = np.nonzero(ok)
    if jj.size == 0:
        return np.full((2, 2), np.nan)
    k = int(np.argmin((ii - cx) ** 2 + (jj - cy) ** 2))
    return local_jacobian(xt, yt, int(ii[k]), int(jj[k]))
