"""The per-exposure APDB step: association, forced photometry, diaObject summaries, history.

:func:`associate_exposure` runs after measurement (stream/pipeline/subtract.py calls it when
``settings.apdb`` names a database), in one transaction of :meth:`Apdb.exposure`:

1. lock the HEALPix cells of the footprint (+ margin), load the diaObjects in them;
2. associate (association.py); store the diaSources with their diaObjectId;
3. forced PSF photometry on the difference and the science image at every diaObject whose
   position falls on the detector (the new ones included) -> DiaForcedSource;
4. update the summary of every diaObject this exposure changes -> DiaObject: the diaSource
   part recomputed from its diaSources (objects with a diaSource here), the forced means
   from exact running sums (DiaObjectFluxSums) that this visit's forced source is added to,
   equal bit for bit to a recompute from the whole history;
5. fill the alerts: ``diaObject`` (the summary as of this exposure: rows up to its midpoint),
   ``prvDiaSources`` / ``prvDiaForcedSources`` (rows before it, within
   ``apdb_history_months``), by time.

Replays and crashes (exactly-once included).  Every row is keyed on a deterministic id: the
diaSourceId, a new diaObject's creating diaSourceId, and a forced source's hash of
(diaObjectId, visit, detector).  A stored diaSource keeps the diaObject it was given, stored
rows are never rewritten, a forced source already stored is not added to the running sums
again, and an alert only shows rows up to its own exposure.  So a second run of an exposure,
whether a replay or the retry of an event whose worker died after the APDB commit and before
its alerts were committed to Kafka, writes no row and produces byte-identical
diaObject/history fields: the alerts that finally get out agree with the APDB, at whatever
point the crash happened (before the commit, nothing was written; after it, the rerun
reproduces the same alerts).  tests/unit/test_apdb.py and
tests/science/test_apdb_sequence.py check it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from diffstream.jitcore.measure import forced_psf_flux
from diffstream.stream.alerts.diaobjects import (
    DIA_FORCED_SOURCE_SPECS,
    FluxSums,
    dia_object_summary,
    flux_sums_of,
    record_of,
    with_flux_sums,
)
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.apdb.association import associate, separation_arcsec
from diffstream.stream.pipeline.apdb.store import Apdb, cone_pixels, open_apdb, sky_pixels

__all__ = ["associate_exposure", "forced_source_id", "footprint"]

log = logging.getLogger("diffstream.apdb")
_DAYS_PER_MONTH = 365.25 / 12.0


def forced_source_id(dia_object_id: int, visit: int, detector: int) -> int:
    """A 63-bit id of one forced measurement, the same on every run (writes key on it)."""
    blob = f"{int(dia_object_id)}:{int(visit)}:{int(detector)}".encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") >> 1


def footprint(exposure: Exposure) -> tuple[float, float, float]:
    """(ra, dec, radius) [deg] of a circle holding the whole detector."""
    ny, nx = exposure.shape
    xs = np.array([(nx - 1) / 2.0, -0.5, nx - 0.5, nx - 0.5, -0.5])
    ys = np.array([(ny - 1) / 2.0, -0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = exposure.wcs.all_pix2world(xs, ys, 0)
    radius = float(separation_arcsec(ra[0], dec[0], ra[1:], dec[1:]).max()) / 3600.0
    return float(ra[0]), float(dec[0]), radius


def associate_exposure(
    exposure: Exposure,
    dia_sources: list[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    images: Mapping[str, Any],
    *,
    settings: Settings,
    apdb: Apdb | None = None,
    processed_mjd_tai: float,
) -> dict[str, Any]:
    """Associate this exposure's diaSources, store them and forced photometry, and fill the
    alerts' diaObject and history (module docstring).  Returns counts and timings for the
    task metadata.  ``apdb`` defaults to :func:`open_apdb` of ``settings.apdb``."""
    if exposure.exposure_id is None:
        # diaSourceIds would then start from exposure 0 for every such exposure, and the
        # APDB, keyed on them, would take one exposure's sources for another's replay.
        msg = "an APDB needs the exposure id (diaSourceIds key its rows): give --exposure-id"
        raise BadExposure(msg + " or an exposure id in the header", path=exposure.path)
    if apdb is None:
        if not settings.apdb:
            raise ValueError("associate_exposure needs settings.apdb or an apdb")
        apdb = open_apdb(settings.apdb)
    radius = settings.association_radius_arcsec
    visit, detector = int(exposure.visit or 0), int(exposure.detector or 0)
    mjd = float(exposure.midpoint_mjd_tai or 0.0)
    ra0, dec0, fp_radius = footprint(exposure)
    # The margin: a source on the edge matches an object up to `radius` beyond it.
    cells = cone_pixels(ra0, dec0, fp_radius + radius / 3600.0)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sid = np.array([s["diaSourceId"] for s in dia_sources], dtype=np.int64)
    s_ra = np.array([s["ra"] for s in dia_sources], dtype=np.float64)
    s_dec = np.array([s["dec"] for s in dia_sources], dtype=np.float64)
    with apdb.exposure(cells) as conn:
        timings["lock"] = time.perf_counter() - t0
        objects = apdb.objects_in(conn, cells)
        known = apdb.source_objects(conn, sid.tolist())
        timings["load"] = time.perf_counter() - t0
        assoc = associate(
            sid, s_ra, s_dec, objects["diaObjectId"], objects["ra"], objects["dec"],
            radius_arcsec=radius, known=known,
        )  # fmt: skip
        for src, oid in zip(dia_sources, assoc.dia_object_id.tolist(), strict=True):
            src["diaObjectId"] = oid
        apdb.insert_sources(conn, [s for s in dia_sources if s["diaSourceId"] not in known])
        timings["associate"] = time.perf_counter() - t0

        # Forced photometry at every object on the detector: the stored ones and the new.
        new = assoc.is_new
        o_id = np.concatenate([objects["diaObjectId"], sid[new]])
        o_ra = np.concatenate([objects["ra"], s_ra[new]])
        o_dec = np.concatenate([objects["dec"], s_dec[new]])
        forced = _forced_rows(
            exposure, images, o_id, o_ra, o_dec, visit=visit, detector=detector, mjd=mjd,
            processed_mjd_tai=processed_mjd_tai,
        )  # fmt: skip
        # A replay's forced sources are stored already: they must not enter the running
        # sums twice (the insert below leaves them as they are).
        replayed = apdb.stored_forced(conn, forced)
        apdb.insert_forced(conn, forced)
        fresh = [f for f in forced if f["diaObjectId"] not in replayed]
        timings["forced"] = time.perf_counter() - t0

        # Summaries, only of the diaObjects this exposure changes, and without their forced
        # history: the forced means come from exact running sums (diaobjects.FluxSums, the
        # same values as a recompute from every row), updated with this visit's one forced
        # source per object.  An object with a diaSource here gets the diaSource part
        # recomputed from its diaSources (tens of rows); one with only a forced source keeps
        # its stored record and gets new forced means.
        with_source = sorted(set(assoc.dia_object_id.tolist()))
        created = set(sid[new].tolist())
        forced_only = sorted({f["diaObjectId"] for f in fresh} - set(with_source))
        sums = apdb.flux_sums(conn, [*with_source, *forced_only])
        # A stored record made without any forced source may be dia_object_summary's
        # one-diaSource shortcut, whose position is not bit for bit the general one's: such
        # an object (rare: its diaSource fell off the detector's forced photometry) has its
        # record recomputed from its diaSources, so that it equals a recompute from history.
        recompute = sorted(set(with_source) | {o for o in forced_only if o not in sums})
        forced_only = [o for o in forced_only if o in sums]
        changed: dict[int, dict[tuple[str, str], FluxSums]] = {}
        for row in fresh:
            oid = row["diaObjectId"]
            changed[oid] = flux_sums_of([row], into=sums.setdefault(oid, {}))
        apdb.upsert_flux_sums(conn, changed)
        # A diaObject created just now has no stored row but the two written above (its
        # diaSource, its forced source): those come from memory, the others' from the
        # database (reading back what had just been written was a third of the summaries'
        # time at 100k diaSources, benchmarks/bench_apdb.py).
        by_object: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for src in dia_sources:
            if src["diaObjectId"] in created:
                by_object[src["diaObjectId"]].append(src)
        for row in apdb.sources_of(conn, [o for o in recompute if o not in created]):
            by_object[row["diaObjectId"]].append(row)
        # No sums: no forced source yet, as dia_object_summary(sources) alone would see it.
        summaries = [
            dia_object_summary(oid, by_object[oid], flux_sums=sums.get(oid) or None)
            for oid in recompute
        ]
        stored = apdb.objects(conn, forced_only)
        summaries += [with_flux_sums(stored[oid], sums[oid]) for oid in forced_only]
        if summaries:
            pixels = sky_pixels(
                np.array([s["ra"] for s in summaries]), np.array([s["dec"] for s in summaries])
            )
            rows = [{**s, "pixelId": int(p)} for s, p in zip(summaries, pixels, strict=True)]
            apdb.upsert_objects(conn, rows)
        timings["summaries"] = time.perf_counter() - t0

        # The alerts' forced history: the last apdb_history_months of the alerted objects;
        # the whole of it for an object with rows after this exposure (a reprocessed older
        # exposure, whose alert shows the object as it was then: _fill_alerts).
        since = mjd - settings.apdb_history_months * _DAYS_PER_MONTH
        forced_by_object: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in fresh:
            if row["diaObjectId"] in created:
                forced_by_object[row["diaObjectId"]].append(row)
        old_objects = [o for o in with_source if o not in created]
        for row in apdb.forced_of(conn, old_objects, since=since):
            forced_by_object[row["diaObjectId"]].append(row)
        later = [
            oid
            for oid in old_objects
            if any(r["midpointMjdTai"] > mjd for r in (*by_object[oid], *forced_by_object[oid]))
        ]
        if later:
            for oid in later:
                forced_by_object[oid] = []
            for row in apdb.forced_of(conn, later):
                forced_by_object[row["diaObjectId"]].append(row)

    latest = {s["diaObjectId"]: s for s in summaries}
    _fill_alerts(
        alerts, by_object, forced_by_object, latest, mjd=mjd, months=settings.apdb_history_months
    )
    timings["alerts"] = time.perf_counter() - t0
    return {
        "nObjectsLoaded": int(objects["diaObjectId"].size),
        "nNewObjects": int(new.sum()),
        "nMatched": int((~new).sum() - assoc.n_kept),
        "nAlreadyAssociated": assoc.n_kept,
        "nClashes": assoc.n_clashes,
        "nForced": len(forced),
        "nObjectsUpdated": len(summaries),
        "cells": len(cells),
        "timings": timings,
    }


def _forced_rows(
    exposure: Exposure,
    images: Mapping[str, Any],
    o_id: np.ndarray,
    o_ra: np.ndarray,
    o_dec: np.ndarray,
    *,
    visit: int,
    detector: int,
    mjd: float,
    processed_mjd_tai: float,
) -> list[dict[str, Any]]:
    if o_id.size == 0:
        return []
    x, y = exposure.wcs.all_world2pix(o_ra, o_dec, 0)
    ny, nx = exposure.shape
    on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5)
    on &= y < ny - 0.5
    if not on.any():
        return []
    x, y = x[on], y[on]
    common = {"mask": images["mask"], "mask_planes": images["mask_planes"]}
    d_flux, d_err, _ = forced_psf_flux(
        images["difference"], images["difference_variance"], images["psf_d_at"], x, y, **common
    )
    s_flux, s_err, _ = forced_psf_flux(
        images["science"], images["science_variance"], images["psf_science_at"], x, y, **common
    )
    rows = []
    for k, (oid, ra, dec) in enumerate(zip(o_id[on], o_ra[on], o_dec[on], strict=True)):
        values = {
            "diaForcedSourceId": forced_source_id(int(oid), visit, detector),
            "diaObjectId": int(oid),
            "ra": float(ra),
            "dec": float(dec),
            "visit": visit,
            "detector": detector,
            "psfFlux": d_flux[k],
            "psfFluxErr": d_err[k],
            "midpointMjdTai": mjd,
            "scienceFlux": s_flux[k],
            "scienceFluxErr": s_err[k],
            "band": exposure.band,
            "timeProcessedMjdTai": processed_mjd_tai,
            "timeWithdrawnMjdTai": None,
        }
        rows.append(record_of(DIA_FORCED_SOURCE_SPECS, values))
    return rows


def _fill_alerts(
    alerts: Sequence[dict[str, Any]],
    sources: Mapping[int, list[dict[str, Any]]],
    forced: Mapping[int, list[dict[str, Any]]],
    latest: Mapping[int, dict[str, Any]],
    *,
    mjd: float,
    months: float,
) -> None:
    """Each alert's diaObject as of its exposure, and its history before it (by time).

    ``latest`` (the summaries just stored) serves when nothing of the object is later than
    this exposure: always, except when an older exposure is reprocessed."""
    since = mjd - months * _DAYS_PER_MONTH
    as_of: dict[int, dict[str, Any]] = {}
    for alert in alerts:
        oid = int(alert["diaSource"]["diaObjectId"])
        mine = sources.get(oid, [])
        mine_forced = forced.get(oid, [])
        if oid not in as_of and oid in latest:
            if not any(r["midpointMjdTai"] > mjd for r in (*mine, *mine_forced)):
                as_of[oid] = latest[oid]
        if oid not in as_of:
            upto = [s for s in mine if s["midpointMjdTai"] <= mjd] or [alert["diaSource"]]
            upto_forced = [f for f in mine_forced if f["midpointMjdTai"] <= mjd]
            as_of[oid] = dia_object_summary(oid, upto, upto_forced)
        alert["diaObject"] = as_of[oid]
        alert["prvDiaSources"] = [r for r in mine if since <= r["midpointMjdTai"] < mjd]
        alert["prvDiaForcedSources"] = [
            r for r in mine_forced if since <= r["midpointMjdTai"] < mjd
        ]
