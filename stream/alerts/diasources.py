"""From measured rows to LSST diaSource records: ids, sky coordinates, units, schema.

Shared by ``diffstream subtract`` (diffstream.stream.pipeline.subtract) and ``diffstream detect``
(stream.pipeline.detect_only) so that both write exactly the same fields in the same units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from diffstream.jitcore.ids import IdFactory
from diffstream.stream.alerts.packets import dia_source_batch
from diffstream.stream.alerts.skycoords import moments_to_sky, pixel_to_sky
from diffstream.stream.io.exposure import Exposure

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
    n = len(rows)
    columns: dict[str, Any] = {name: rows[name] for name in rows.dtype.names or ()}
    columns.update(sky)
    if row_fields is not None and n:
        extra = [row_fields(i) for i in range(n)]
        keys = list(extra[0])
        if any(list(e) != keys for e in extra):
            msg = "row_fields must give the same keys for every row"
            raise ValueError(msg)
        columns.update({key: [e[key] for e in extra] for key in keys})
    columns["diaSourceId"] = np.asarray(ids[:n], dtype=np.int64)
    # Trails not measured (a caller without the trail step): 0 data points, a required
    # field of the schema; stream.pipeline.trails fills it otherwise.
    columns.setdefault("trailNdata", np.zeros(n, dtype=np.int64))
    for key, value in (overrides or {}).items():
        columns[key] = [value] * n
    return dia_source_batch(
        columns,
        n,
        visit=exposure.visit or 0,
        detector=exposure.detector or 0,
        midpoint_mjd_tai=exposure.midpoint_mjd_tai or 0.0,
        band=exposure.band,
        time_processed_mjd_tai=processed_mjd_tai,
        exposure_time=exposure.exposure_time,
        ignore_extra=True,
    )
