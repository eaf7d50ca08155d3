"""Message framing: the Confluent wire format, as Rubin frames its alerts.

Alerts on Kafka are, by default and with or without a registry, what Rubin's alert stream
carries (ap_association ``packageAlerts.py``), so a stock Rubin consumer decodes them unchanged::

    byte 0     magic byte 0
    bytes 1-4  schema id, unsigned 32-bit big-endian: Rubin's id of the official schema,
               major*100 + minor (1101 for v11.1, ``lsst.alert.packet`` ``get_schema_id``)
    bytes 5-   the schemaless Avro body in the *official* LSST schema (no trailing field)

The task metadata travels beside the body, never in it: Kafka headers carry the ids and hashes
(:func:`diffstream.stream.transport.headers.alert_headers`) and the full record is on the
metadata topic keyed by exposureId.  We rejected the trailing ``diffstreamMetadata`` field on
the wire: ``lsst.alert.packet``'s reader happens to stop before it, but a message that claims
schema 1101 must be schema 1101 for every reader (Java's, ours with its left-over check).

With a registry (``--schema-registry-url``) the official schema is registered under Rubin's
subject ``lsst-alerts-v{M.m}-value`` with Rubin's id where the registry can hold a chosen id
(:func:`diffstream.stream.transport.registry.ensure_rubin_schema`); where it cannot, alerts are
framed with the id it gave, with a WARNING.  Events use the Confluent wire format under
``<topic>-value`` with a registry, and their own Avro single-object framing
(:mod:`stream.transport.events`) without one.

Unframed alerts stay available as an opt-in (``alert_wire_format="schemaless"``): schemaless
Avro in our extended schema, with the writer schema's CRC-64-AVRO fingerprint in the Kafka
header ``diffstream.schema.fingerprint``.

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
from typing import Any, cast

import fastavro
from fastavro.read import SchemaResolutionError

from diffstream.schemas import AVRO_DECODE_ERRORS, fingerprint
from diffstream.stream.alerts.avroenc import ENCODE_ERRORS, encoder
from diffstream.stream.alerts.packets import ALERT_SCHEMA, LSST_SCHEMA
from diffstream.stream.ops.errors import BadEvent

__all__ = [
    "MAGIC_BYTE",
    "PREFIX_LEN",
    "FINGERPRINT_HEADER",
    "RUBIN_SCHEMA_ID",
    "RUBIN_SUBJECT",
    "ALERT_WIRE_FORMATS",
    "rubin_schema_id",
    "rubin_subject",
    "official_schema_json",
    "FramedAlertSerializer",
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
ALERT_WIRE_FORMATS = ("confluent", "schemaless")


def _lsst_version(name: str) -> tuple[int, int]:
    """(major, minor) of an LSST alert schema full name such as ``lsst.v11_1.alert``."""
    import re

    found = re.fullmatch(r"(?:.*/)?lsst\.v(\d+)_(\d+)\.alert", name)
    if found is None:
        raise ValueError(f"not an LSST alert schema name (lsst.vM_m.alert): {name!r}")
    return int(found[1]), int(found[2])


def rubin_schema_id(name: str) -> int:
    """Rubin's registry id of alert schema ``name``: major*100 + minor (``lsst.v11_1.alert``
    -> 1101), as ``lsst.alert.packet.Schema.get_schema_id`` computes it."""
    major, minor = _lsst_version(name)
    if minor > 99:
        raise ValueError(f"minor version {minor} of {name!r} does not fit Rubin's id scheme")
    return major * 100 + minor


def rubin_subject(name: str) -> str:
    """Rubin's registry subject of alert schema ``name``: ``lsst-alerts-v11.1-value`` for
    ``lsst.v11_1.alert`` (Rubin's syncAllSchemasToRegistry.py)."""
    major, minor = _lsst_version(name)
    return f"lsst-alerts-v{major}.{minor}-value"


RUBIN_SCHEMA_ID: int = rubin_schema_id(str(LSST_SCHEMA["name"]))
RUBIN_SUBJECT: str = rubin_subject(str(LSST_SCHEMA["name"]))


def official_schema_json() -> dict[str, Any]:
    """The official alert schema as one self-contained JSON record (each named type defined
    at its first use), the form Rubin registers: fastavro's parse without its private keys.

    Object keys are sorted: the registry stores the text, and a lookup must find the text
    registered by another process, whose parsed schema may hold its keys in another order
    (seen: ``default`` before ``doc`` after the schema had been used for reading)."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(node[k]) for k in sorted(node) if not k.startswith("__")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return cast(dict[str, Any], clean(LSST_SCHEMA))


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
    # The one Avro encoder of alerts and records (stream.alerts.avroenc): fastavro's bytes
    # and errors, without its per-union validation.
    try:
        return encoder(parsed).encode(obj)
    except ENCODE_ERRORS as exc:
        name = _full_name(parsed)
        raise ValueError(
            f"{what} does not match schema {name}: {type(exc).__name__}: {exc}"
        ) from exc


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

    The writer schema is looked up in ``known`` (id -> parsed schema), else fetched from the
    registry by the message's id (once per id; ``client`` None: no registry) and
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
        known: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        self.client = client
        self.reader_schema = reader_schema
        self.fallback = fallback
        # Ids known without asking a registry (Rubin's 1101 -> the official schema), so a
        # reader without a registry (client None) still reads Rubin-framed alerts.
        self._writers: dict[int, Any] = dict(known or {})

    def know(self, schema_id: int, parsed: Any) -> None:
        """Read ``schema_id`` with ``parsed`` without asking the registry (unless known)."""
        self._writers.setdefault(schema_id, parsed)

    def writer(self, schema_id: int) -> Any:
        parsed = self._writers.get(schema_id)
        if parsed is None and self.client is None:
            raise WireError(
                f"schema id {schema_id} is not one this reader knows ({sorted(self._writers)}) "
                "and no schema registry is configured (--schema-registry-url)",
                reason="unknown_schema_id",
                schema_id=schema_id,
            )
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


class FramedAlertSerializer:
    """``(alert, ctx) -> bytes``: the Confluent wire format with ``schema_id`` around the
    alert encoded in the official LSST schema (extra keys such as ``diffstreamMetadata`` are
    not written); Rubin's framing.

    ``ensure`` (optional) is called once, by :meth:`ensure` or the first serialization, and
    returns the id to frame with (a registry's); without it ``schema_id`` is used as given.
    """

    def __init__(
        self, schema_id: int = RUBIN_SCHEMA_ID, *, ensure: Callable[[], int] | None = None
    ) -> None:
        self.schema = LSST_SCHEMA
        self.fingerprint = fingerprint(LSST_SCHEMA)
        self.headers: tuple[tuple[str, bytes], ...] = (
            (FINGERPRINT_HEADER, self.fingerprint.encode("ascii")),
        )
        self._ensure = ensure
        self.schema_id: int | None = None
        if ensure is None:
            frame(schema_id, b"")  # checks the id now, not at the first alert
            self.schema_id = schema_id

    def ensure(self) -> int:
        if self.schema_id is None and self._ensure is not None:
            self.schema_id = int(self._ensure())
        if self.schema_id is None:
            raise RuntimeError("FramedAlertSerializer has neither a schema id nor an ensure")
        return self.schema_id

    def __call__(self, obj: Any, ctx: Any = None) -> bytes:
        return frame(self.ensure(), _encode(self.schema, obj, "alert"))


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
    wire_format: str = "confluent",
) -> Codec:
    """Alerts on ``topic``.

    ``wire_format="confluent"`` (the default): Rubin's framing, the official schema under
    Rubin's id (:data:`RUBIN_SCHEMA_ID`); with ``registry`` (a SchemaRegistryClient) the
    official schema is registered under :data:`RUBIN_SUBJECT` at :meth:`Codec.ensure` and the
    frames carry the id the registry holds it under (Rubin's where the registry can hold a
    chosen id).  ``wire_format="schemaless"``: unframed Avro in our extended schema with the
    fingerprint header (``topic`` unused in either case: the subject is Rubin's).

    The deserializer reads all three: Rubin-framed alerts (id 1101 known without a
    registry; other ids from ``registry``), and schemaless ones (fingerprint header or
    single-object marker).  ``reader_schema`` (default our schema: ``diffstreamMetadata``
    comes back None from framed alerts) is what readers resolve to.
    """
    if wire_format not in ALERT_WIRE_FORMATS:
        raise ValueError(f"wire_format must be one of {ALERT_WIRE_FORMATS}, got {wire_format!r}")
    reader = reader_schema or ALERT_SCHEMA
    fallback = SchemalessDeserializer(ALERT_SCHEMA, reader_schema=reader)
    deserialize = RegistryDeserializer(
        registry, reader, fallback=fallback, known={RUBIN_SCHEMA_ID: LSST_SCHEMA}
    )
    if wire_format == "schemaless":
        ser = SchemalessSerializer(ALERT_SCHEMA)
        return Codec(mode="schemaless", serialize=ser, deserialize=deserialize, headers=ser.headers)
    if registry is None:
        framed = FramedAlertSerializer(RUBIN_SCHEMA_ID)
        return Codec(mode="confluent", serialize=framed, deserialize=deserialize,
                     headers=framed.headers)  # fmt: skip

    def ensure() -> int:
        from diffstream.stream.transport.registry import ensure_rubin_schema

        schema_id = ensure_rubin_schema(
            registry, official_schema_json(), subject=RUBIN_SUBJECT, schema_id=RUBIN_SCHEMA_ID,
            register=register,
        )  # fmt: skip
        if schema_id != RUBIN_SCHEMA_ID:
            # The frames must carry the registry's id (readers resolve it there); readers
            # keyed on Rubin's id see the mapping in this log line and in the summary.
            deserialize.know(schema_id, LSST_SCHEMA)
        return schema_id

    framed = FramedAlertSerializer(ensure=ensure)
    return Codec(
        mode="registry",
        serialize=framed,
        deserialize=deserialize,
        headers=framed.headers,
        subject=RUBIN_SUBJECT,
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

    Alerts are Rubin-framed (``settings.alert_wire_format``, default ``confluent``) with or
    without a registry.  With ``settings.schema_registry_url`` events use the Confluent wire
    format too, and the official alert schema is registered under Rubin's subject *now* (call
    this at start-up, before consuming: a registry problem stops the worker before it reads).
    Without it events are single-object encoded (:func:`stream.transport.events.decode_event`).
    """
    client = None
    if settings.schema_registry_url:
        # Only then: confluent_kafka.schema_registry (with its HTTP, auth and crypto stack)
        # costs ~0.2 s of every worker's start-up, and most deployments run without one.
        from diffstream.stream.transport.registry import client_from_settings

        client = client_from_settings(settings)
    events = event_codec(settings.input_topic, registry=client, register=False, check=False)
    alerts = alert_codec(
        settings.output_topic,
        registry=client,
        wire_format=getattr(settings, "alert_wire_format", "confluent"),
    )
    alerts.ensure()
    return events, alerts
