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
