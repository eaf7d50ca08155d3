"""Exposure-ready events: build, validate, encode and decode (``schemas/diffstream.event.avsc``).

Events travel as Avro *single-object encoding* (Avro spec, "Single-object encoding"): the two
marker bytes ``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint, then the plain
binary record.  The fingerprint is what lets the worker tell "bytes in a schema we do not know"
(dead letter, kind ``bad_event``, reason ``unknown_schema``) from "our schema, garbled bytes"
(reason ``undecodable``) without a schema registry.  Rejected alternative: schemaless bytes
with the fingerprint in a Kafka header; headers are lost by tools that copy only values, and
the directory transport has no headers at all.

Serializers are plain ``(obj, ctx) -> bytes`` callables; ``ctx`` is accepted and ignored.
:func:`decode_event` raises only :class:`~diffstream.stream.ops.errors.BadEvent`, whatever the bytes
(tests/unit/test_events.py feeds it arbitrary bytes with Hypothesis).
"""

from __future__ import annotations

import io
import math
import struct
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import fastavro

from diffstream.schemas import AVRO_DECODE_ERRORS, fingerprint, load_parsed
from diffstream.stream.ops.errors import BadEvent

__all__ = [
    "EVENT_SCHEMA",
    "EVENT_FINGERPRINT",
    "SINGLE_OBJECT_MARKER",
    "make_event",
    "validate_event",
    "encode_event",
    "decode_event",
    "encode_single_object",
    "split_single_object",
    "now_ms",
    "to_ms",
]

EVENT_SCHEMA: dict[str, Any] = load_parsed("diffstream.event")
EVENT_FINGERPRINT: str = fingerprint(EVENT_SCHEMA)
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_HEADER_LEN = 10  # marker + 8 fingerprint bytes

# Writer schemas we read events from, by fingerprint (hex), each resolved into EVENT_SCHEMA.
# Only ours for now; when the event schema evolves, the previous one is kept here.
_WRITERS: dict[str, dict[str, Any]] = {EVENT_FINGERPRINT: EVENT_SCHEMA}

_LOCATIONS = ("scienceLocation", "templateLocation")
_OPTIONAL_LOCATIONS = ("sciencePsfLocation", "templatePsfLocation", "backgroundLocation")
_MAX_LOCATION = 4096  # PATH_MAX on Linux; longer strings are not paths
_MAX_REQUEST_ID = 256
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1

_DECODE_ERRORS = AVRO_DECODE_ERRORS


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), the unit of every ``*At`` field."""
    return time.time_ns() // 1_000_000


def to_ms(value: Any) -> int:
    """A ``timestamp-millis`` value as int ms: fastavro decodes them to aware datetimes."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(round(value.timestamp() * 1000))
    return int(value)


# -- single-object framing (shared with stream.transport.records) ----------------------------------
def encode_single_object(schema: dict[str, Any], fingerprint_hex: str, record: Any) -> bytes:
    """``C3 01`` + fingerprint bytes + schemaless Avro of ``record``."""
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MARKER)
    buf.write(bytes.fromhex(fingerprint_hex))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def split_single_object(data: Any) -> tuple[str, bytes]:
    """(fingerprint hex, body) of single-object bytes; BadEvent when the framing is absent."""
    if not isinstance(data, bytes | bytearray | memoryview):
        what = "None (a tombstone)" if data is None else type(data).__name__
        raise BadEvent(f"event value must be bytes, got {what}", reason="not_bytes")
    raw = bytes(data)
    if len(raw) < _HEADER_LEN or raw[:2] != SINGLE_OBJECT_MARKER:
        raise BadEvent(
            f"event is not Avro single-object encoded: expected marker C3 01 and an 8-byte "
            f"schema fingerprint, got {len(raw)} bytes starting {raw[:4].hex() or '(empty)'}",
            reason="undecodable",
            size=len(raw),
        )
    return raw[2:_HEADER_LEN].hex(), raw[_HEADER_LEN:]


# -- events ---------------------------------------------------------------------------------
def make_event(
    science: str,
    template: str,
    *,
    visit: int,
    detector: int,
    exposure_id: int,
    exposure_bits: int = 40,
    band: str | None = None,
    midpoint_mjd_tai: float | None = None,
    science_psf: str | None = None,
    template_psf: str | None = None,
    background: str | None = None,
    request_id: str | None = None,
    produced_at_ms: int | None = None,
) -> dict[str, Any]:
    """A validated event record (``producedAt`` defaults to now, ``requestId`` to a UUID4)."""
    event = {
        "requestId": request_id if request_id is not None else str(uuid.uuid4()),
        "visit": visit,
        "detector": detector,
        "exposureId": exposure_id,
        "exposureBits": exposure_bits,
        "band": band,
        "midpointMjdTai": midpoint_mjd_tai,
        "scienceLocation": science,
        "templateLocation": template,
        "sciencePsfLocation": science_psf,
        "templatePsfLocation": template_psf,
        "backgroundLocation": background,
        "producedAt": now_ms() if produced_at_ms is None else produced_at_ms,
    }
    return validate_event(event)


def _int_field(event: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value = event.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadEvent(
            f"event field {name} must be an integer, got {value!r}", field=name, reason="invalid"
        )
    if not lo <= value <= hi:
        raise BadEvent(
            f"event field {name} must be in [{lo}, {hi}], got {value}", field=name, reason="invalid"
        )
    return value


def _location(event: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = event.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadEvent(
            f"event field {name} must be a non-empty path or file:// URI, got {value!r}",
            field=name,
            reason="invalid",
        )
    if len(value) > _MAX_LOCATION or "\x00" in value:
        raise BadEvent(
            f"event field {name} must be at most {_MAX_LOCATION} characters without NUL bytes, "
            f"got {len(value)} characters",
            field=name,
            reason="invalid",
        )
    return value


def validate_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """Check an event's values beyond what its Avro types say; returns a plain dict copy.

    Rules: requestId 1..256 characters; visit, exposureId >= 0 (long); detector >= 0 (int);
    exposureBits 1..62 and exposureId < 2**exposureBits; midpointMjdTai finite when given;
    band non-empty when given; science/template locations non-empty (<= 4096 chars, no NUL);
    optional locations the same when given; producedAt >= 0 ms.  Raises BadEvent naming the
    field and the value.
    """
    if not isinstance(event, Mapping):
        raise BadEvent(f"event must be a record, got {type(event).__name__}", reason="invalid")
    missing = [f["name"] for f in EVENT_SCHEMA["fields"] if f["name"] not in event]
    if missing:
        raise BadEvent(f"event lacks fields {missing}", reason="invalid", missing=missing)
    rid = event["requestId"]
    if not isinstance(rid, str) or not 1 <= len(rid) <= _MAX_REQUEST_ID:
        raise BadEvent(
            f"event field requestId must be 1..{_MAX_REQUEST_ID} characters, got {rid!r}",
            field="requestId",
            reason="invalid",
        )
    out = dict(event)
    out["visit"] = _int_field(event, "visit", 0, _INT64)
    out["detector"] = _int_field(event, "detector", 0, _INT32)
    bits = _int_field(event, "exposureBits", 1, 62)
    out["exposureBits"] = bits
    out["exposureId"] = _int_field(event, "exposureId", 0, (1 << bits) - 1)
    mjd = event["midpointMjdTai"]
    if mjd is not None:
        if isinstance(mjd, bool) or not isinstance(mjd, int | float) or not math.isfinite(mjd):
            raise BadEvent(
                f"event field midpointMjdTai must be a finite number or null, got {mjd!r}",
                field="midpointMjdTai",
                reason="invalid",
            )
        out["midpointMjdTai"] = float(mjd)
    band = event["band"]
    if band is not None and (not isinstance(band, str) or not band.strip()):
        raise BadEvent(
            f"event field band must be a non-empty string or null, got {band!r}",
            field="band",
            reason="invalid",
        )
    for name in _LOCATIONS:
        out[name] = _location(event, name, required=True)
    for name in _OPTIONAL_LOCATIONS:
        out[name] = _location(event, name, required=False)
    try:
        produced = to_ms(event["producedAt"])
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise BadEvent(
            f"event field producedAt must be ms since the epoch, got {event['producedAt']!r}",
            field="producedAt",
            reason="invalid",
        ) from exc
    if produced < 0:
        raise BadEvent(
            f"event field producedAt must be >= 0 ms, got {produced}",
            field="producedAt",
            reason="invalid",
        )
    out["producedAt"] = produced
    return out


def encode_event(event: Mapping[str, Any], ctx: Any = None) -> bytes:
    """Single-object Avro bytes of a validated event (``ctx`` ignored)."""
    record = validate_event(event)
    try:
        return encode_single_object(EVENT_SCHEMA, EVENT_FINGERPRINT, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error) as exc:
        raise BadEvent(f"event does not match {EVENT_SCHEMA['name']}: {exc}") from exc


def decode_event(data: Any, ctx: Any = None) -> dict[str, Any]:
    """The validated event in ``data`` (``ctx`` ignored); raises only BadEvent.

    ``fields['reason']`` says why: ``not_bytes``, ``undecodable`` (no single-object marker,
    garbled or truncated body, bytes left over), ``unknown_schema`` (a fingerprint we have no
    writer schema for) or ``invalid`` (decoded, but a value breaks a rule).
    """
    fp, body = split_single_object(data)
    writer = _WRITERS.get(fp)
    if writer is None:
        raise BadEvent(
            f"unknown event schema fingerprint {fp}: this worker reads {sorted(_WRITERS)}",
            reason="unknown_schema",
            fingerprint=fp,
        )
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, writer, EVENT_SCHEMA)
    except _DECODE_ERRORS as exc:
        raise BadEvent(
            f"cannot decode {len(body)} bytes as {EVENT_SCHEMA['name']}: {type(exc).__name__}: "
            f"{exc}",
            reason="undecodable",
            fingerprint=fp,
        ) from exc
    left = len(body) - buf.tell()
    if left:
        raise BadEvent(
            f"decoded an event but {left} of {len(body)} bytes are left over",
            reason="undecodable",
            fingerprint=fp,
        )
    if not isinstance(record, dict):  # a foreign writer schema that is not a record
        raise BadEvent(f"decoded a {type(record).__name__}, not an event record", reason="invalid")
    return validate_event(record)
