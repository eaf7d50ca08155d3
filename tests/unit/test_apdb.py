"""The APDB (issue 14) on SQLite: association rules, summaries, schema versions, the
per-exposure step (forced photometry, histories, replay), and two workers on one file."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from diffstream.stream.alerts.diaobjects import dia_object_summary
from diffstream.stream.alerts.packets import dia_source_record, make_alert
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import ApdbError, ApdbUnavailable, BadExposure, ConfigError
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.apdb.association import associate, separation_arcsec
from diffstream.stream.pipeline.apdb.schema import SCHEMA_VERSION
from diffstream.stream.pipeline.apdb.step import associate_exposure, forced_source_id
from diffstream.stream.pipeline.apdb.store import Apdb, cone_pixels, sky_pixels
from diffstream.stream.sim.render import add_point_sources
from tests.apdb_helpers import apdb_url, images_of, synthetic_exposure  # noqa: F401

ARCSEC = 1.0 / 3600.0
RA0, DEC0 = 150.0, 2.0


# -- association ----------------------------------------------------------------------------
def _assoc(src: list[tuple[int, float, float]], obj: list[tuple[int, float, float]], **kw):
    s = np.array(src, dtype=float).reshape(-1, 3)
    o = np.array(obj, dtype=float).reshape(-1, 3)
    return associate(
        s[:, 0].astype(np.int64), s[:, 1], s[:, 2], o[:, 0].astype(np.int64), o[:, 1], o[:, 2],
        radius_arcsec=kw.pop("radius_arcsec", 1.0), **kw,
    )  # fmt: skip


def test_nearest_object_within_radius_else_new():
    objects = [(10, RA0, DEC0), (11, RA0 + 1.3 * ARCSEC, DEC0)]
    # 0.5" from 10, 0.8" from 11 (RA offsets shrink by cos dec: both well inside 1").
    src = [(1, RA0 + 0.5 * ARCSEC, DEC0), (2, RA0, DEC0 + 3 * ARCSEC)]
    a = _assoc(src, objects)
    assert a.dia_object_id.tolist() == [10, 2]
    assert a.is_new.tolist() == [False, True]
    assert a.distance_arcsec[0] == pytest.approx(0.5 * np.cos(np.radians(DEC0)), rel=1e-6)


def test_two_to_one_clash_nearer_source_wins_whatever_the_order():
    objects = [(10, RA0, DEC0)]
    src = [(1, RA0, DEC0 + 0.6 * ARCSEC), (2, RA0, DEC0 - 0.3 * ARCSEC)]
    for order in (src, src[::-1]):
        a = _assoc(order, objects)
        got = dict(zip([s[0] for s in order], a.dia_object_id.tolist(), strict=True))
        assert got == {2: 10, 1: 1}  # the loser starts its own object, numbered by its id
        assert a.n_clashes == 1


def test_clash_loser_takes_its_next_candidate():
    objects = [(10, RA0, DEC0), (11, RA0, DEC0 + 1.2 * ARCSEC)]
    src = [(1, RA0, DEC0 + 0.4 * ARCSEC), (2, RA0, DEC0 + 0.1 * ARCSEC)]
    a = _assoc(src, objects)
    assert a.dia_object_id.tolist() == [11, 10]


def test_equal_distances_break_ties_by_ids():
    objects = [(10, RA0, DEC0)]
    src = [(7, RA0, DEC0 + 0.5 * ARCSEC), (3, RA0, DEC0 - 0.5 * ARCSEC)]
    assert _assoc(src, objects).dia_object_id.tolist() == [7, 10]


def test_known_sources_keep_their_object():
    objects = [(10, RA0, DEC0), (11, RA0, DEC0 + 0.9 * ARCSEC)]
    a = _assoc([(1, RA0, DEC0)], objects, known={1: 11})
    assert a.dia_object_id.tolist() == [11] and a.n_kept == 1 and not a.is_new[0]


def test_associate_checks_its_input():
    with pytest.raises(ValueError, match="radius_arcsec must be > 0"):
        _assoc([(1, RA0, DEC0)], [], radius_arcsec=0.0)
    with pytest.raises(ValueError, match="source ids must be unique"):
        _assoc([(1, RA0, DEC0), (1, RA0, DEC0)], [])


def test_separation_matches_astropy():
    rng = np.random.default_rng(1)
    ra1, dec1 = rng.uniform(0, 360, 50), rng.uniform(-89, 89, 50)
    ra2, dec2 = ra1 + rng.normal(0, 1e-3, 50), dec1 + rng.normal(0, 1e-3, 50)
    want = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).arcsec
    np.testing.assert_allclose(separation_arcsec(ra1, dec1, ra2, dec2), want, rtol=1e-9)


def test_cone_pixels_hold_every_position_in_the_cone():
    rng = np.random.default_rng(2)
    for ra, dec in ((10.0, 0.0), (359.99, -30.0), (45.0, 89.9)):
        radius = 0.1
        cells = set(cone_pixels(ra, dec, radius))
        # Points spread over the disc, up to its edge, including across RA = 0 and the pole.
        r = radius * np.sqrt(rng.uniform(0, 1, 2000))
        theta = rng.uniform(0, 2 * np.pi, 2000)
        c = SkyCoord(ra, dec, unit="deg").directional_offset_by(theta * u.rad, r * u.deg)
        pix = sky_pixels(c.ra.deg, c.dec.deg)
        assert set(pix.tolist()) <= cells


# -- diaObject summary ----------------------------------------------------------------------
def _source(sid: int, mjd: float, flux: float, err: float, *, band: str = "r", ra=RA0, dec=DEC0):
    row = {
        "diaSourceId": sid, "ra": ra, "dec": dec, "raErr": 1e-5, "decErr": 1e-5, "x": 1.0,
        "y": 1.0, "psfFlux": flux, "psfFluxErr": err, "psfNdata": 9, "trailNdata": 0,
        "dipoleNdata": 0, "bboxSize": 15,
    }  # fmt: skip
    return dia_source_record(
        row, visit=sid, detector=0, midpoint_mjd_tai=mjd, band=band,
        time_processed_mjd_tai=mjd, exposure_time=30.0,
    )  # fmt: skip


def test_summary_statistics_against_numpy():
    flux = np.array([100.0, 140.0, 90.0, 200.0])
    err = np.array([10.0, 20.0, 10.0, 40.0])
    mjd = np.array([1.0, 2.0, 4.0, 5.0]) + 60000.0
    srcs = [_source(i, m, f, e) for i, (m, f, e) in enumerate(zip(mjd, flux, err, strict=True))]
    srcs.append(_source(99, 60003.0, 55.0, 5.0, band="g"))
    obj = dia_object_summary(7, srcs[::-1])  # order does not matter
    w = 1 / err**2
    f32 = np.float32
    assert obj["r_psfFluxMean"] == f32((w * flux).sum() / w.sum())
    assert obj["r_psfFluxMeanErr"] == f32(1 / np.sqrt(w.sum()))
    assert obj["r_psfFluxSigma"] == f32(np.std(flux, ddof=1))
    assert obj["r_psfFluxNdata"] == 4 and obj["g_psfFluxNdata"] == 1 and obj["u_psfFluxNdata"] == 0
    assert obj["r_psfFluxMin"] == 90.0 and obj["r_psfFluxMax"] == 200.0
    assert obj["r_psfFluxMaxSlope"] == f32(np.max(np.abs(np.diff(flux) / np.diff(mjd))))
    assert obj["r_psfFluxErrMean"] == f32(err.mean())
    assert obj["nDiaSources"] == 5 and obj["diaObjectId"] == 7
    assert obj["firstDiaSourceMjdTai"] == 60001.0 and obj["lastDiaSourceMjdTai"] == 60005.0
    assert obj["u_psfFluxMean"] is None and obj["g_psfFluxSigma"] is None
    assert obj["ra"] == pytest.approx(RA0) and obj["dec"] == pytest.approx(DEC0)
    assert obj["raErr"] == f32(1e-5 / np.sqrt(5))


def test_summary_position_across_ra_zero():
    srcs = [_source(1, 60000.0, 1.0, 1.0, ra=359.9999), _source(2, 60001.0, 1.0, 1.0, ra=0.0001)]
    obj = dia_object_summary(1, srcs)
    assert min(obj["ra"], 360 - obj["ra"]) < 1e-9


def test_summary_needs_a_source():
    with pytest.raises(ValueError, match="needs at least one diaSource"):
        dia_object_summary(1, [])


# -- the store ------------------------------------------------------------------------------
def test_store_created_on_first_use_and_versioned(apdb_url):  # noqa: F811
    url = apdb_url("sqlite")
    db = Apdb(url)
    assert db.version() == SCHEMA_VERSION
    assert db.stats() | {"url": None} == {
        "url": None, "version": SCHEMA_VERSION, "DiaObject": 0, "DiaSource": 0,
        "DiaForcedSource": 0,
    }  # fmt: skip
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE \"ApdbMeta\" SET value = '0' WHERE name = 'version'")
    with pytest.raises(ApdbError, match=rf"version 0 < {SCHEMA_VERSION}: run `diffstream apdb up"):
        Apdb(url)
    assert Apdb(url, create=False).upgrade() == (0, SCHEMA_VERSION)
    assert Apdb(url).version() == SCHEMA_VERSION
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE \"ApdbMeta\" SET value = '99' WHERE name = 'version'")
    with pytest.raises(ApdbError, match="schema version 99 is newer"):
        Apdb(url)


def test_store_refuses_a_missing_database_without_create(apdb_url):  # noqa: F811
    with pytest.raises(ApdbError, match="run `diffstream apdb init`"):
        Apdb(apdb_url("sqlite"), create=False)


def test_an_unreachable_server_is_unavailable_not_bad_input():
    import socket

    # A port nobody listens on (bound, then released): connection refused, as a server that
    # is down gives.  The worker retries ApdbUnavailable instead of dead-lettering the event.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ApdbUnavailable, match="cannot open the APDB at postgresql") as info:
        Apdb(f"postgresql://nobody@127.0.0.1:{port}/apdb")
    assert info.value.retriable and info.value.kind == "apdb"
    assert info.value.to_record()["error"] == "ApdbUnavailable"


def test_refusals_and_sqlite_errors_are_not_retriable(apdb_url):  # noqa: F811
    # A database of the wrong version, or a failing SQLite file, is no outage: a retry
    # cannot cure it, so it is dead-lettered as before.
    with pytest.raises(ApdbError) as info:
        Apdb(apdb_url("sqlite"), create=False)
    assert not info.value.retriable
    db = Apdb(apdb_url("sqlite"))
    with pytest.raises(ApdbError, match="APDB transaction failed") as info:
        with db.exposure([1]) as conn:
            conn.exec_driver_sql('SELECT * FROM "NoSuchTable"')
    assert not info.value.retriable


def test_a_sqlite_file_locked_past_the_busy_timeout_is_unavailable(apdb_url):  # noqa: F811
    """Another process holding SQLite's write lock longer than the busy timeout is an outage
    of the APDB, not bad input: ApdbUnavailable, which the worker retries."""
    import sqlite3

    url = apdb_url("sqlite")
    db = Apdb(url, busy_timeout_s=0.2)
    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the one write lock, as a second worker holds it
        with pytest.raises(ApdbUnavailable, match="locked") as info:
            with db.exposure([1]) as conn:
                conn.exec_driver_sql('SELECT COUNT(*) FROM "DiaObject"')
        assert info.value.retriable
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with db.exposure([1]) as conn:  # the lock gone, the same call succeeds
        conn.exec_driver_sql('SELECT COUNT(*) FROM "DiaObject"')


def test_store_refuses_other_databases():
    with pytest.raises(ConfigError, match="must start with sqlite:/// or postgresql://"):
        Apdb("mysql://localhost/apdb")


# -- the per-exposure step ------------------------------------------------------------------
STARS = [(40.3, 50.2, 400.0), (120.7, 80.4, 250.0), (160.2, 150.9, 300.0)]  # x, y, flux


def _visit(
    visit: int, fluxes: list[float], *, ra: float = RA0, seed: int = 0, dx: float = 0.0
) -> tuple[Exposure, list[dict[str, Any]], list[dict[str, Any]], dict]:
    """A synthetic exposure with point sources of ``fluxes`` at STARS (sigma-1 noise), its
    diaSource records (only the sources with flux) and their alerts."""
    exp = synthetic_exposure(ra=ra, dec=DEC0, visit=visit, mjd=60500.0 + visit)
    rng = np.random.default_rng([seed, visit])
    diff = rng.normal(0.0, 1.0, exp.shape)
    xs = np.array([s[0] for s in STARS]) + dx
    ys = np.array([s[1] for s in STARS])
    add_point_sources(diff, xs, ys, np.array(fluxes), np.full(len(STARS), 1.5))
    src = []
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if fluxes[k] == 0:
            continue
        r, d = exp.wcs.all_pix2world(x, y, 0)
        src.append(
            dia_source_record(
                {
                    "diaSourceId": exp.exposure_id * 100 + k,
                    "ra": float(r),
                    "dec": float(d),
                    "x": x,
                    "y": y,
                    "psfFlux": fluxes[k],
                    "psfFluxErr": 5.0,
                    "psfNdata": 9,
                    "trailNdata": 0,
                    "dipoleNdata": 0,
                    "bboxSize": 15,
                },
                visit=visit,
                detector=0,
                midpoint_mjd_tai=exp.midpoint_mjd_tai,
                band="r",
                time_processed_mjd_tai=60600.0,
                exposure_time=30.0,
            )  # fmt: skip
        )
    alerts = [make_alert(s, cutouts={}, task_metadata=None) for s in src]
    return exp, src, alerts, images_of(exp, diff)


def _run(url: str, visit: int, fluxes: list[float], **kw) -> tuple[list, dict]:
    exp, src, alerts, images = _visit(visit, fluxes, **kw)
    settings = Settings(apdb=url)
    done = associate_exposure(
        exp, src, alerts, images, settings=settings, apdb=Apdb(url), processed_mjd_tai=60600.0
    )
    return alerts, done


def test_step_associates_forced_photometry_and_history(apdb_url):  # noqa: F811
    url = apdb_url("sqlite")
    a1, d1 = _run(url, 1, [400.0, 250.0, 0.0])
    assert d1["nNewObjects"] == 2 and d1["nForced"] == 2
    a2, d2 = _run(url, 2, [380.0, 0.0, 300.0])
    assert (d2["nMatched"], d2["nNewObjects"], d2["nForced"]) == (1, 1, 3)
    assert a2[0]["diaObject"]["diaObjectId"] == a1[0]["diaObject"]["diaObjectId"]
    assert a2[0]["diaSource"]["diaObjectId"] == a1[0]["diaSourceId"]
    assert a2[0]["diaObject"]["nDiaSources"] == 2
    assert [s["diaSourceId"] for s in a2[0]["prvDiaSources"]] == [a1[0]["diaSourceId"]]
    assert [f["visit"] for f in a2[0]["prvDiaForcedSources"]] == [1]
    assert a2[1]["prvDiaSources"] == [] and a2[1]["prvDiaForcedSources"] == []
    # Object 2 (seen at visit 1 only) got a forced measurement at visit 2, near zero.
    db = Apdb(url)
    _, forced = db.light_curve(a1[1]["diaObject"]["diaObjectId"])
    assert [f["visit"] for f in forced] == [1, 2]
    # Sigma-1 noise: the PSF-fit error is sqrt(4 pi s^2) = 5.3 for s = 1.5 px.
    assert forced[0]["psfFlux"] == pytest.approx(250.0, abs=5 * forced[0]["psfFluxErr"])
    assert abs(forced[1]["psfFlux"]) < 5 * forced[1]["psfFluxErr"]
    assert forced[1]["psfFluxErr"] == pytest.approx(np.sqrt(4 * np.pi * 1.5**2), rel=0.05)
    assert db.object(a1[1]["diaObject"]["diaObjectId"])["r_fpFluxMean"] is not None
    assert db.stats()["DiaObject"] == 3


def test_replay_writes_nothing_and_repeats_the_alerts(apdb_url):  # noqa: F811
    url = apdb_url("sqlite")
    _run(url, 1, [400.0, 250.0, 0.0])
    first, _ = _run(url, 2, [380.0, 0.0, 300.0])
    _run(url, 3, [390.0, 260.0, 310.0])
    before = Apdb(url).stats()
    again, done = _run(url, 2, [380.0, 0.0, 300.0])
    assert Apdb(url).stats() == before
    assert done["nAlreadyAssociated"] == 2 and done["nNewObjects"] == 0
    for a, b in zip(first, again, strict=True):
        for key in ("diaObject", "prvDiaSources", "prvDiaForcedSources"):
            assert a[key] == b[key]  # visit 3, stored since, changes nothing of visit 2


def test_history_window_is_a_setting(apdb_url):  # noqa: F811
    url = apdb_url("sqlite")
    _run(url, 1, [400.0, 0.0, 0.0])
    exp, src, alerts, images = _visit(40, [400.0, 0.0, 0.0])  # 39 days later
    associate_exposure(
        exp, src, alerts, images, settings=Settings(apdb=url, apdb_history_months=1.0),
        apdb=Apdb(url), processed_mjd_tai=60600.0,
    )  # fmt: skip
    assert alerts[0]["prvDiaSources"] == [] and alerts[0]["diaObject"]["nDiaSources"] == 2


def test_step_refuses_an_exposure_without_id(apdb_url):  # noqa: F811
    url = apdb_url("sqlite")
    exp, src, alerts, images = _visit(1, [400.0, 0.0, 0.0])
    exp.exposure_id = None
    with pytest.raises(BadExposure, match="an APDB needs the exposure id"):
        associate_exposure(
            exp, src, alerts, images, settings=Settings(apdb=url), processed_mjd_tai=60600.0
        )
    assert Apdb(url).stats()["DiaSource"] == 0


def _recomputed(db: Apdb) -> tuple[dict[int, dict], dict[int, dict]]:
    """(stored diaObject records, the same recomputed from every stored row) by id."""
    t = db.tables["DiaObject"]
    with db.engine.connect() as conn:
        ids = [int(r[0]) for r in conn.execute(db.sa.select(t.c.diaObjectId))]
        stored = db.objects(conn, ids)
        sources, forced = db.sources_of(conn, ids), db.forced_of(conn, ids)
    by_src: dict[int, list] = {}
    by_forced: dict[int, list] = {}
    for row in sources:
        by_src.setdefault(row["diaObjectId"], []).append(row)
    for row in forced:
        by_forced.setdefault(row["diaObjectId"], []).append(row)
    want = {oid: dia_object_summary(oid, by_src[oid], by_forced.get(oid, [])) for oid in ids}
    return stored, want


def test_flux_sums_equal_the_weighted_mean_of_all_pairs_in_any_order():
    # Against _weighted (math.fsum over every pair), the recompute the summaries must equal:
    # seeded pairs over 6 decades, some without an error (the unweighted fallback), added
    # in a shuffled order and through a store/load round trip half-way.
    from diffstream.stream.alerts.diaobjects import FluxSums, _weighted

    rng = np.random.default_rng(7)
    for _ in range(500):
        n = int(rng.integers(1, 60))
        values = rng.normal(100.0, 300.0, n) * 10.0 ** rng.integers(-3, 4, n)
        errors = [float(e) if rng.random() > 0.1 else None for e in rng.uniform(1, 60, n)]
        pairs = list(zip(values.tolist(), errors, strict=True))
        if rng.random() < 0.1:
            pairs = [(v, None) for v, _ in pairs]
        order = rng.permutation(n)
        sums = FluxSums()
        for i in order[: n // 2]:
            sums.add(*pairs[i])
        load, dump = FluxSums.load, FluxSums.dump
        sums = FluxSums(sums.n_good, load(dump(sums.sum_w)), load(dump(sums.sum_wv)),
                        sums.n_values, load(dump(sums.sum_v)))  # fmt: skip
        for i in order[n // 2 :]:
            sums.add(*pairs[i])
        assert sums.mean() == _weighted(pairs)


def check_incremental_summaries(url: str) -> None:
    """A seeded sequence: random fluxes (visits without a detection give objects forced-only
    updates), a replay and a reprocessed old visit (precovery: forced sources added out of
    time order).  The summaries, updated from running sums and the new rows only, must equal
    field for field and bit for bit those recomputed from the whole history."""
    rng = np.random.default_rng(14)
    plan = []
    for visit in range(1, 13):
        detected = rng.random(len(STARS)) < 0.6
        fluxes = rng.uniform(150.0, 500.0, len(STARS))
        plan.append(
            (visit, [float(f) if d else 0.0 for f, d in zip(fluxes, detected, strict=True)])
        )
    for visit, fluxes in plan[1:]:  # visit 1 is processed last: precovery of later objects
        _run(url, visit, fluxes)
    _run(url, *plan[4])  # a replay
    _run(url, *plan[0])
    db = Apdb(url)
    stored, want = _recomputed(db)
    assert len(stored) >= len(STARS) and stored.keys() == want.keys()
    n_forced = db.stats()["DiaForcedSource"]
    assert n_forced > sum(r["nDiaSources"] for r in stored.values())  # forced-only updates
    for oid, record in stored.items():
        assert record == want[oid], f"diaObject {oid}"
    # The premise: the forced means are not trivial (several weighted points per band).
    assert all(r["r_fpFluxMean"] is not None for r in stored.values())
    assert max(int(r["r_psfFluxNdata"]) for r in stored.values()) >= 3


def test_incremental_summaries_equal_a_recompute_from_history(apdb_url):  # noqa: F811
    check_incremental_summaries(apdb_url("sqlite"))  # PostgreSQL: tests/integration


def test_upgrade_from_version_1_fills_the_running_sums(apdb_url):  # noqa: F811
    url = apdb_url("sqlite")
    for visit, fluxes in [(1, [400.0, 250.0, 0.0]), (2, [380.0, 0.0, 300.0])]:
        _run(url, visit, fluxes)
    db = Apdb(url)
    with db.engine.begin() as conn:  # the database as version 1 left it
        conn.exec_driver_sql('DROP TABLE "DiaObjectFluxSums"')
        conn.exec_driver_sql("UPDATE \"ApdbMeta\" SET value = '1' WHERE name = 'version'")
    with pytest.raises(ApdbError, match=r"version 1 < 2"):
        Apdb(url)
    assert Apdb(url, create=False).upgrade() == (1, SCHEMA_VERSION)
    _run(url, 3, [390.0, 260.0, 0.0])  # an update from the migrated sums
    stored, want = _recomputed(Apdb(url))
    assert stored == want and len(stored) == 3


def test_forced_source_ids_are_stable_and_distinct():
    assert forced_source_id(5, 1, 2) == forced_source_id(5, 1, 2)
    ids = {forced_source_id(o, v, 0) for o in range(100) for v in range(100)}
    assert len(ids) == 10_000 and max(ids) < 2**63


def _two_workers(url: str, seeds: range, run: Callable[..., Any]) -> None:
    """Two workers process overlapping exposures (offset 30 px) of the same sources at once."""

    def work(seed: int, visit: int, dx: float, barrier: threading.Barrier, errors: list) -> None:
        try:
            barrier.wait()
            run(url, visit, [400.0, 250.0, 300.0], seed=seed, dx=dx,
                ra=RA0 + dx * 0.2 / 3600.0 / np.cos(np.radians(DEC0)))  # fmt: skip
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    for seed in seeds:
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=work, args=(seed, 10 * seed + 1, 0.0, barrier, errors)),
            threading.Thread(target=work, args=(seed, 10 * seed + 2, -30.0, barrier, errors)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def duplicate_objects(url: str, radius_arcsec: float = 1.0) -> int:
    """diaObject pairs closer than the association radius: twins of one source."""
    db = Apdb(url)
    with db.engine.connect() as conn:
        table = db.tables["DiaObject"]
        rows = np.array(list(conn.execute(db.sa.select(table.c.ra, table.c.dec))))
    if len(rows) < 2:
        return 0
    sep = separation_arcsec(rows[:, None, 0], rows[:, None, 1], rows[None, :, 0], rows[None, :, 1])
    return int((np.triu(sep < radius_arcsec, k=1)).sum())


def test_two_workers_on_one_sqlite_file_are_serialised(apdb_url):  # noqa: F811
    url = apdb_url("sqlite")
    _two_workers(url, range(3), _run)
    stats = Apdb(url).stats()
    # The same three sky positions every time: three objects, six sources per round.
    assert duplicate_objects(url) == 0
    assert stats["DiaObject"] == 3 and stats["DiaSource"] == 18
