"""The dipole step of the pipeline: fit, classify, merge, and convert to alert fields.

One call for ``subtract`` (ZOGY or AL) and ``detect``: :func:`measure_dipoles` runs
diffstream.jitcore.dipole.fit_dipoles on the detections and their measurements, merges each
classified dipole into one diaSource (jitcore.dipole.merge_dipoles) when asked, and returns
the diaSource fields in the LSST schema's units (:func:`dipole_alert_fields`: dipoleLength
in arcsec, dipoleAngle a bearing on the sky).

Settings (read with defaults, so this works whether or not the fields exist yet):
``dipole_fit`` (on), ``dipole_merge`` (on), ``dipole_snr_min`` (5 sqrt 2),
``dipole_max_flux_ratio`` (0.65), ``dipole_max_area`` (1200 px), ``dipole_max_separation``
(5 PSF sigma), ``dipole_rel_weight`` (0.5), ``dipole_radius`` (10 px, detect's pairing
radius; the caller passes it to diffstream.jitcore.detect.detect), ``dipole_lobe_snr_min``
(3: the matched-filter S/N of an undetected opposite-sign lobe that makes a single-sign
source a dipole candidate; None turns the search off).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.wcs import WCS

from diffstream.jitcore.dipole import DIPOLE_DTYPE, fit_dipoles, merge_dipoles
from diffstream.stream.alerts.skycoords import local_jacobians, sky_offset

__all__ = ["DIPOLE_DEFAULTS", "DipoleStep", "dipole_alert_fields", "dipole_options",
           "measure_dipoles"]  # fmt: skip

DIPOLE_DEFAULTS: dict[str, Any] = {
    "dipole_fit": True,
    "dipole_merge": True,
    "dipole_snr_min": 5.0 * math.sqrt(2.0),
    "dipole_max_flux_ratio": 0.65,
    "dipole_max_area": 1200,
    "dipole_max_separation": 5.0,
    "dipole_rel_weight": 0.5,
    "dipole_radius": 10.0,
    "dipole_lobe_snr_min": 3.0,
}

# The LSST diaSource fields this step fills.
ALERT_FIELDS = (
    "dipoleMeanFlux",
    "dipoleMeanFluxErr",
    "dipoleFluxDiff",
    "dipoleFluxDiffErr",
    "dipoleLength",
    "dipoleAngle",
    "dipoleChi2",
    "dipoleNdata",
    "isDipole",
    "dipoleFitAttempted",
)


def dipole_options(settings: Any) -> dict[str, Any]:
    """The dipole knobs of ``settings`` (a Settings or any object), defaults where absent."""
    return {k: getattr(settings, k, v) for k, v in DIPOLE_DEFAULTS.items()}


@dataclass
class DipoleStep:
    sources: (
        np.ndarray
    )  # detections, merged dipoles removed (diffstream.jitcore.detect.SOURCE_DTYPE)
    rows: np.ndarray  # measurements, merged dipoles moved to their centroid
    dipoles: np.ndarray  # DIPOLE_DTYPE, aligned with rows
    alert_fields: dict[str, np.ndarray]  # ALERT_FIELDS in schema units, aligned with rows
    index: np.ndarray  # original row of each kept row
    summary: dict[str, Any] = field(default_factory=dict)
    fitted: bool = True  # dipole_fit was on

    def row_fields(self, i: int) -> dict[str, Any]:
        """Alert fields of row ``i``.

        isDipole is False for a source with no opposite-sign detection beside it (one sign:
        not a dipole, a definite answer brokers filter on; it used to be null), and None
        (null: not measured) only when dipole fitting is off."""
        out = {k: v[i] for k, v in self.alert_fields.items()}
        if not out["dipoleFitAttempted"]:
            out["isDipole"] = False if self.fitted else None
        return out


def measure_dipoles(
    sources: np.ndarray,
    rows: np.ndarray,
    *,
    difference: np.ndarray,
    difference_variance: np.ndarray,
    psf_d_at: Callable[[float, float], np.ndarray],
    wcs: WCS,
    settings: Any,
    science: np.ndarray | None = None,
    science_variance: np.ndarray | None = None,
    psf_science_at: Callable[[float, float], np.ndarray] | None = None,
    template: np.ndarray | None = None,
    template_variance: np.ndarray | None = None,
    psf_template_at: Callable[[float, float], np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    mask_planes: Mapping[str, int] | None = None,
    score: np.ndarray | None = None,
) -> DipoleStep:
    """Fit dipoles (science/template optional, both or neither), merge, convert.

    ``sources``/``rows``: detect and measure outputs, same order.  With ``dipole_fit`` off
    nothing is fitted (every row: dipoleFitAttempted False, dipoleNdata 0).  ``summary``
    holds nPairs (fits attempted), nDipoles (classified), nMerged.
    """
    opts = dipole_options(settings)
    n = sources.shape[0]
    if opts["dipole_fit"]:
        dip = fit_dipoles(
            sources, rows, difference, difference_variance, psf_d_at,
            science=science, science_variance=science_variance, psf_science_at=psf_science_at,
            template=template, template_variance=template_variance,
            psf_template_at=psf_template_at, rel_weight=opts["dipole_rel_weight"],
            mask=mask, mask_planes=mask_planes, snr_min=opts["dipole_snr_min"],
            max_flux_ratio=opts["dipole_max_flux_ratio"], max_area=opts["dipole_max_area"],
            max_separation=opts["dipole_max_separation"],
            lobe_snr_min=opts["dipole_lobe_snr_min"], score=score,
        )  # fmt: skip
    else:
        dip = np.zeros(n, dtype=DIPOLE_DTYPE)
        for name in DIPOLE_DTYPE.names or ():
            if DIPOLE_DTYPE[name].kind == "f":
                dip[name] = np.nan
        dip["dipolePartner"] = -1
        dip["dipoleFitCode"] = -1
    summary = {
        "nPairs": int(((dip["dipoleLobe"] > 0) & (dip["dipolePartner"] >= 0)).sum()),
        "nDipoles": int(
            ((dip["dipoleLobe"] > 0) & (dip["dipolePartner"] >= 0) & dip["isDipole"]).sum()
        ),
        "nMerged": 0,
        # Fits of a detected lobe with an undetected partner (dipolePartner -1).
        "nSingleLobe": int(((dip["dipoleLobe"] != 0) & (dip["dipolePartner"] < 0)).sum()),
        "nSingleLobeDipoles": int(
            ((dip["dipoleLobe"] != 0) & (dip["dipolePartner"] < 0) & dip["isDipole"]).sum()
        ),
    }
    index = np.arange(n)
    if opts["dipole_merge"]:
        rows, dip, index = merge_dipoles(rows, dip)
        sources = sources[index]
        summary["nMerged"] = int(n - index.size)
    return DipoleStep(
        sources=sources,
        rows=rows,
        dipoles=dip,
        alert_fields=dipole_alert_fields(dip, wcs),
        index=index,
        summary=summary,
        fitted=bool(opts["dipole_fit"]),
    )


def dipole_alert_fields(dipoles: np.ndarray, wcs: WCS) -> dict[str, np.ndarray]:
    """LSST diaSource dipole fields from jitcore.dipole.fit_dipoles rows, in schema units.

    dipoleLength: arcsec, through the local WCS Jacobian at the dipole centroid.
    dipoleAngle: bearing of the negative -> positive lobe vector on the sky, degrees from
    north through east in [0, 360) (the schema: "angle between the meridian through the
    centroid and the dipole direction ... from negative to positive lobe").  Fluxes, chi2,
    ndata and the flags pass through; values of pairs not fitted stay NaN (the alert layer
    writes null).  Returns a dict of arrays keyed by the schema's field names.
    """
    n = dipoles.shape[0]
    out = {name: np.asarray(dipoles[name]).copy() for name in ALERT_FIELDS}
    length = np.full(n, np.nan)
    angle = np.full(n, np.nan)
    x, y = dipoles["dipoleX"], dipoles["dipoleY"]
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(dipoles["dipoleLength"])
    if ok.any():
        _, _, jac = local_jacobians(wcs, x[ok], y[ok])  # deg of (east, north) per px
        dx = dipoles["dipolePosX"][ok] - dipoles["dipoleNegX"][ok]
        dy = dipoles["dipolePosY"][ok] - dipoles["dipoleNegY"][ok]
        length[ok], bearing = sky_offset(jac, dx, dy)
        angle[ok] = bearing % 360.0
    out["dipoleLength"] = length
    out["dipoleAngle"] = angle
    return out
