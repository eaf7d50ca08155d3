"""The APDB store: SQLite (embedded default) or PostgreSQL (psycopg 3), SQLAlchemy Core.

``Apdb(url)`` opens, and creates on first use, the database at ``url``:

- ``sqlite:///path/apdb.sqlite3`` (the folder is made);
- ``postgresql://user@host:port/db`` (driver psycopg 3; ``postgresql+psycopg://`` too).

The schema is the tool's (``diffstream apdb init|upgrade|stats``): a database of an older
version is refused with the command that upgrades it, a newer one always.

Concurrency (the rule of :meth:`Apdb.exposure`: one transaction per exposure, holding locks
taken before it reads anything):

- PostgreSQL: ``pg_advisory_xact_lock`` on every HEALPix cell of the exposure's footprint plus
  margin, in ascending order (no deadlock).  Two exposures that could create an object for
  one source both contain its position, hence both lock that position's cell: the second
  waits until the first commits, then reads the first's diaObjects (READ COMMITTED sees them)
  and associates with them instead of creating a twin.  Disjoint footprints run in parallel.
- SQLite: ``BEGIN IMMEDIATE`` takes the database's one write lock at the start, so workers
  sharing a file are serialised whole (WAL keeps readers going); ``busy_timeout`` is how long
  the second waits before the exposure fails with ApdbUnavailable (never a half-written one),
  which the worker retries with back-off rather than dead-lettering.
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffstream.stream.alerts.diaobjects import (
    DIA_FORCED_SOURCE_SPECS,
    DIA_OBJECT_SPECS,
    FLUX_SUM_KINDS,
    FluxSums,
    flux_sums_of,
    record_of,
)
from diffstream.stream.ops.errors import ApdbError, ApdbUnavailable, ConfigError
from diffstream.stream.pipeline.apdb.schema import (
    DIA_SOURCE_SPECS,
    INDEX_ORDER,
    SCHEMA_VERSION,
    build_tables,
)

__all__ = ["Apdb", "open_apdb", "normalise_url", "sky_pixels", "cone_pixels"]

# Advisory-lock namespace (first key of the two-int form), so ours never meet another app's.
_LOCK_SPACE = 0x0D1F
_DDL_KEY = 0x0D1F_A9DB  # the one-key form: never meets the two-key cell locks
# The forced sources' fields the running sums are made of (values and their errors).
_FORCED_VALUE_FIELDS = tuple(f for key in FLUX_SUM_KINDS.values() for f in (key, key + "Err"))
_CHUNK = 5000  # ids per IN (...) in SQLite: under its variable limit
_COPY_FROM = 1000  # PostgreSQL: rows from which a write goes through COPY (_copy_upsert)
# version -> SQL statements that take a database from version-1 to version; the steps that
# need more than SQL are Apdb._migrate_to_<version> methods.
_MIGRATIONS: dict[int, list[str]] = {}
_OPEN: dict[str, Apdb] = {}
_OPEN_LOCK = threading.Lock()


def normalise_url(url: str) -> str:
    """``url`` with the driver we use spelled out; ConfigError for other databases."""
    if url.startswith("sqlite:///"):
        return url
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    msg = f"APDB URL must start with sqlite:/// or postgresql://, got {url.split('://')[0]!r}"
    raise ConfigError(msg)


def _healpix() -> Any:
    from astropy_healpix import HEALPix

    return HEALPix(nside=2**INDEX_ORDER, order="nested")


def sky_pixels(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """The pixelId (HEALPix nested, order INDEX_ORDER) of each position [deg]."""
    import astropy.units as u

    ra = np.asarray(ra, dtype=np.float64) % 360.0
    dec = np.asarray(dec, dtype=np.float64)
    return np.asarray(_healpix().lonlat_to_healpix(ra * u.deg, dec * u.deg), dtype=np.int64)


def cone_pixels(ra: float, dec: float, radius_deg: float) -> list[int]:
    """Every pixelId that may hold a position within ``radius_deg`` of (ra, dec), sorted.

    The cone is widened by one pixel size, so that a pixel merely grazed is never left out
    (astropy-healpix's search tests pixel centres and corners, not every edge point)."""
    import astropy.units as u

    hp = _healpix()
    radius = radius_deg + float(hp.pixel_resolution.to_value(u.deg))
    found = hp.cone_search_lonlat((ra % 360.0) * u.deg, dec * u.deg, radius * u.deg)
    return sorted(int(p) for p in np.unique(found))


def open_apdb(url: str) -> Apdb:
    """The process's one :class:`Apdb` for ``url`` (engines pool connections: open once)."""
    key = normalise_url(url)
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = Apdb(url)
        return _OPEN[key]


class Apdb:
    """One APDB: tables, the per-exposure transaction and the queries association needs."""

    def __init__(self, url: str, *, create: bool = True, busy_timeout_s: float = 120.0) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.url = normalise_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(self.url, connect_args={"timeout": busy_timeout_s})
            _sqlite_serialised(sa, self.engine, busy_timeout_s)
        else:
            self.engine = sa.create_engine(self.url, pool_pre_ping=True)
            _postgres_float4_exact(sa, self.engine)
        self.meta, self.tables = build_tables(sa)
        try:
            version = self.version()
            if version is None and create:
                self.init()
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(f"cannot open the APDB at {self.safe_url}", exc) from exc
        if version is None and not create:
            raise ApdbError(f"no APDB at {self.safe_url}: run `diffstream apdb init`")
        if version is not None and version < SCHEMA_VERSION:
            msg = (
                f"APDB at {self.safe_url} has schema version {version} < {SCHEMA_VERSION}: "
                "run `diffstream apdb upgrade --apdb URL`"
            )
            if create:
                raise ApdbError(msg)
        elif version is not None and version > SCHEMA_VERSION:
            msg = f"APDB schema version {version} is newer than this diffstream's {SCHEMA_VERSION}"
            raise ApdbError(msg)

    def _error(self, what: str, exc: Exception) -> ApdbError:
        """ApdbUnavailable when the server could not be reached or went away (a retry will
        do: the worker must not dead-letter the event), ApdbError otherwise.

        PostgreSQL: psycopg's OperationalError is what a refused or dropped connection, a
        server shutting down ("terminating connection due to administrator command") and a
        failed start-up raise; a SQL error in our statements is a ProgrammingError or an
        IntegrityError instead.  SQLite's file is local, and its one outage is another
        process holding the write lock past the busy timeout ("database is locked"): the
        event is fine and succeeds once the lock is free, so it is retried too."""
        sa = self.sa
        down = isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)
        if self.dialect == "postgresql":
            down |= isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
        else:
            text = str(getattr(exc, "orig", exc)).lower()
            down |= isinstance(exc, sa.exc.OperationalError) and (
                "database is locked" in text or "database is busy" in text
            )
        kind = ApdbUnavailable if down else ApdbError
        return kind(f"{what}: {exc}", url=self.safe_url)

    @property
    def safe_url(self) -> str:
        """The URL without its password (for messages and logs)."""
        return str(self.sa.engine.make_url(self.url).render_as_string(hide_password=True))

    # -- schema ----------------------------------------------------------------------------
    def version(self) -> int | None:
        """The schema version stored in the database; None when it has no APDB yet."""
        sa = self.sa
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("ApdbMeta"):
                return None
            info = self.tables["ApdbMeta"]
            row = conn.execute(sa.select(info.c.value).where(info.c.name == "version")).first()
        return None if row is None else int(row[0])

    def init(self) -> None:
        """Create the tables (those missing) and record the schema version."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Two workers meeting a new database would both CREATE TABLE (and one fail):
                # the DDL waits behind one lock (SQLite's BEGIN IMMEDIATE does this already).
                conn.execute(self.sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_KEY})
            self.meta.create_all(conn, checkfirst=True)
            self._upsert(conn, "ApdbMeta", [{"name": "version", "value": str(SCHEMA_VERSION)}])

    def upgrade(self) -> tuple[int, int]:
        """Apply the migrations from the stored version on; (from, to)."""
        start = self.version()
        if start is None:
            self.init()
            return 0, SCHEMA_VERSION
        with self.engine.begin() as conn:
            for version in range(start + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS.get(version, []):
                    conn.exec_driver_sql(statement)
                step = getattr(self, f"_migrate_to_{version}", None)
                if step is not None:
                    step(conn)
            self._upsert(conn, "ApdbMeta", [{"name": "version", "value": str(SCHEMA_VERSION)}])
        return start, SCHEMA_VERSION

    def _migrate_to_2(self, conn: Any) -> None:
        """DiaObjectFluxSums, filled from the forced sources already stored."""
        table = self.tables["DiaObjectFluxSums"]
        table.create(conn, checkfirst=True)
        forced = self.tables["DiaForcedSource"]
        cols = [forced.c[n] for n in ("diaObjectId", "band", *_FORCED_VALUE_FIELDS)]
        by_object: dict[int, list[dict[str, Any]]] = {}
        names = ["diaObjectId", "band", *_FORCED_VALUE_FIELDS]
        for row in conn.execute(self.sa.select(*cols)):
            rec = dict(zip(names, row, strict=True))
            by_object.setdefault(int(rec["diaObjectId"]), []).append(rec)
        self.upsert_flux_sums(conn, {oid: flux_sums_of(rows) for oid, rows in by_object.items()})

    def stats(self) -> dict[str, Any]:
        """Row counts per table, the schema version and the backend."""
        sa = self.sa
        out: dict[str, Any] = {"url": self.safe_url, "version": self.version()}
        with self.engine.connect() as conn:
            for name in ("DiaObject", "DiaSource", "DiaForcedSource"):
                table = self.tables[name]
                count = sa.select(sa.func.count()).select_from(table)
                out[name] = int(conn.execute(count).one()[0])
        return out

    # -- the per-exposure transaction ------------------------------------------------------
    @contextlib.contextmanager
    def exposure(self, cells: Iterable[int]) -> Iterator[Any]:
        """A connection in one transaction that holds the locks of ``cells`` (pixelIds);
        committed on exit, rolled back on an exception (module docstring: the locking)."""
        sa = self.sa
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    lock = sa.text("SELECT pg_advisory_xact_lock(:space, :cell)")
                    for cell in sorted({int(c) for c in cells}):
                        conn.execute(lock, {"space": _LOCK_SPACE, "cell": cell})
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(f"APDB transaction failed at {self.safe_url}", exc) from exc

    # -- reads -----------------------------------------------------------------------------
    def _chunks(self, values: Sequence[int]) -> Iterator[list[int]]:
        """``values`` in lists of ids for one query each: SQLite's IN (...) takes so many
        bound variables; PostgreSQL takes them all in one array (:meth:`_in`)."""
        size = _CHUNK if self.dialect == "sqlite" else max(len(values), 1)
        for start in range(0, len(values), size):
            yield [int(v) for v in values[start : start + size]]

    def _in(self, column: Any, ids: list[int]) -> Any:
        """``column IN ids``; for PostgreSQL ``column = ANY(array)``, one bound array instead
        of one parameter per id (100k ids in IN chunks cost seconds to plan and bind)."""
        if self.dialect == "sqlite":
            return column.in_(ids)
        from sqlalchemy.dialects.postgresql import ARRAY

        sa = self.sa
        return column == sa.any_(sa.bindparam(None, ids, type_=ARRAY(sa.BigInteger)))

    def objects_in(self, conn: Any, pixels: Sequence[int]) -> dict[str, np.ndarray]:
        """diaObjectId, ra, dec of the diaObjects whose pixelId is in ``pixels``."""
        table = self.tables["DiaObject"]
        rows: list[Any] = []
        cols = (table.c.diaObjectId, table.c.ra, table.c.dec)
        for chunk in self._chunks(list(pixels)):
            rows.extend(conn.execute(self.sa.select(*cols).where(self._in(table.c.pixelId, chunk))))
        rows.sort()
        return {
            "diaObjectId": np.array([r[0] for r in rows], dtype=np.int64),
            "ra": np.array([r[1] for r in rows], dtype=np.float64),
            "dec": np.array([r[2] for r in rows], dtype=np.float64),
        }

    def source_objects(self, conn: Any, ids: Sequence[int]) -> dict[int, int]:
        """diaSourceId -> diaObjectId of those of ``ids`` already stored (a replay)."""
        table = self.tables["DiaSource"]
        out: dict[int, int] = {}
        for chunk in self._chunks(list(ids)):
            query = self.sa.select(table.c.diaSourceId, table.c.diaObjectId).where(
                self._in(table.c.diaSourceId, chunk)
            )
            out.update({int(a): int(b) for a, b in conn.execute(query) if b is not None})
        return out

    def _of_objects(
        self, conn: Any, name: str, object_ids: Sequence[int], since: float | None = None
    ) -> list[dict[str, Any]]:
        table = self.tables[name]
        specs = DIA_SOURCE_SPECS if name == "DiaSource" else DIA_FORCED_SOURCE_SPECS
        names = [n for n, _, _ in specs]
        cols = [table.c[n] for n in names]
        rows: list[dict[str, Any]] = []
        for chunk in self._chunks(sorted(set(object_ids))):
            query = self.sa.select(*cols).where(self._in(table.c.diaObjectId, chunk))
            if since is not None:
                query = query.where(table.c.midpointMjdTai >= since)
            # Stored rows are records already (written through record_of: float32-rounded
            # floats, None for NaN), so plain tuples are zipped: 10x faster than mappings.
            rows.extend(dict(zip(names, r, strict=True)) for r in conn.execute(query))
        key = "diaSourceId" if name == "DiaSource" else "diaForcedSourceId"
        rows.sort(key=lambda r: (r["midpointMjdTai"], r[key]))
        return rows

    def objects(self, conn: Any, object_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """diaObjectId -> stored diaObject record, of those of ``object_ids`` stored."""
        table = self.tables["DiaObject"]
        names = [n for n, _, _ in DIA_OBJECT_SPECS]
        cols = [table.c[n] for n in names]
        out: dict[int, dict[str, Any]] = {}
        for chunk in self._chunks(sorted(set(object_ids))):
            query = self.sa.select(*cols).where(self._in(table.c.diaObjectId, chunk))
            # Written through record_of, so a stored row is a record already (as below).
            out.update({int(r[0]): dict(zip(names, r, strict=True)) for r in conn.execute(query)})
        return out

    def stored_forced(self, conn: Any, rows: Sequence[Mapping[str, Any]]) -> set[int]:
        """The diaObjectIds of those forced ``rows`` (one visit and detector) already stored:
        a replay's, which must not be counted into the running sums a second time."""
        if not rows:
            return set()
        visits = {(int(r["visit"]), int(r["detector"])) for r in rows}
        if len(visits) != 1:
            raise ValueError(f"forced rows of one visit and detector expected, got {visits}")
        ((visit, detector),) = visits
        table = self.tables["DiaForcedSource"]
        found: set[int] = set()
        for chunk in self._chunks(sorted({int(r["diaObjectId"]) for r in rows})):
            query = self.sa.select(table.c.diaObjectId).where(
                self._in(table.c.diaObjectId, chunk), table.c.visit == visit,
                table.c.detector == detector,
            )  # fmt: skip
            found.update(int(r[0]) for r in conn.execute(query))
        return found

    def flux_sums(
        self, conn: Any, object_ids: Sequence[int]
    ) -> dict[int, dict[tuple[str, str], FluxSums]]:
        """diaObjectId -> (band, kind) -> the stored running sums of its forced means."""
        table = self.tables["DiaObjectFluxSums"]
        out: dict[int, dict[tuple[str, str], FluxSums]] = {}
        for chunk in self._chunks(sorted(set(object_ids))):
            query = self.sa.select(table).where(self._in(table.c.diaObjectId, chunk))
            for oid, band, kind, n_good, s_w, s_wv, n_values, s_v in conn.execute(query):
                load = FluxSums.load
                sums = FluxSums(n_good, load(s_w), load(s_wv), n_values, load(s_v))
                out.setdefault(int(oid), {})[(band, kind)] = sums
        return out

    def upsert_flux_sums(
        self, conn: Any, sums: Mapping[int, Mapping[tuple[str, str], FluxSums]]
    ) -> None:
        """Store running sums (:meth:`flux_sums`), replacing older ones."""
        rows = [
            {"diaObjectId": int(oid), "band": band, "kind": kind, "nGood": f.n_good,
             "sumW": f.dump(f.sum_w), "sumWV": f.dump(f.sum_wv), "nValues": f.n_values,
             "sumV": f.dump(f.sum_v)}
            for oid, by_key in sums.items()
            for (band, kind), f in by_key.items()
        ]  # fmt: skip
        self._upsert(conn, "DiaObjectFluxSums", rows, update=True)

    def sources_of(self, conn: Any, object_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Every diaSource record of these diaObjects, by time then id."""
        return self._of_objects(conn, "DiaSource", object_ids)

    def forced_of(
        self, conn: Any, object_ids: Sequence[int], *, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Every diaForcedSource record of these diaObjects (from MJD ``since`` on), by time
        then id."""
        return self._of_objects(conn, "DiaForcedSource", object_ids, since)

    def object(self, object_id: int) -> dict[str, Any] | None:
        """The stored diaObject record, or None."""
        table = self.tables["DiaObject"]
        with self.engine.connect() as conn:
            query = self.sa.select(table).where(table.c.diaObjectId == int(object_id))
            row = conn.execute(query).mappings().first()
        return None if row is None else record_of(DIA_OBJECT_SPECS, dict(row))

    def light_curve(self, object_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(diaSources, diaForcedSources) of one diaObject, each by time."""
        with self.engine.connect() as conn:
            return self.sources_of(conn, [object_id]), self.forced_of(conn, [object_id])

    # -- writes (keyed on deterministic ids: a replay writes nothing new) ------------------
    def _upsert(
        self, conn: Any, name: str, rows: Sequence[Mapping[str, Any]], *, update: bool = True
    ) -> None:
        """INSERT ... ON CONFLICT (both dialects spell it alike) through the driver's
        executemany: SQLAlchemy's per-statement compilation of ~100-column rows cost more
        than the database (benchmarks/bench_apdb.py)."""
        if not rows:
            return
        table = self.tables[name]
        names = [c.name for c in table.columns]
        keys = [c.name for c in table.primary_key.columns]
        mark = "?" if self.dialect == "sqlite" else "%s"

        def quoted(cols: Sequence[str]) -> str:
            return ", ".join('"' + n + '"' for n in cols)

        # Table and column names come from our schema (schema.py), never from input.
        head = f'INSERT INTO "{name}" ({quoted(names)}) '  # noqa: S608
        if update:
            changed = ", ".join(f'"{n}" = excluded."{n}"' for n in names if n not in keys)
            tail = f" ON CONFLICT ({quoted(keys)}) DO UPDATE SET {changed}"
        else:  # DiaForcedSource: either key, its id or (object, visit, detector)
            tail = " ON CONFLICT DO NOTHING"
        pick = operator.itemgetter(*names)
        try:
            params = [pick(row) for row in rows]
        except KeyError:  # rows that leave nullable columns out
            params = [tuple(row.get(n) for n in names) for row in rows]
        if self.dialect == "postgresql" and len(params) >= _COPY_FROM:
            self._copy_upsert(conn, name, quoted(names), head, tail, params)
        else:
            marks = ", ".join([mark] * len(names))
            conn.exec_driver_sql(f"{head}VALUES ({marks}){tail}", params)

    def _copy_upsert(
        self, conn: Any, name: str, cols: str, head: str, tail: str, params: Sequence[Sequence]
    ) -> None:
        """PostgreSQL, many rows: COPY into a temporary table, then the same INSERT ... ON
        CONFLICT from it.  COPY cannot resolve conflicts itself, and executemany took ~10 s
        for 100k diaSources (benchmarks/bench_apdb.py, 100k diaSources per exposure)."""
        load = f"_load_{name}"
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            # Table names are ours (schema.py).  ON COMMIT DROP: gone with the transaction.
            cur.execute(
                f'CREATE TEMP TABLE IF NOT EXISTS "{load}" '
                f'(LIKE "{name}" INCLUDING DEFAULTS) ON COMMIT DROP'
            )
            with cur.copy(f'COPY "{load}" ({cols}) FROM STDIN') as copy:
                for row in params:
                    copy.write_row(row)
            cur.execute(f'{head}SELECT {cols} FROM "{load}"{tail}')  # noqa: S608
            cur.execute(f'TRUNCATE "{load}"')

    def insert_sources(self, conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store diaSources; one already stored (same diaSourceId) is left as it is."""
        self._upsert(conn, "DiaSource", rows, update=False)

    def insert_forced(self, conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store diaForcedSources; one already stored (same id or object+visit+detector) is
        left as it is."""
        self._upsert(conn, "DiaForcedSource", rows, update=False)

    def upsert_objects(self, conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store diaObject summaries (a ``pixelId`` each), replacing older versions."""
        self._upsert(conn, "DiaObject", rows, update=True)


def _postgres_float4_exact(sa: Any, engine: Any) -> None:
    """Read PostgreSQL ``real`` (float4) columns as the float32 value stored, not as the
    double nearest its shortest decimal text ("83.72209" for 83.72209167480469), which is
    what psycopg's text loader gives.  A row read back must equal the record written (the
    alert's float fields are float32), or the forced means recomputed from PostgreSQL rows
    differed from SQLite's and from the running sums
    (tests/integration/test_apdb_postgres.py::test_postgres_incremental_summaries_...)."""
    from psycopg.adapt import Loader

    pack = struct.Struct("<f")

    class Float4Loader(Loader):
        def load(self, data: Any) -> float:
            # The shortest decimal of a float32 parses back to it in float32 exactly.
            value = float(bytes(data))
            try:
                return float(pack.unpack(pack.pack(value))[0])
            except OverflowError:  # inf/nan text, or out of float32 range: as given
                return value

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.adapters.register_loader("float4", Float4Loader)


def _sqlite_serialised(sa: Any, engine: Any, busy_timeout_s: float) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (the write lock first: see the module
    docstring) in WAL mode.  pysqlite's own BEGIN is deferred, which lets two writers read,
    then one fail on upgrading its lock: the case this avoids."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        # WAL is a property of the file: set once, by whoever opens a new file first.  The
        # switch needs the file to itself and SQLite answers "locked" at once rather than
        # waiting out the busy timeout, so two workers opening a new file together retry it
        # (tests/unit/test_apdb.py::test_two_workers_on_one_sqlite_file_are_serialised).
        deadline = time.monotonic() + busy_timeout_s
        while str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
