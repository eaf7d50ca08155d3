"""LSST-compatible alert packets: diaSource records, alerts, Avro (de)serializers and files.

Our schema (``schemas/diffstream.alert.avsc``) is the LSST alert record (same full name, e.g.
``lsst.v11_1.alert``, every field unchanged) plus one trailing nullable field
``diffstreamMetadata`` (``diffstream.TaskMetadata``).  Bytes written with it are read by any
LSST consumer using the official schema as the reader schema: Avro resolution drops the
extra writer field.  See docs/alerts.md.

Serializers are plain ``(obj, ctx) -> bytes`` callables (the confluent-kafka Serializer
shape); ``ctx`` is accepted and ignored.  Messages are schemaless Avro (no Confluent
magic-byte/schema-id framing): the producer adds framing if a schema registry is used.
"""

from __future__ import annotations

import importlib
import io
import itertools
import math
import os
import types
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import fastavro
import numpy as np
from fastavro.validation import ValidationError, validate

from diffstream.schemas import AVRO_DECODE_ERRORS, fingerprint, load_parsed, lsst_alert_name
from diffstream.stream.alerts.avroenc import ENCODE_ERRORS, encoder, long_bytes
from diffstream.stream.alerts.diaobjects import dia_object_summary
from diffstream.stream.ops.cpus import available_cpus

__all__ = [
    "ALERT_SCHEMA",
    "LSST_SCHEMA",
    "MAX_ALERT_BYTES",
    "DIA_SOURCE_FIELDS",
    "DIA_SOURCE_REQUIRED",
    "TASK_METADATA_FIELDS",
    "CUTOUT_FIELDS",
    "schema_fingerprint",
    "dia_source_record",
    "dia_source_batch",
    "dia_source_column",
    "make_alert",
    "serialize_alert",
    "deserialize_alert",
    "write_alert_file",
    "read_alert_file",
]

ALERT_SCHEMA: dict[str, Any] = load_parsed("diffstream.alert")
LSST_SCHEMA: dict[str, Any] = load_parsed(lsst_alert_name())

# DMTN-102: an alert packet must stay within 82 KB; we use the stricter decimal reading.
MAX_ALERT_BYTES = 82_000

# make_alert's cutout keys: the LSST alert fields themselves.
CUTOUT_FIELDS = ("cutoutDifference", "cutoutScience", "cutoutTemplate")

_F32_MAX = float(np.finfo(np.float32).max)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _field(record: dict[str, Any], name: str) -> dict[str, Any]:
    for field in record["fields"]:
        if field["name"] == name:
            return field
    raise KeyError(f"{record['name']} has no field {name!r}")


def _record_type(schema: Any) -> dict[str, Any]:
    """The record inside ``schema`` (itself, or the non-null branch of a nullable union)."""
    if isinstance(schema, list):
        (schema,) = [s for s in schema if s != "null"]
    return schema


def _field_specs(record: dict[str, Any]) -> tuple[tuple[str, str, bool], ...]:
    """(name, primitive type, nullable) of each field of a record of primitives."""
    specs = []
    for field in record["fields"]:
        ftype = field["type"]
        nullable = isinstance(ftype, list)
        base = next(t for t in ftype if t != "null") if nullable else ftype
        if not isinstance(base, str):
            raise TypeError(f"field {field['name']!r} of {record['name']} is not primitive")
        specs.append((field["name"], base, nullable))
    return tuple(specs)


_DIA_SOURCE = _record_type(_field(ALERT_SCHEMA, "diaSource")["type"])
_DIA_SPECS = _field_specs(_DIA_SOURCE)
_TASK_METADATA = _record_type(_field(ALERT_SCHEMA, "diffstreamMetadata")["type"])

DIA_SOURCE_FIELDS: tuple[str, ...] = tuple(name for name, _, _ in _DIA_SPECS)
DIA_SOURCE_REQUIRED: tuple[str, ...] = tuple(name for name, _, null in _DIA_SPECS if not null)
TASK_METADATA_FIELDS: tuple[str, ...] = tuple(f["name"] for f in _TASK_METADATA["fields"])
_DIA_NAMES = frozenset(DIA_SOURCE_FIELDS)
_DIA_SPEC_OF = {name: (base, nullable) for name, base, nullable in _DIA_SPECS}

# dia_source_record's keyword arguments: exposure-level values shared by every diaSource.
_EXPOSURE_KEYWORDS = {
    "visit": "visit",
    "detector": "detector",
    "midpoint_mjd_tai": "midpointMjdTai",
    "band": "band",
    "time_processed_mjd_tai": "timeProcessedMjdTai",
    "exposure_time": "exposureTime",
}


def schema_fingerprint(parsed: Any) -> str:
    """CRC-64-AVRO fingerprint (16 hex digits) of a schema's Parsing Canonical Form."""
    return fingerprint(parsed)


# -- diaSource ------------------------------------------------------------------------------
def _convert(name: str, value: Any, base: str, nullable: bool) -> Any:
    """One value as the plain Python type Avro ``base`` takes (see dia_source_record)."""
    if value is None:
        if nullable:
            return None
        raise ValueError(f"diaSource field {name!r} is required ({base}), got None")
    if base in ("int", "long"):
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            msg = f"diaSource field {name!r} must be an integer ({base}), got {value!r}"
            raise TypeError(msg)
        lo, hi = _INT_RANGE[base]
        if not lo <= int(value) <= hi:
            raise ValueError(f"diaSource field {name!r} must fit {base} [{lo}, {hi}], got {value}")
        return int(value)
    if base in ("float", "double"):
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            raise TypeError(
                f"diaSource field {name!r} must be a real number ({base}), got {value!r}"
            )
        number = float(value)
        if not math.isfinite(number):
            if nullable:
                return None
            raise ValueError(
                f"diaSource field {name!r} is required and must be finite, got {number}"
            )
        if base == "float":
            if abs(number) > _F32_MAX:
                limit = f"|v| <= {_F32_MAX:.4g}"
                msg = f"diaSource field {name!r} must fit float32 ({limit}), got {number:g}"
                raise ValueError(msg)
            # Round now so that the record equals what a reader decodes from it.
            number = float(np.float32(number))
        return number
    if base == "boolean":
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"diaSource field {name!r} must be a boolean, got {value!r}")
        return bool(value)
    if base == "string":
        if not isinstance(value, str):
            raise TypeError(f"diaSource field {name!r} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"diaSource field {name!r} has unsupported Avro type {base!r}")


def dia_source_record(
    row: Mapping[str, Any],
    *,
    visit: int,
    detector: int,
    midpoint_mjd_tai: float,
    band: str | None,
    time_processed_mjd_tai: float,
    exposure_time: float | None,
    ignore_extra: bool = False,
) -> dict[str, Any]:
    """The LSST ``diaSource`` record (all 102 fields of v11.1, in schema order) for one source.

    ``row`` holds the measurements under their LSST names (``diaSourceId``, ``x``, ``y``,
    ``ra``, ``dec`` [deg], ``psfFlux`` [nJy], ``pixelFlags_*``, ``bboxSize`` ...); the keywords
    give the exposure-level fields (``visit``, ``detector``, ``midpointMjdTai`` and
    ``timeProcessedMjdTai`` [MJD TAI], ``band``, ``exposureTime`` [s]).  Schema fields that
    neither provides (we do not associate, fit trails, or classify) are None.

    Values become plain Python types (numpy scalars included); a NaN or infinite value of a
    nullable float field becomes None (Avro ``null``: "not measured"), the way LSST fills
    failed measurements; ``float`` fields are rounded to float32 here, so the record equals
    what a reader decodes.  ``ignore_extra`` drops row keys that are not schema fields
    (default: ValueError, which catches misspelt names).

    Raises ValueError for a missing/None/non-finite required field (those without null in the
    schema: diaSourceId, ra, dec, x, y, psfNdata, trailNdata, dipoleNdata, bboxSize, plus the
    keywords), a value out of its type's range, an unknown key, or a row value that
    contradicts a keyword; TypeError for a value of the wrong kind.
    """
    given_by_keyword = {
        "visit": visit,
        "detector": detector,
        "midpoint_mjd_tai": midpoint_mjd_tai,
        "band": band,
        "time_processed_mjd_tai": time_processed_mjd_tai,
        "exposure_time": exposure_time,
    }
    values: dict[str, Any] = {}
    for keyword, given in given_by_keyword.items():
        field = _EXPOSURE_KEYWORDS[keyword]
        if field in row and row[field] != given:
            msg = f"row has {field}={row[field]!r} but the keyword {keyword}={given!r}"
            raise ValueError(msg)
        values[field] = given
    unknown = [key for key in row if key not in _DIA_NAMES]
    if unknown and not ignore_extra:
        raise ValueError(f"row has keys that are not LSST diaSource fields: {sorted(unknown)}")
    for name, base, nullable in _DIA_SPECS:
        if name in values:
            value = values[name]
        elif name in row:
            value = row[name]
        elif nullable:
            value = None
        else:
            raise ValueError(f"diaSource field {name!r} is required but missing from the row")
        values[name] = _convert(name, value, base, nullable)
    return {name: values[name] for name in DIA_SOURCE_FIELDS}


def dia_source_batch(
    columns: Mapping[str, Any],
    n: int,
    *,
    visit: int,
    detector: int,
    midpoint_mjd_tai: float,
    band: str | None,
    time_processed_mjd_tai: float,
    exposure_time: float | None,
    ignore_extra: bool = False,
) -> list[dict[str, Any]]:
    """:func:`dia_source_record` for ``n`` rows given as columns (name -> sequence of n).

    The same records, converted a column at a time: per value, the conversion and rounding
    of ~100 fields took ~60 us a source, a third of an exposure's alert building.  Any value
    the column checks do not accept (a required NaN, a float beyond float32, a wrong type,
    an unknown key, a row contradicting a keyword...) sends the whole batch through
    :func:`dia_source_record` row by row, which raises its own error, so errors are exactly
    those of the per-row function.
    """
    keywords: dict[str, Any] = {
        "visit": visit,
        "detector": detector,
        "midpoint_mjd_tai": midpoint_mjd_tai,
        "band": band,
        "time_processed_mjd_tai": time_processed_mjd_tai,
        "exposure_time": exposure_time,
    }

    def per_row() -> list[dict[str, Any]]:
        return [
            dia_source_record(
                {k: v[i] for k, v in columns.items()}, **keywords, ignore_extra=ignore_extra
            )
            for i in range(n)
        ]

    if any(len(v) != n for v in columns.values()):
        lengths = {k: len(v) for k, v in columns.items() if len(v) != n}
        raise ValueError(f"columns must all hold n={n} values, got {lengths}")
    if not ignore_extra and any(key not in _DIA_NAMES for key in columns):
        return per_row()
    given = {_EXPOSURE_KEYWORDS[k]: v for k, v in keywords.items()}
    converted: list[Iterable[Any]] = []
    for name, base, nullable in _DIA_SPECS:
        if name in given:
            if name in columns and any(v != given[name] for v in columns[name]):
                return per_row()
            try:
                value = _convert(name, given[name], base, nullable)
            except (TypeError, ValueError):
                return per_row()
            converted.append(itertools.repeat(value, n))
            continue
        if name not in columns:
            if not nullable:
                return per_row()
            converted.append(itertools.repeat(None, n))
            continue
        column = _convert_column(name, columns[name], base, nullable)
        if column is None:
            return per_row()
        converted.append(column)
    return [dict(zip(DIA_SOURCE_FIELDS, v, strict=True)) for v in zip(*converted, strict=True)]


def dia_source_column(name: str, values: Any) -> list[Any]:
    """The values of field ``name`` as :func:`dia_source_batch`'s records hold them (floats
    rounded to float32, as a reader decodes them): where a later step must agree with the
    records before they exist (the cutouts are centred on the record's x and y, and are made
    beside the trail fits: stream.pipeline.steps.start_cutouts).  Raises as the records would
    (KeyError for a field the schema lacks)."""
    base, nullable = _DIA_SPEC_OF[name]
    column = _convert_column(name, values, base, nullable)
    if column is None:
        column = [_convert(name, v, base, nullable) for v in values]
    return column


def _convert_column(name: str, values: Any, base: str, nullable: bool) -> list[Any] | None:
    """``[_convert(name, v, base, nullable) for v in values]``, or None where that raises."""
    arr = np.asarray(values)
    kind = arr.dtype.kind
    if arr.ndim != 1:
        return None
    if base in ("int", "long") and kind in "iu":
        lo, hi = _INT_RANGE[base]
        if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
            return None
        return cast(list[Any], arr.tolist())
    if base in ("float", "double") and kind in "iuf":
        a = arr.astype(np.float64)
        finite = np.isfinite(a)
        if not finite.all() and not nullable:
            return None
        if base == "float":
            if (np.abs(a[finite]) > _F32_MAX).any():
                return None
            # Rounded to float32 as _convert does, so the record equals what a reader decodes.
            a = np.where(finite, a, 0.0).astype(np.float32).astype(np.float64)
        out = cast(list[Any], a.tolist())
        for i in np.flatnonzero(~finite).tolist():
            out[i] = None
        return out
    if base == "boolean" and kind == "b":
        return cast(list[Any], arr.tolist())
    # Anything else (objects, None, strings): value by value, with _convert's own checks.
    try:
        return [_convert(name, v, base, nullable) for v in values]
    except (TypeError, ValueError):
        return None


# -- alert ----------------------------------------------------------------------------------
def make_alert(
    dia_source: dict[str, Any],
    *,
    cutouts: Mapping[str, bytes | None],
    task_metadata: dict[str, Any] | None,
    dia_object: dict[str, Any] | None = None,
    prv_dia_sources: list[dict[str, Any]] | None = None,
    prv_dia_forced_sources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An alert dict for our schema, for a diaSource from :func:`dia_source_record`.

    ``cutouts`` maps ``cutoutDifference``/``cutoutScience``/``cutoutTemplate`` to FITS bytes
    (:func:`stream.alerts.cutouts.make_cutout`) or None; a missing key means None.
    ``dia_object`` and the history lists come from the APDB (stream/pipeline/apdb/step.py
    fills them after association); without one the alert still follows Rubin's invariants:
    a diaObject built from this one diaSource (its id the diaSource's ``diaObjectId``, or
    its ``diaSourceId`` when unset, as a new object is numbered) and ``[]`` histories ("none
    found"), never None.  ``diaSource.diaObjectId`` is set to the object's id (in place).
    ``ssSource``, ``mpc_orbits`` and the scheduler's ``observation_reason``/``target_name``
    are None.  ``task_metadata`` has exactly :data:`TASK_METADATA_FIELDS`, or is None.
    """
    keys = set(dia_source)
    if keys != _DIA_NAMES:
        missing = sorted(_DIA_NAMES - keys)
        extra = sorted(keys - _DIA_NAMES)
        msg = f"dia_source must have exactly the diaSource fields: missing {missing}, extra {extra}"
        raise ValueError(msg)
    unknown = sorted(set(cutouts) - set(CUTOUT_FIELDS))
    if unknown:
        raise ValueError(f"cutout keys must be among {list(CUTOUT_FIELDS)}, got {unknown}")
    stamps: dict[str, bytes | None] = {}
    for field in CUTOUT_FIELDS:
        stamp = cutouts.get(field)
        if stamp is not None and not isinstance(stamp, bytes | bytearray | memoryview):
            msg = f"cutout {field!r} must be bytes or None, got {type(stamp).__name__}"
            raise TypeError(msg)
        stamps[field] = None if stamp is None else bytes(stamp)
    if task_metadata is not None:
        meta_keys = set(task_metadata)
        wanted = set(TASK_METADATA_FIELDS)
        if meta_keys != wanted:
            missing = sorted(wanted - meta_keys)
            extra = sorted(meta_keys - wanted)
            msg = (
                f"task_metadata must have the TaskMetadata fields: missing {missing}, extra {extra}"
            )
            raise ValueError(msg)
    if dia_object is None:
        object_id = dia_source["diaObjectId"]
        object_id = dia_source["diaSourceId"] if object_id is None else object_id
        dia_object = dia_object_summary(object_id, [dia_source])
    dia_source["diaObjectId"] = dia_object["diaObjectId"]
    return {
        "diaSourceId": dia_source["diaSourceId"],
        "observation_reason": None,
        "target_name": None,
        "diaSource": dia_source,
        "prvDiaSources": list(prv_dia_sources or []),
        "prvDiaForcedSources": list(prv_dia_forced_sources or []),
        "diaObject": dia_object,
        "ssSource": None,
        "mpc_orbits": None,
        **stamps,
        "diffstreamMetadata": task_metadata,
    }


# -- serializers ----------------------------------------------------------------------------
_DECODE_ERRORS = AVRO_DECODE_ERRORS


def _describe_invalid(alert: Any, exc: Exception) -> str:
    """The most useful reason an alert cannot be encoded: fastavro's validator names the field."""
    try:
        validate(alert, ALERT_SCHEMA, raise_errors=True)
    except ValidationError as verr:
        return "; ".join(str(e) for e in getattr(verr, "errors", None) or [verr])
    except Exception as verr:  # the validator itself choked: report the original error
        return f"{type(exc).__name__}: {exc} ({type(verr).__name__} while validating)"
    return f"{type(exc).__name__}: {exc}"


def serialize_alert(alert: dict[str, Any], ctx: Any = None) -> bytes:
    """Schemaless Avro bytes of ``alert`` in our schema (``ctx`` ignored), from the one
    alert encoder (stream.alerts.avroenc) that write_alert_file and stream.transport.wire
    use too."""
    try:
        return encoder(ALERT_SCHEMA).encode(alert)
    except ENCODE_ERRORS as exc:
        reason = _describe_invalid(alert, exc)
        raise ValueError(f"alert does not match schema {ALERT_SCHEMA['name']}: {reason}") from exc


def deserialize_alert(
    data: bytes, ctx: Any = None, *, reader_schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Decode schemaless bytes written with our schema (``ctx`` ignored).

    ``reader_schema`` (e.g. :data:`LSST_SCHEMA` or ``lsst.alert.packet.Schema.definition``)
    resolves the record to that schema; fields it lacks (``diffstreamMetadata``) are dropped.
    Raises ValueError when the bytes do not decode, or leave bytes over (a sign that they were
    written with another schema or framed, e.g. with a Confluent 5-byte header).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"alert data must be bytes, got {type(data).__name__}")
    buf = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(buf, ALERT_SCHEMA, reader_schema)
    except _DECODE_ERRORS as exc:
        msg = f"cannot decode {len(data)} bytes as {ALERT_SCHEMA['name']} (diffstream): "
        raise ValueError(msg + f"{type(exc).__name__}: {exc}") from exc
    left = len(data) - buf.tell()
    if left:
        msg = f"decoded an alert but {left} of {len(data)} bytes are left over: not our schema"
        raise ValueError(msg)
    if not isinstance(record, dict):
        raise ValueError(f"decoded a {type(record).__name__}, not an alert record")
    return record


# -- Avro container files -------------------------------------------------------------------
# Deflate dominated writing an exposure's alerts (fastavro, zlib level 6, one thread: 0.8 s
# for 1250 alerts, 87 MB of mostly float32 noise).  We encode the records with fastavro and
# write the container blocks ourselves, each ~1 MiB block compressed on a thread pool (the
# compressors release the GIL): the same codec, so every Avro reader (fastavro,
# lsst.alert.packet, Java) reads the file.  The compressor is ISA-L's (python-isal) when
# installed: standard raw deflate, 8.7x less CPU than zlib at level 1 on those 87 MB
# (0.059 s against 0.512 s, 24.0 MB against 23.8 MB); libdeflate (0.25 s) and zlib-ng
# (0.16 s, 27 MB) were measured too.  Rejected: codec "null" (3.7x larger: 87 MB instead of
# 24 MB at 4k x 4k) and zlib's RLE strategy (25 % larger).  tests/unit/test_alerts.py reads
# multi-block files back with fastavro, lsst.alert.packet and plain zlib.


def _deflate_module() -> types.ModuleType:
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:  # no wheel for this platform: zlib writes the same format, slower
        return zlib


_deflate_lib = _deflate_module()
_BLOCK_BYTES = 2**20
_DEFLATE_LEVEL = 1  # zlib's fastest; ISA-L's level 0 is faster still but 27 % larger


def _deflate_block(pieces: list[bytes], count: int, sync: bytes) -> list[bytes]:
    """One container block: record count, size, raw-deflate data (RFC 1951), sync marker.
    The records' bytes come as pieces (stream.alerts.avroenc: cutouts are not copied into
    a block buffer), compressed one after the other into one deflate stream."""
    z = _deflate_lib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -15, 9)  # memLevel 9: faster
    data = b"".join([*map(z.compress, pieces), z.flush()])
    return [long_bytes(count), long_bytes(len(data)), data, sync]


def write_alert_file(path: str | os.PathLike[str], alerts: Iterable[dict[str, Any]]) -> int:
    """Write alerts to an Avro object container file (deflate, our schema); returns the count.

    The file appears under its name only once complete (written to ``<path>.tmp``, then
    renamed), so a watcher never reads a half-written file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    sync = os.urandom(16)
    workers = max(1, min(4, available_cpus()))
    pieces_of = encoder(ALERT_SCHEMA).pieces
    try:
        with tmp.open("wb") as out, ThreadPoolExecutor(workers, "alert-deflate") as pool:
            # fastavro writes the header (magic, schema, codec, our sync marker); no records.
            fastavro.writer(out, ALERT_SCHEMA, [], codec="deflate", sync_marker=sync)
            pending: deque[Future[list[bytes]]] = deque()
            block: list[bytes] = []
            size = in_block = 0
            for alert in alerts:
                count += 1
                try:
                    pieces = pieces_of(alert)
                except ENCODE_ERRORS as exc:
                    msg = f"alert #{count} does not match schema {ALERT_SCHEMA['name']}: {exc}"
                    raise ValueError(msg) from exc
                block += pieces
                size += sum(map(len, pieces))
                in_block += 1
                if size >= _BLOCK_BYTES:
                    pending.append(pool.submit(_deflate_block, block, in_block, sync))
                    block, size, in_block = [], 0, 0
                # Blocks go out in order; a bounded queue keeps memory at a few blocks.
                while pending and (pending[0].done() or len(pending) > 2 * workers):
                    out.writelines(pending.popleft().result())
            if in_block:
                pending.append(pool.submit(_deflate_block, block, in_block, sync))
            while pending:
                out.writelines(pending.popleft().result())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return count


def read_alert_file(
    path: str | os.PathLike[str], *, reader_schema: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """All alerts of an Avro container file, resolved to ``reader_schema`` if given."""
    try:
        with open(path, "rb") as fh:
            records = list(fastavro.reader(fh, reader_schema=reader_schema))
    except _DECODE_ERRORS as exc:
        msg = f"cannot read alerts from {os.fspath(path)}: {type(exc).__name__}: {exc}"
        raise ValueError(msg) from exc
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{os.fspath(path)} holds records that are not alerts")
    return cast(list[dict[str, Any]], records)
