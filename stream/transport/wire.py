"""Message framing: the Confluent wire format with a schema registry, schemaless without one.

With a registry (``--schema-registry-url``) every value is the Confluent wire format::

    byte 0     magic byte 0
    bytes 1-4  schema id, unsigned 32-bit big-endian (the registry's id of the writer schema)
    bytes 5-   the schemaless Avro body

Without one, alerts are schemaless Avro and carry the writer schema's CRC-64-AVRO fingerprint
in the Kafka header ``diffstream.schema.fingerprint`` (what :mod:`stream.transport.service`
sends), and
events keep their own Avro single-object framing (:mod:`stream.transport.events`), which puts the
same
fingerprint in the value.

Either way a reader learns which schema wrote a message before decoding it, so a message in a
schema it cannot read is refused with a :class:`WireError` naming both schemas, instead of being
decoded into garbage.  Serializers and deserializers are ``(obj, ctx) -> bytes`` /
``(bytes, ctx) -> obj`` callables; ``ctx`` may be a confluent ``SerializationContext`` (its
``headers`` are read) or None.

The framing is written here rather than through confluent's ``AvroSerializer`` so that the
bytes are the same with or without a registry client library quirk (rule sets, header-borne
schema ids in newer clients); tests/unit/test_wire.py checks that confluent's AvroSerializer and
AvroDeserializer produce and read exactly these bytes.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError

from diffstream.schemas import AVRO_DECODE_ERRORS, fingerprint
from diffstream.stream.alerts.packets import ALERT_SCHEMA
from diffstream.stream.ops.errors import BadEvent

__all__ = [
    "MAGIC_BYTE",
    "PREFIX_LEN",
    "FINGERPRINT_HEADER",
    "WireError",
    "frame",
    "unframe",
    "header_value",
    "SchemalessSerializer",
    "SchemalessDeserializer",
    "RegistrySerializer",
    "RegistryDeserializer",
    "Codec",
    "alert_codec",
    "event_codec",
    "reencode",
    "worker_codecs",
]

MAGIC_BYTE = 0
_PREFIX = struct.Struct(">BI")
PREFIX_LEN = _PREFIX.size  # 5
FINGERPRINT_HEADER = "diffstream.schema.fingerprint"
_SINGLE_OBJECT = (
    b"\xc3\x01"  # Avro single-object encoding marker (diffstream.stream.transport.events)
)
_MAX_ID = 2**32 - 1

_DECODE_ERRORS = AVRO_DECODE_ERRORS


class WireError(BadEvent):
    """A message that this reader cannot decode; ``fields['reason']`` says why.

    Reasons: ``not_bytes``, ``not_framed`` (no Confluent magic byte), ``unknown_schema_id``,
    ``schema_mismatch`` (written with a schema this reader cannot resolve to its own),
    ``undecodable`` (garbled, truncated, or bytes left over).
    """


def _full_name(schema: Mapping[str, Any]) -> str:
    name = str(schema.get("name", "?"))
    ns = schema.get("namespace")
    return name if "." in name or not ns else f"{ns}.{name}"


def _as_bytes(data: Any) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        what = "None (a tombstone)" if data is None else type(data).__name__
        raise WireError(f"message value must be bytes, got {what}", reason="not_bytes")
    return bytes(data)


# -- framing --------------------------------------------------------------------------------
def frame(schema_id: int, body: bytes) -> bytes:
    """Confluent wire format: magic byte 0, ``schema_id`` as 4 big-endian bytes, ``body``."""
    if isinstance(schema_id, bool) or not isinstance(schema_id, int):
        raise TypeError(f"schema_id must be an int, got {type(schema_id).__name__}")
    if not 0 <= schema_id <= _MAX_ID:
        raise ValueError(f"schema_id must be in [0, {_MAX_ID}], got {schema_id}")
    return _PREFIX.pack(MAGIC_BYTE, schema_id) + bytes(body)


def unframe(data: Any) -> tuple[int, bytes]:
    """(schema id, Avro body) of Confluent-framed bytes; WireError if the framing is absent."""
    raw = _as_bytes(data)
    if len(raw) < PREFIX_LEN or raw[0] != MAGIC_BYTE:
        start = raw[:PREFIX_LEN].hex() or "(empty)"
        raise WireError(
            f"message is not in the Confluent wire format (magic byte 0 + 4-byte schema id): "
            f"got {len(raw)} bytes starting {start}; was it written without a schema registry?",
            reason="not_framed",
            size=len(raw),
        )
    _, schema_id = _PREFIX.unpack_from(raw)
    return schema_id, raw[PREFIX_LEN:]


def header_value(ctx: Any, name: str) -> bytes | None:
    """The last value of header ``name`` in ``ctx``: a SerializationContext, a consumed
    Message, a header list or dict, or None."""
    headers = getattr(ctx, "headers", ctx)
    if callable(headers):  # a confluent_kafka.Message: headers() is a method
        headers = headers()
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    found = None
    for key, value in items:
        if key == name:
            found = value.encode() if isinstance(value, str) else value
    return found


def _encode(parsed: Any, obj: Any, what: str) -> bytes:
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, parsed, obj)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error) as exc:
        name = _full_name(parsed)
        raise ValueError(
            f"{what} does not match schema {name}: {type(exc).__name__}: {exc}"
        ) from exc
    return buf.getvalue()


def _decode(body: bytes, writer: Any, reader: Any, how: str) -> Any:
    """Decode ``body`` written with ``writer`` into ``reader``; every failure is a WireError."""
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except SchemaResolutionError as exc:
        raise WireError(
            f"message {how} was written with schema {_full_name(writer)}, which cannot be read "
            f"as {_full_name(reader)}: {exc}",
            reason="schema_mismatch",
            writer=_full_name(writer),
            reader=_full_name(reader),
        ) from exc
    except _DECODE_ERRORS as exc:
        raise WireError(
            f"cannot decode {len(body)} bytes {how} as {_full_name(writer)}: "
            f"{type(exc).__name__}: {exc}",
            reason="undecodable",
        ) from exc
    left = len(body) - buf.tell()
    if left:
        raise WireError(
            f"decoded a {_full_name(writer)} {how} but {left} of {len(body)} bytes are left "
            f"over: the bytes were written with another schema or framing",
            reason="undecodable",
        )
    return record


# -- without a registry ---------------------------------------------------------------------
class SchemalessSerializer:
    """``(obj, ctx) -> bytes``: schemaless Avro in ``schema``; send :attr:`headers` with it."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.fingerprint = fingerprint(schema)
        self.headers: tuple[tuple[str, bytes], ...] = (
            (FINGERPRINT_HEADER, self.fingerprint.encode("ascii")),
        )

    def __call__(self, obj: Any, ctx: Any = None) -> bytes:
        return _encode(self.schema, obj, "record")


class SchemalessDeserializer:
    """``(bytes, ctx) -> obj`` for schemaless Avro with a fingerprint header.

    ``writers`` maps the fingerprints this reader accepts to their writer schemas (default:
    ``schema`` alone); each is resolved into ``reader_schema`` (default ``schema``).  A message
    whose header names another fingerprint is refused (``schema_mismatch``) without decoding;
    a message without the header is decoded with ``schema`` and must use up every byte.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        *,
        reader_schema: dict[str, Any] | None = None,
        writers: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.schema = schema
        self.reader_schema = reader_schema or schema
        self.writers = dict(writers) if writers else {fingerprint(schema): schema}

    def __call__(self, data: Any, ctx: Any = None) -> Any:
        raw = _as_bytes(data)
        given = header_value(ctx, FINGERPRINT_HEADER)
        if given is None and raw[:2] == _SINGLE_OBJECT and len(raw) >= 10:
            # Avro single-object encoding (our events, summaries, dead letters): the
            # fingerprint is in the value itself.
            fp = raw[2:10].hex()
            writer = self.writers.get(fp)
            if writer is None:
                raise WireError(
                    f"message is Avro single-object encoded with schema fingerprint {fp}, not "
                    f"{_full_name(self.reader_schema)} (fingerprints {sorted(self.writers)}): "
                    "wrong topic or wrong schema",
                    reason="schema_mismatch",
                    fingerprint=fp,
                )
            return _decode(raw[10:], writer, self.reader_schema, f"(fingerprint {fp})")
        if given is None:
            try:
                return _decode(raw, self.schema, self.reader_schema, "(no fingerprint header)")
            except WireError as exc:
                if raw[:1] == b"\x00" and len(raw) > PREFIX_LEN:
                    exc.message += (
                        "; the bytes start like the Confluent wire format (schema id "
                        f"{_PREFIX.unpack_from(raw)[1]}): read them with --schema-registry-url"
                    )
                    exc.args = (exc.message,)
                raise
        fp = given.decode("ascii", "replace").strip().lower()
        writer = self.writers.get(fp)
        if writer is None:
            raise WireError(
                f"message was written with schema fingerprint {fp}, but this reader expects "
                f"{_full_name(self.reader_schema)} (fingerprints {sorted(self.writers)}); "
                f"refusing to decode it with the wrong schema",
                reason="schema_mismatch",
                fingerprint=fp,
            )
        return _decode(raw, writer, self.reader_schema, f"(fingerprint {fp})")


# -- with a registry ------------------------------------------------------------------------
class RegistrySerializer:
    """``(obj, ctx) -> bytes`` in the Confluent wire format under ``subject``.

    :meth:`ensure` (called by the first serialization, or explicitly at start-up) checks the
    schema's compatibility with the subject's latest version and registers it; see
    :func:`diffstream.stream.transport.registry.ensure_schema`.
    """

    def __init__(
        self,
        client: Any,
        subject: str,
        schema_json: Mapping[str, Any],
        *,
        register: bool = True,
        check: bool = True,
    ) -> None:
        self.client = client
        self.subject = subject
        self.schema_json = dict(schema_json)
        self.schema = fastavro.parse_schema(self.schema_json, named_schemas={})
        self.fingerprint = fingerprint(self.schema)
        self.headers: tuple[tuple[str, bytes], ...] = (
            (FINGERPRINT_HEADER, self.fingerprint.encode("ascii")),
        )
        self._register = register
        self._check = check
        self.schema_id: int | None = None

    def ensure(self) -> int:
        if self.schema_id is None:
            from diffstream.stream.transport.registry import avro_schema, ensure_schema

            self.schema_id = ensure_schema(
                self.client,
                self.subject,
                avro_schema(self.schema_json),
                register=self._register,
                check=self._check,
            )
        return self.schema_id

    def __call__(self, obj: Any, ctx: Any = None) -> bytes:
        return frame(self.ensure(), _encode(self.schema, obj, "record"))


class RegistryDeserializer:
    """``(bytes, ctx) -> obj`` for the Confluent wire format.

    The writer schema is fetched from the registry by the message's id (once per id) and
    resolved into ``reader_schema``; a writer that cannot be resolved (another record, a
    changed type) is a ``schema_mismatch`` WireError naming both, an unknown id is
    ``unknown_schema_id``.  ``fallback`` reads messages that are clearly schemaless (they
    carry the fingerprint header or the single-object marker and no magic byte).
    """

    def __init__(
        self,
        client: Any,
        reader_schema: dict[str, Any],
        *,
        fallback: SchemalessDeserializer | None = None,
    ) -> None:
        self.client = client
        self.reader_schema = reader_schema
        self.fallback = fallback
        self._writers: dict[int, Any] = {}

    def writer(self, schema_id: int) -> Any:
        parsed = self._writers.get(schema_id)
        if parsed is None:
            from diffstream.stream.transport.registry import RegistryError, fetch_schema

            try:
                definition = fetch_schema(self.client, schema_id)
            except RegistryError as exc:
                if exc.fields.get("http_status") == 404:
                    raise WireError(
                        f"schema id {schema_id} is not in the registry: {exc.message}",
                        reason="unknown_schema_id",
                        schema_id=schema_id,
                    ) from exc
                raise
            try:
                parsed = fastavro.parse_schema(definition, named_schemas={})
            except Exception as exc:
                raise WireError(
                    f"schema id {schema_id} from the registry is not a valid Avro schema: {exc}",
                    reason="unknown_schema_id",
                    schema_id=schema_id,
                ) from exc
            self._writers[schema_id] = parsed
        return parsed

    def __call__(self, data: Any, ctx: Any = None) -> Any:
        raw = _as_bytes(data)
        if self.fallback is not None and raw[:1] != b"\x00":
            # Written before the registry was introduced (schemaless, fingerprint header or
            # single-object marker): readable, so a topic can move to the registry in place.
            # Bytes with neither mark still fail below, as not framed.
            if header_value(ctx, FINGERPRINT_HEADER) is not None or raw[:2] == _SINGLE_OBJECT:
                return self.fallback(raw, ctx)
        schema_id, body = unframe(raw)
        writer = self.writer(schema_id)
        return _decode(body, writer, self.reader_schema, f"(schema id {schema_id})")


# -- what producers and consumers use -------------------------------------------------------
@dataclass
class Codec:
    """A value serializer/deserializer pair for one topic, plus the headers to send."""

    mode: str  # "registry", "schemaless" or "single-object"
    serialize: Callable[[Any, Any], bytes]
    deserialize: Callable[[Any, Any], Any]
    headers: tuple[tuple[str, bytes], ...] = ()
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ensure(self) -> int | None:
        """Register/check the schema now (registry mode); the schema id, or None."""
        ensure = getattr(self.serialize, "ensure", None)
        return ensure() if ensure is not None else None


def alert_codec(
    topic: str,
    *,
    registry: Any = None,
    reader_schema: dict[str, Any] | None = None,
    register: bool = True,
    check: bool = True,
) -> Codec:
    """Alerts on ``topic``: the Confluent wire format under ``<topic>-value`` when ``registry``
    (a SchemaRegistryClient) is given, else schemaless with the fingerprint header.

    ``reader_schema`` (e.g. :data:`stream.alerts.packets.LSST_SCHEMA`) is what readers resolve to.
    """
    from diffstream.schemas import load_json

    reader = reader_schema or ALERT_SCHEMA
    if registry is None:
        return Codec(
            mode="schemaless",
            serialize=SchemalessSerializer(ALERT_SCHEMA),
            deserialize=SchemalessDeserializer(ALERT_SCHEMA, reader_schema=reader),
            headers=SchemalessSerializer(ALERT_SCHEMA).headers,
        )
    from diffstream.stream.transport.registry import subject_for

    subject = subject_for(topic)
    ser = RegistrySerializer(
        registry, subject, load_json("diffstream.alert"), register=register, check=check
    )
    fallback = SchemalessDeserializer(ALERT_SCHEMA, reader_schema=reader)
    return Codec(
        mode="registry",
        serialize=ser,
        deserialize=RegistryDeserializer(registry, reader, fallback=fallback),
        headers=ser.headers,
        subject=subject,
    )


def event_codec(
    topic: str, *, registry: Any = None, register: bool = True, check: bool = True
) -> Codec:
    """Exposure events on ``topic``: the Confluent wire format when ``registry`` is given, else
    the Avro single-object encoding of :mod:`stream.transport.events`.  Decoded events are validated
    (:func:`stream.transport.events.validate_event`); every decoding failure is a BadEvent."""
    from diffstream.schemas import load_json
    from diffstream.stream.transport.events import (
        EVENT_SCHEMA,
        decode_event,
        encode_event,
        validate_event,
    )

    if registry is None:
        return Codec(mode="single-object", serialize=encode_event, deserialize=decode_event)
    from diffstream.stream.transport.registry import subject_for

    subject = subject_for(topic)
    ser = RegistrySerializer(
        registry, subject, load_json("diffstream.event"), register=register, check=check
    )
    de = RegistryDeserializer(registry, EVENT_SCHEMA)

    def serialize(event: Any, ctx: Any = None) -> bytes:
        return ser(validate_event(event), ctx)

    def deserialize(data: Any, ctx: Any = None) -> dict[str, Any]:
        return validate_event(de(data, ctx))

    serialize.ensure = ser.ensure  # type: ignore[attr-defined]
    return Codec(
        mode="registry",
        serialize=serialize,
        deserialize=deserialize,
        headers=ser.headers,
        subject=subject,
    )


def reencode(
    data: bytes, source: Codec, target: Codec, ctx: Any = None
) -> tuple[bytes, Sequence[tuple[str, bytes]]]:
    """Decode with ``source`` and encode with ``target`` (e.g. registry-framed events to the
    single-object bytes the worker reads); returns (value, headers to send)."""
    return target.serialize(source.deserialize(data, ctx), None), target.headers


def worker_codecs(settings: Any) -> tuple[Codec, Codec]:
    """(events codec for ``settings.input_topic``, alerts codec for ``settings.output_topic``).

    With ``settings.schema_registry_url`` both use the Confluent wire format and the alert
    schema is checked for compatibility and registered *now* (call this at start-up, before
    consuming: an incompatible schema raises :class:`stream.transport.registry.SchemaIncompatible`).
    Without it: single-object events and schemaless alerts with the fingerprint header,
    byte-identical to :func:`stream.transport.events.decode_event` /
    :func:`diffstream.stream.alerts.packets.serialize_alert`.
    """
    from diffstream.stream.transport.registry import client_from_settings

    client = client_from_settings(settings)
    events = event_codec(settings.input_topic, registry=client, register=False, check=False)
    alerts = alert_codec(settings.output_topic, registry=client)
    alerts.ensure()
    return events, alerts
