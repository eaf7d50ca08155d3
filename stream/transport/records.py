"""The worker's own output records: per-exposure summaries and dead letters.

Both are Avro single-object encoded (like events, see :mod:`stream.transport.events`), so a record
on
the metadata or dead-letter topic names its schema by fingerprint and needs no registry.
Schemas: ``schemas/diffstream.summary.avsc`` and ``schemas/diffstream.deadletter.avsc``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fastavro

from diffstream import __version__
from diffstream.schemas import fingerprint, load_parsed
from diffstream.stream.transport.events import encode_single_object, split_single_object, to_ms

__all__ = [
    "SUMMARY_SCHEMA",
    "SUMMARY_FINGERPRINT",
    "DEADLETTER_SCHEMA",
    "DEADLETTER_FINGERPRINT",
    "worker_id",
    "reason_record",
    "dead_letter_record",
    "encode_summary",
    "decode_summary",
    "encode_dead_letter",
    "decode_dead_letter",
    "write_record_file",
    "read_record_file",
]

SUMMARY_SCHEMA: dict[str, Any] = load_parsed("diffstream.summary")
SUMMARY_FINGERPRINT: str = fingerprint(SUMMARY_SCHEMA)
DEADLETTER_SCHEMA: dict[str, Any] = load_parsed("diffstream.deadletter")
DEADLETTER_FINGERPRINT: str = fingerprint(DEADLETTER_SCHEMA)


def worker_id() -> str:
    """``host:pid``: which process wrote a record."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=False)


def reason_record(error: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's ``reason`` from a :meth:`DiffstreamError.to_record` dict."""
    return {
        "stage": str(error["stage"]),
        "kind": str(error["kind"]),
        "error": str(error["error"]),
        "message": str(error["message"]),
        "fieldsJson": _safe_fields_json(error.get("fields") or {}),
    }


def _safe_fields_json(fields: Mapping[str, Any]) -> str:
    try:
        return _json(fields)
    except ValueError:  # NaN/inf in a field: keep them as strings rather than lose the record
        return json.dumps({k: str(v) for k, v in fields.items()}, sort_keys=True)


def dead_letter_record(
    *,
    value: bytes | None,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    topic: str,
    partition: int,
    offset: int,
    error: Mapping[str, Any],
    request_id: str | None = None,
    failed_at_ms: int,
    worker: str | None = None,
) -> dict[str, Any]:
    """A dead-letter record for a consumed message and a ``to_record()`` error dict."""
    return {
        "originalValue": None if value is None else bytes(value),
        "originalKey": None if key is None else bytes(key),
        "originalHeaders": [
            {"key": str(k), "value": None if v is None else bytes(v)} for k, v in headers
        ],
        "topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "requestId": request_id,
        "stage": str(error["stage"]),
        "kind": str(error["kind"]),
        "error": str(error["error"]),
        "message": str(error["message"]),
        "fieldsJson": _safe_fields_json(error.get("fields") or {}),
        "failedAt": int(failed_at_ms),
        "workerId": worker or worker_id(),
        "pipelineVersion": __version__,
    }


def _encode(schema: dict[str, Any], fp: str, record: Mapping[str, Any], what: str) -> bytes:
    try:
        return encode_single_object(schema, fp, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error) as exc:
        raise ValueError(f"{what} does not match {schema['name']}: {exc}") from exc


def _decode(schema: dict[str, Any], fp: str, data: bytes, what: str) -> dict[str, Any]:
    got, body = split_single_object(data)  # BadEvent (a ValueError-like) on bad framing
    if got != fp:
        raise ValueError(f"{what} has schema fingerprint {got}, expected {fp}")
    record = fastavro.schemaless_reader(io.BytesIO(body), schema, schema)
    if not isinstance(record, dict):
        raise ValueError(f"decoded a {type(record).__name__}, not a {what}")
    for key in ("failedAt", "processedAt", "eventProducedAt"):
        if record.get(key) is not None:
            record[key] = to_ms(record[key])
    return record


def encode_summary(summary: Mapping[str, Any], ctx: Any = None) -> bytes:
    """Single-object Avro bytes of a summary record (``ctx`` ignored)."""
    return _encode(SUMMARY_SCHEMA, SUMMARY_FINGERPRINT, summary, "summary")


def decode_summary(data: bytes, ctx: Any = None) -> dict[str, Any]:
    """A summary record from single-object bytes (timestamps as int ms)."""
    return _decode(SUMMARY_SCHEMA, SUMMARY_FINGERPRINT, data, "summary")


def encode_dead_letter(record: Mapping[str, Any], ctx: Any = None) -> bytes:
    """Single-object Avro bytes of a dead-letter record (``ctx`` ignored)."""
    return _encode(DEADLETTER_SCHEMA, DEADLETTER_FINGERPRINT, record, "dead letter")


def decode_dead_letter(data: bytes, ctx: Any = None) -> dict[str, Any]:
    """A dead-letter record from single-object bytes (timestamps as int ms)."""
    return _decode(DEADLETTER_SCHEMA, DEADLETTER_FINGERPRINT, data, "dead letter")


# -- container files (directory transport) -------------------------------------------------
def write_record_file(
    path: str | os.PathLike[str], schema: dict[str, Any], records: Iterable[Mapping[str, Any]]
) -> Path:
    """Write records to an Avro container file atomically (``.tmp`` then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            fastavro.writer(out, schema, list(records), codec="deflate")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def read_record_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of an Avro container file (its own writer schema; timestamps as int ms)."""
    with open(path, "rb") as fh:
        records = list(fastavro.reader(fh))
    for record in records:
        for key in ("failedAt", "processedAt", "eventProducedAt", "producedAt"):
            if isinstance(record, dict) and record.get(key) is not None:
                record[key] = to_ms(record[key])
    return records  # type: ignore[return-value]
