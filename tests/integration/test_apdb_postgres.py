"""The APDB on a real PostgreSQL (compose/postgres-local.sh, or DIFFSTREAM_TEST_APDB): two
workers on overlapping footprints, and SQLite and PostgreSQL giving the same objects."""

from __future__ import annotations

import numpy as np

from diffstream.stream.pipeline.apdb.schema import SCHEMA_VERSION
from diffstream.stream.pipeline.apdb.store import Apdb
from tests.apdb_helpers import apdb_url, pg_server  # noqa: F401
from tests.unit.test_apdb import (
    _run,
    _two_workers,
    check_incremental_summaries,
    duplicate_objects,
)


def _objects(url: str) -> list[tuple]:
    db = Apdb(url)
    t = db.tables["DiaObject"]
    s = db.tables["DiaSource"]
    with db.engine.connect() as conn:
        objects = conn.execute(
            db.sa.select(t.c.diaObjectId, t.c.nDiaSources, t.c.ra, t.c.dec).order_by(
                t.c.diaObjectId
            )
        ).all()
        links = conn.execute(
            db.sa.select(s.c.diaSourceId, s.c.diaObjectId).order_by(s.c.diaSourceId)
        ).all()
    return [tuple(r) for r in objects] + [tuple(r) for r in links]


def test_postgres_schema_versioned(apdb_url):  # noqa: F811
    url = apdb_url("postgresql")
    db = Apdb(url)
    assert db.dialect == "postgresql" and db.version() == SCHEMA_VERSION
    assert db.stats()["DiaObject"] == 0


def test_two_workers_on_postgres_never_twin_an_object(apdb_url):  # noqa: F811
    # Each round: two workers start at once (a barrier) on overlapping footprints holding the
    # same three sources; advisory locks on the shared sky cells make the second associate
    # with the first's objects.  20 seeded rounds, 120 diaSources, must give 3 diaObjects.
    url = apdb_url("postgresql")
    _two_workers(url, range(20), _run)
    stats = Apdb(url).stats()
    assert duplicate_objects(url) == 0
    assert stats["DiaObject"] == 3 and stats["DiaSource"] == 120


def test_sqlite_and_postgres_give_the_same_objects(apdb_url):  # noqa: F811
    urls = [apdb_url("sqlite"), apdb_url("postgresql")]
    rng = np.random.default_rng(5)
    plan = [[float(f) if rng.random() < 0.7 else 0.0 for f in (400, 250, 300)] for _ in range(6)]
    for url in urls:
        for visit, fluxes in enumerate(plan, start=1):
            _run(url, visit, fluxes, seed=5)
    sqlite_rows, pg_rows = (_objects(u) for u in urls)
    assert len(sqlite_rows) > 3
    assert [r[:2] for r in sqlite_rows] == [r[:2] for r in pg_rows]
    # Positions: float64 in both (summaries of the same float64 inputs).
    for a, b in zip(sqlite_rows, pg_rows, strict=True):
        np.testing.assert_allclose(a[2:], b[2:], rtol=0, atol=1e-12)


def test_postgres_incremental_summaries_equal_a_recompute(apdb_url):  # noqa: F811
    check_incremental_summaries(apdb_url("postgresql"))


def test_postgres_bulk_writes_through_copy_keep_the_conflict_rules(apdb_url):  # noqa: F811
    # From _COPY_FROM rows on, PostgreSQL writes go COPY -> temporary table -> INSERT ... ON
    # CONFLICT: a stored diaSource is left as it is, a diaObject replaced, twice in one
    # transaction included (the temporary table is reused, then dropped at commit).
    from diffstream.stream.alerts.diaobjects import dia_object_summary
    from diffstream.stream.alerts.packets import dia_source_record
    from diffstream.stream.pipeline.apdb.store import _COPY_FROM

    n = 2 * _COPY_FROM + 7
    template = dia_source_record(
        {"diaSourceId": 0, "ra": 60.0, "dec": -30.0, "x": 1.0, "y": 2.0, "psfFlux": 500.0,
         "psfFluxErr": 50.0, "psfNdata": 9, "trailNdata": 0, "dipoleNdata": 0, "bboxSize": 15},
        visit=1, detector=0, midpoint_mjd_tai=60000.0, band="r", time_processed_mjd_tai=6e4,
        exposure_time=30.0,
    )  # fmt: skip
    rows = [{**template, "diaSourceId": i, "diaObjectId": i, "ra": 60.0 + i * 1e-4}
            for i in range(n)]  # fmt: skip
    objects = [{**dia_object_summary(i, [r]), "pixelId": 7} for i, r in enumerate(rows)]
    db = Apdb(apdb_url("postgresql"))
    copied: list[str] = []
    copy_upsert = db._copy_upsert
    db._copy_upsert = lambda conn, name, *a: copied.append(name) or copy_upsert(conn, name, *a)  # type: ignore[method-assign]
    with db.exposure([]) as conn:
        db.insert_sources(conn, rows)
        db.insert_sources(conn, [{**r, "psfFlux": -1.0} for r in rows])  # a replay: kept
        db.upsert_objects(conn, objects)
    with db.exposure([]) as conn:
        db.upsert_objects(conn, [{**o, "nDiaSources": 2} for o in objects])  # replaced
        links = db.source_objects(conn, list(range(n)))
        back = db.sources_of(conn, [0, n - 1])
    assert db.stats()["DiaSource"] == n == db.stats()["DiaObject"] and len(links) == n
    assert [r["psfFlux"] for r in back] == [500.0, 500.0]
    assert back[0] == {**rows[0]} and back[1]["ra"] == rows[-1]["ra"]
    assert db.object(n - 1)["nDiaSources"] == 2
    assert copied == ["DiaSource", "DiaSource", "DiaObject", "DiaObject"]  # the premise
