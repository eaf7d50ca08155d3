"""The trail step: a trailed-source fit on every diaSource, converted to the schema's fields.

diffstream.jitcore.trails.fit_trails fits a PSF (Gaussian of the PSF_D's sigma) convolved with
a segment on the difference over each source's footprint; this module turns its pixel-frame
results into the LSST diaSource fields: trailRa/trailDec (+Err, the schema's RA*cos(Dec)
convention, stream.alerts.skycoords.pixel_to_sky), trailLength (+Err) in arcsec through the
local WCS Jacobian along the trail, trailAngle (+Err) the trail's bearing on the sky, degrees
from north through east, folded into [0, 180) (a trail has no direction; the schema: "angle
between the meridian through the centroid and the trail direction (bearing)"), trailFlux
(+Err, nJy), trailChi2, trailNdata, trail_flag, trail_flag_edge.  Fits that failed
(trail_flag) keep their flags and ndata; their values go null.

Setting: ``trail_fit`` (on).  Off: every field null, trailNdata 0 (a required field).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.wcs import WCS

from diffstream.jitcore.trails import TRAIL_DTYPE, fit_trails
from diffstream.stream.alerts.skycoords import local_jacobians, sky_errors, sky_offset

__all__ = ["TRAIL_FIELDS", "measure_trails", "trail_alert_fields"]

TRAIL_FIELDS = (
    "trailFlux", "trailFluxErr", "trailRa", "trailRaErr", "trailDec", "trailDecErr",
    "trailLength", "trailLengthErr", "trailAngle", "trailAngleErr", "trailChi2", "trailNdata",
    "trail_flag_edge", "trail_flag",
)  # fmt: skip


def measure_trails(
    sources: np.ndarray,
    rows: np.ndarray,
    *,
    difference: np.ndarray,
    difference_variance: np.ndarray,
    psf_d_at: Any,
    wcs: WCS,
    settings: Any,
    mask: np.ndarray | None = None,
    mask_planes: Mapping[str, int] | None = None,
    workers: int | None = None,
    **_other_images: Any,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(alert fields aligned with ``rows``, summary) for detections ``sources`` and their
    measurement ``rows`` (after dipole merging: DipoleStep.sources / .rows).  The other
    entries of the pipeline's ``images`` (science, template) are accepted and unused."""
    n = rows.shape[0]
    if not getattr(settings, "trail_fit", True):
        fields: dict[str, np.ndarray] = {k: np.full(n, None, dtype=object) for k in TRAIL_FIELDS}
        fields["trailNdata"] = np.zeros(n, dtype=np.int64)
        return fields, {"fitted": False}
    fit = fit_trails(sources, rows, difference, difference_variance, psf_d_at, mask=mask,
                     mask_planes=mask_planes, workers=workers)  # fmt: skip
    summary = {
        "fitted": True,
        "nFitted": int(n),
        "nFailed": int(fit["trail_flag"].sum()),
        "nEdge": int(fit["trail_flag_edge"].sum()),
    }
    return trail_alert_fields(fit, wcs), summary


def trail_alert_fields(fit: np.ndarray, wcs: WCS) -> dict[str, np.ndarray]:
    """LSST diaSource trail fields (schema units) from fit_trails rows (pixel frame)."""
    if fit.dtype != TRAIL_DTYPE:
        raise TypeError("fit must be fit_trails output (TRAIL_DTYPE)")
    n = fit.shape[0]
    out: dict[str, np.ndarray] = {k: np.full(n, np.nan) for k in TRAIL_FIELDS}
    out["trailNdata"] = fit["trailNdata"].astype(np.int64)
    out["trail_flag"] = fit["trail_flag"].copy()
    out["trail_flag_edge"] = fit["trail_flag_edge"].copy()
    ok = ~fit["trail_flag"] & np.isfinite(fit["trailX"]) & np.isfinite(fit["trailY"])
    if not ok.any():
        return out
    f = fit[ok]
    ra, dec, jac = local_jacobians(wcs, f["trailX"], f["trailY"])  # deg (east, north) per px
    sky = sky_errors(ra, dec, jac, f["trailXErr"], f["trailYErr"])
    out["trailRa"][ok], out["trailDec"][ok] = sky["ra"], sky["dec"]
    out["trailRaErr"][ok], out["trailDecErr"][ok] = sky["raErr"], sky["decErr"]
    out["trailFlux"][ok], out["trailFluxErr"][ok] = f["trailFlux"], f["trailFluxErr"]
    out["trailChi2"][ok] = f["trailChi2"]

    def bearing(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(arcsec per px along theta, bearing of theta in degrees east of north)."""
        return sky_offset(jac, np.cos(theta), np.sin(theta))

    theta = np.radians(f["trailAngle"])
    scale, angle = bearing(theta)
    out["trailLength"][ok] = f["trailLength"] * scale
    out["trailLengthErr"][ok] = f["trailLengthErr"] * scale
    out["trailAngle"][ok] = angle % 180.0
    # d(bearing)/d(theta) by a central difference (1 for a conformal WCS, near it otherwise).
    h = math.radians(0.5)
    _, up = bearing(theta + h)
    _, down = bearing(theta - h)
    slope = np.abs(((up - down + 180.0) % 360.0 - 180.0) / math.degrees(2 * h))
    out["trailAngleErr"][ok] = f["trailAngleErr"] * slope
    return out
