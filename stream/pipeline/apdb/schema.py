"""The APDB tables: DiaObject, DiaSource, DiaForcedSource with the LSST 11.1 column names.

Columns are generated from the vendored alert schema records (schemas/lsst/), so a row read
back is a schema record: no hand-kept column list to drift.  Each table adds what the
database needs and the alert does not carry:

- ``pixelId`` on DiaObject: the HEALPix (nested, nside 2**10, 3.4' pixels) index of its
  position, the sky index behind cone queries.  A detector's footprint (LSST: 13.6' square,
  DECam: 9' x 18') is a few tens of pixels, so a cone query is ``pixelId IN (...)`` on a
  B-tree index, portable to SQLite and PostgreSQL alike.  Rejected: Q3C (PostgreSQL only,
  and SQLite must give the same objects) and a dec-band/RA-range index (the RA range widens
  towards the poles and wraps at 0 deg: two cases to get right where HEALPix has none).
- a unique (diaObjectId, visit, detector) on DiaForcedSource: one forced measurement per
  object per visit and detector, whatever id a replay computes.
- DiaObjectFluxSums: per diaObject, band and forced mean (fpFlux, scienceFlux), the exact
  running sums behind that mean (stream/alerts/diaobjects.py ``FluxSums``: counts, and
  sums as the comma-separated doubles of fsum's partials), so that a visit updates a
  diaObject's forced means from its one new forced source, not its whole forced history.
- ApdbMeta: the schema version the tool wrote (``diffstream apdb upgrade`` moves it on).
"""

from __future__ import annotations

from typing import Any

from diffstream.stream.alerts.diaobjects import (
    DIA_FORCED_SOURCE_SPECS,
    DIA_OBJECT_SPECS,
    lsst_specs,
)

__all__ = ["SCHEMA_VERSION", "INDEX_ORDER", "DIA_SOURCE_SPECS", "build_tables"]

# 1: the first layout.  2: DiaObjectFluxSums.  A change bumps this and adds a step to
# store._MIGRATIONS.
SCHEMA_VERSION = 2
INDEX_ORDER = 10  # HEALPix order of pixelId: nside 1024, 3.4' pixels
DIA_SOURCE_SPECS = lsst_specs("diaSource")


def _column(sa: Any, name: str, base: str, nullable: bool, **kw: Any) -> Any:
    types = {
        "int": sa.Integer,
        "long": sa.BigInteger,
        "float": sa.REAL,  # float32, as in the alert: what is stored is what is sent
        "double": sa.Double,
        "boolean": sa.Boolean,
        "string": sa.Text,
    }
    return sa.Column(name, types[base](), nullable=nullable, **kw)


def build_tables(sa: Any) -> tuple[Any, dict[str, Any]]:
    """(MetaData, {name: Table}) for the SQLAlchemy module ``sa`` (imported by the caller,
    so that importing this module costs nothing)."""
    meta = sa.MetaData()

    def columns(specs: Any, key: str) -> list[Any]:
        return [
            _column(sa, name, base, nullable, primary_key=name == key, autoincrement=False)
            if name == key
            else _column(sa, name, base, nullable)
            for name, base, nullable in specs
        ]

    obj = sa.Table(
        "DiaObject",
        meta,
        *columns(DIA_OBJECT_SPECS, "diaObjectId"),
        sa.Column("pixelId", sa.BigInteger, nullable=False),
        sa.Index("DiaObject_pixelId", "pixelId"),
    )
    src = sa.Table(
        "DiaSource",
        meta,
        *columns(DIA_SOURCE_SPECS, "diaSourceId"),
        sa.Index("DiaSource_diaObjectId", "diaObjectId", "midpointMjdTai"),
    )
    forced = sa.Table(
        "DiaForcedSource",
        meta,
        *columns(DIA_FORCED_SOURCE_SPECS, "diaForcedSourceId"),
        sa.UniqueConstraint("diaObjectId", "visit", "detector", name="DiaForcedSource_visit"),
        sa.Index("DiaForcedSource_diaObjectId", "diaObjectId", "midpointMjdTai"),
    )
    sums = sa.Table(
        "DiaObjectFluxSums",
        meta,
        sa.Column("diaObjectId", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("band", sa.String(8), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),  # fpFlux | scienceFlux
        sa.Column("nGood", sa.Integer, nullable=False),
        sa.Column("sumW", sa.Text, nullable=False),
        sa.Column("sumWV", sa.Text, nullable=False),
        sa.Column("nValues", sa.Integer, nullable=False),
        sa.Column("sumV", sa.Text, nullable=False),
    )
    info = sa.Table(
        "ApdbMeta",
        meta,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    tables = {"DiaObject": obj, "DiaSource": src, "DiaForcedSource": forced}
    return meta, {**tables, "DiaObjectFluxSums": sums, "ApdbMeta": info}
