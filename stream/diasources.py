"""From measured rows to LSST diaSource records: ids, sky coordinates, units, schema.

Shared by ``diffstream subtract`` (stream.pipeline) and ``diffstream detect``
(stream.detect_only) so that both write exactly the same fields in the same units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jitcore.ids import IdFactory
from stream.alerts import dia_source_record
from stream.exposure import Exposure
from stream.skycoords import moments_to_sky, pixel_to_sky

__all__ = ["assign_ids", "dia_source_records"]


def assign_ids(exposure: Exposure, n: int, *, exposure_bits: int) -> np.ndarray:
    """``n`` diaSourceIds of this exposure (the caller's row order must be deterministic)."""
    exp_id = exposure.exposure_id if exposure.exposure_id is not None else 0
    return IdFactory(exp_id, exposure_bits).make_ids(n)


def dia_source_records(
    rows: np.ndarray,
    ids: np.ndarray,
    exposure: Exposure,
    *,
    processed_mjd_tai: float,
    row_fields: Callable[[int], Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One schema-complete diaSource dict per measured row.

    Positions go to ra/dec with errors through the WCS; moments from px^2 to arcsec^2 (the
    schema's units); ``row_fields(i)`` adds per-row fields of later stages (dipoles);
    ``overrides`` fixes fields for every row (e.g. null forced fluxes in detect-only).
    """
    wcs = exposure.wcs
    sky = pixel_to_sky(wcs, rows["x"], rows["y"], rows["xErr"], rows["yErr"])
    for suffix in ("", "PSF"):
        sky[f"ixx{suffix}"], sky[f"iyy{suffix}"], sky[f"ixy{suffix}"] = moments_to_sky(
            wcs, rows["x"], rows["y"],
            rows[f"ixx{suffix}"], rows[f"iyy{suffix}"], rows[f"ixy{suffix}"],
        )  # fmt: skip
    names = rows.dtype.names or ()
    out: list[dict[str, Any]] = []
    for i in range(len(rows)):
        row: dict[str, Any] = {n: rows[n][i] for n in names}
        row.update({k: v[i] for k, v in sky.items()})
        if row_fields is not None:
            row.update(row_fields(i))
        row["diaSourceId"] = int(ids[i])
        # Trails are not measured yet: 0 data points (a required field of the schema).
        row.setdefault("trailNdata", 0)
        if overrides:
            row.update(overrides)
        out.append(
            dia_source_record(
                row,
                visit=exposure.visit or 0,
                detector=exposure.detector or 0,
                midpoint_mjd_tai=exposure.midpoint_mjd_tai or 0.0,
                band=exposure.band,
                time_processed_mjd_tai=processed_mjd_tai,
                exposure_time=exposure.exposure_time,
                ignore_extra=True,
            )
        )
    return out
