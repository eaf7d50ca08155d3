"""Schemaless Avro encoding of alerts: the one encoder that the alert file writer
(:func:`stream.alerts.packets.write_alert_file`) and the alert serializer of the Kafka
producer (:func:`stream.alerts.packets.serialize_alert`) share.

fastavro is general: for every value of a union it validates the value against each branch
(for a nullable record such as ``diaObject``, every field of it) before writing, which made
encoding ~170 us of each alert, ~0.2 s of a crowded 4k exposure's 1250.  Our alert schema
is fixed, so :class:`Encoder` compiles it once into per-field steps that write the same
bytes for the values our records hold (plain Python ``int``/``float``/``bool``/``str``/
``bytes``, None, dicts and lists), and checks each value's type exactly as it goes.  Any
value it does not expect (a numpy scalar, a bool in a double field, a missing key, an int
beyond its type's range, a non-finite float32 ...) stops it, and fastavro encodes that whole
record instead: the bytes, or the error, are then fastavro's own.
tests/unit/test_avroenc.py compares the bytes with fastavro's, record by record.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import fastavro

__all__ = ["ENCODE_ERRORS", "Encoder", "encoder", "long_bytes"]

_PACK_D = struct.Struct("<d").pack
# A bytes value this long (a cutout: ~30 KB) is passed on as a piece of its own, not copied
# into the record's buffer: an exposure's alerts hold ~90 MB of cutouts, and copying them
# (buffer growth, then bytes()) was ~40% of encoding.
_PIECE = 2048
_PACK_F = struct.Struct("<f").pack
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# One byte per zig-zag value below 64 (most of an alert's ints: flags, counts, union tags).
_SMALL = [bytes([v << 1]) for v in range(64)]

# What encoding a record that does not match its schema raises (fastavro's errors, which
# this encoder hands such a record to): the callers' one list to catch.
ENCODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error)

Write = Callable[["_Out", Any], None]


class _Out(bytearray):
    """A record's bytes being written: the buffer itself, and ``pieces`` before it (the
    buffer's earlier contents and long bytes values, in order)."""

    __slots__ = ("pieces",)

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[bytes] = []


class _Unexpected(Exception):
    """A value this encoder does not write itself: fastavro takes the record."""


def _long(out: bytearray, value: int) -> None:
    """Avro's zig-zag varint (fastavro's write_long)."""
    if 0 <= value < 64:
        out += _SMALL[value]
        return
    n = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def long_bytes(value: int) -> bytes:
    """Avro's encoding of one long (an object container block's count and size)."""
    out = bytearray()
    _long(out, value)
    return bytes(out)


def _integer(base: str) -> Write:
    lo, hi = _INT_RANGE[base]

    def write(out: _Out, value: Any) -> None:
        if type(value) is not int or not lo <= value <= hi:
            raise _Unexpected
        _long(out, value)

    return write


def _double(out: _Out, value: Any) -> None:
    kind = type(value)
    if kind is not float and kind is not int:
        raise _Unexpected
    out += _PACK_D(value)


def _float(out: _Out, value: Any) -> None:
    kind = type(value)
    if kind is not float and kind is not int:
        raise _Unexpected
    try:
        packed = _PACK_F(value)
    except OverflowError:  # fastavro's C cast gives inf there: its bytes, not ours
        raise _Unexpected from None
    if value != value:  # NaN: struct and a C cast may keep different payload bits
        raise _Unexpected
    out += packed


def _boolean(out: _Out, value: Any) -> None:
    if value is True:
        out.append(1)
    elif value is False:
        out.append(0)
    else:
        raise _Unexpected


def _string(out: _Out, value: Any) -> None:
    if type(value) is not str:
        raise _Unexpected
    data = value.encode()
    _long(out, len(data))
    out += data


def _bytes(out: _Out, value: Any) -> None:
    if type(value) is not bytes:
        raise _Unexpected
    _long(out, len(value))
    if len(value) < _PIECE:
        out += value
        return
    out.pieces.append(bytes(out))
    out.pieces.append(value)
    del out[:]


def _null(out: _Out, value: Any) -> None:
    if value is not None:
        raise _Unexpected


_PRIMITIVES: dict[str, Write] = {
    "null": _null,
    "boolean": _boolean,
    "int": _integer("int"),
    "long": _integer("long"),
    "float": _float,
    "double": _double,
    "string": _string,
    "bytes": _bytes,
}


class Encoder:
    """Schemaless Avro bytes of records of one parsed schema (``fastavro.parse_schema``
    output, named types included), equal to ``fastavro.schemaless_writer``'s.

    Supported: the primitives, records, enums, arrays, maps, and unions of null and one
    other type (``["null", T]``, either order).  A value of any other type (fixed, a logical
    type, a wider union: the alert's ``mpc_orbits`` has timestamps) sends its record to
    fastavro; where such a field is null (as ``mpc_orbits`` is in our alerts) the encoder
    writes it."""

    def __init__(self, parsed: dict[str, Any]) -> None:
        self.parsed = parsed
        self._named: dict[str, Any] = dict(parsed.get("__named_schemas", {}))
        self._compiled: dict[str, Write] = {}
        self._write = self._compile(parsed)

    def encode(self, record: Any) -> bytes:
        """The bytes of ``record``; fastavro's errors (ValueError, TypeError, ...) where
        the record does not match the schema."""
        pieces = self.pieces(record)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def pieces(self, record: Any) -> list[bytes]:
        """The bytes of ``record`` as consecutive pieces (long bytes values, such as
        cutouts, are pieces of their own, not copied: a container file's block compresses
        them where they are); fastavro's errors where the record does not match."""
        out = _Out()
        try:
            self._write(out, record)
        except _Unexpected:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, self.parsed, record)
            return [buf.getvalue()]
        if out or not out.pieces:
            out.pieces.append(bytes(out))
        return out.pieces

    # -- compiling ----------------------------------------------------------------------------
    def _compile(self, schema: Any) -> Write:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            if schema in self._compiled:  # a named type, possibly still being compiled
                return self._late(schema)
            if schema in self._named:
                return self._compile(self._named[schema])
            return _never
        if isinstance(schema, list):
            return self._union(schema)
        if not isinstance(schema, dict) or "logicalType" in schema:
            return _never
        kind = schema.get("type")
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        if kind == "record":
            return self._record(schema)
        if kind == "enum":
            return self._enum(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "map":
            return self._map(schema)
        return _never

    def _late(self, name: str) -> Write:
        compiled = self._compiled

        def write(out: _Out, value: Any) -> None:
            compiled[name](out, value)

        return write

    def _nullable(self, schema: Any) -> tuple[int, int, Write] | None:
        """(null's tag, the value's tag, the value's step) of a union of null and one type;
        None for any other schema.  Tags: the branch index as a zig-zag varint byte."""
        if not isinstance(schema, list) or len(schema) != 2 or "null" not in schema:
            return None
        if schema[0] == schema[1]:
            return None
        null_first = schema[0] == "null"
        inner = self._compile(schema[1] if null_first else schema[0])
        return (0, 2, inner) if null_first else (2, 0, inner)

    def _union(self, branches: list[Any]) -> Write:
        union = self._nullable(branches)
        if union is None:
            return _never
        null_tag, value_tag, inner = union

        def write(out: _Out, value: Any) -> None:
            if value is None:
                out.append(null_tag)
            else:
                out.append(value_tag)
                inner(out, value)

        return write

    def _record(self, schema: dict[str, Any]) -> Write:
        name = schema["name"]
        self._compiled[name] = _never  # a recursive reference resolves late (_late)
        # A nullable field's union is written here, not by a step of its own: one Python
        # call per field fewer (most of a diaSource's and a diaObject's fields are nullable).
        steps = []
        for f in schema["fields"]:
            union = self._nullable(f["type"])
            if union is None:
                steps.append((f["name"], False, 0, 0, self._compile(f["type"])))
            else:
                steps.append((f["name"], True, *union))

        def write(out: _Out, value: Any) -> None:
            if type(value) is not dict:
                raise _Unexpected
            try:
                for key, nullable, null_tag, value_tag, step in steps:
                    item = value[key]
                    if nullable:
                        if item is None:
                            out.append(null_tag)
                            continue
                        out.append(value_tag)
                    step(out, item)
            except KeyError:  # fastavro would take the field's default
                raise _Unexpected from None

        self._compiled[name] = write
        return write

    def _enum(self, schema: dict[str, Any]) -> Write:
        index = {symbol: i for i, symbol in enumerate(schema["symbols"])}

        def write(out: _Out, value: Any) -> None:
            if type(value) is not str or value not in index:
                raise _Unexpected
            _long(out, index[value])

        self._compiled[schema["name"]] = write
        return write

    def _array(self, schema: dict[str, Any]) -> Write:
        items = self._compile(schema["items"])

        def write(out: _Out, value: Any) -> None:
            if type(value) is not list:
                raise _Unexpected
            if value:
                _long(out, len(value))
                for item in value:
                    items(out, item)
            out.append(0)

        return write

    def _map(self, schema: dict[str, Any]) -> Write:
        values = self._compile(schema["values"])

        def write(out: _Out, value: Any) -> None:
            if type(value) is not dict:
                raise _Unexpected
            if value:
                _long(out, len(value))
                for key, item in value.items():
                    _string(out, key)
                    values(out, item)
            out.append(0)

        return write


_ENCODERS: dict[int, Encoder] = {}


def encoder(parsed: dict[str, Any]) -> Encoder:
    """The :class:`Encoder` of a parsed schema, compiled on first use (~1 ms for the alert
    schema) and kept: schemas are module constants (kept by identity)."""
    found = _ENCODERS.get(id(parsed))
    if found is None or found.parsed is not parsed:
        found = _ENCODERS[id(parsed)] = Encoder(parsed)
    return found


def _never(out: _Out, value: Any) -> None:
    """The step of a type the encoder leaves to fastavro."""
    raise _Unexpected
