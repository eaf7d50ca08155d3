"""Avro schemas (.avsc) shipped with diffstream, loaded by name at run time.

``lsst/`` holds a verbatim copy of the newest official Rubin alert schema files (from the
``lsst-alert-packet`` package); ``diffstream.alert.avsc`` is generated from them by
``python -m diffstream.schemas.build_alert_schema``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

__all__ = [
    "SCHEMA_DIR",
    "LSST_DIR",
    "schema_path",
    "load_json",
    "load_parsed",
    "lsst_alert_name",
    "fingerprint",
]

SCHEMA_DIR = Path(__file__).resolve().parent
LSST_DIR = SCHEMA_DIR / "lsst"


def schema_path(name: str) -> Path:
    """Path of ``schemas/<name>.avsc``; ``name`` may include a subfolder (``lsst/...``)."""
    path = SCHEMA_DIR / f"{name}.avsc"
    if not path.is_file():
        raise FileNotFoundError(f"no schema named {name!r} in {SCHEMA_DIR}")
    return path


@cache
def load_json(name: str) -> Any:
    """The schema's JSON definition (not parsed by fastavro).

    Cached and shared: deep-copy it before changing it.
    """
    return json.loads(schema_path(name).read_text())


@cache
def load_parsed(name: str) -> dict[str, Any]:
    """The schema parsed by fastavro, ready for its readers and writers.

    ``fastavro.schema.load_schema`` also resolves named types defined in sibling files of
    the same folder, which the split LSST schema (``lsst/lsst.vM_m.alert``) needs.  Each call
    gets its own named-type table, so our alert and LSST's, which share full names
    (``lsst.v11_1.alert``), never clobber each other.
    """
    parsed = fastavro.schema.load_schema(str(schema_path(name)))
    if not isinstance(parsed, dict):
        raise TypeError(f"schema {name!r} is not a named record, got {type(parsed).__name__}")
    return parsed


def lsst_alert_name() -> str:
    """Name of the vendored LSST alert schema for :func:`load_parsed` (``lsst/lsst.vM_m.alert``)."""
    found = sorted(LSST_DIR.glob("lsst.v*_*.alert.avsc"))
    if len(found) != 1:
        names = [p.name for p in found]
        raise FileNotFoundError(
            f"expected exactly one lsst.vM_m.alert.avsc in {LSST_DIR}, found {names}"
        )
    return f"lsst/{found[0].name.removesuffix('.avsc')}"


def fingerprint(schema: Any) -> str:
    """CRC-64-AVRO ("Rabin") fingerprint of the schema's Parsing Canonical Form, as hex.

    The 16 hex digits are the fingerprint's 8 bytes in little-endian order, the order the
    Avro single-object encoding puts after its ``C3 01`` marker and the one
    ``fastavro.schema.fingerprint`` prints; the Avro spec's test vectors list the same number
    as a signed 64-bit integer (``"null"`` -> 7195948357588979594 -> ``8a8f25cce724dd63``).
    The canonical form drops docs, aliases and defaults and fixes the order of JSON
    attributes, so schemas that differ only in those share a fingerprint, while any change to
    the encoded bytes (a field added, a type changed) changes it.
    """
    canonical = to_parsing_canonical_form(schema)
    return str(_fingerprint(canonical, "CRC-64-AVRO"))


def _decode_errors() -> tuple[type[BaseException], ...]:
    import struct

    from fastavro.read import SchemaResolutionError

    return (
        EOFError, IndexError, KeyError, ValueError, TypeError, OverflowError,
        UnicodeDecodeError,
        MemoryError,  # a garbled length prefix can ask for a huge allocation
        struct.error, SchemaResolutionError,
    )  # fmt: skip


# What fastavro raises on bytes that do not decode (truncated, garbled, another schema):
# every decoder turns exactly these into its own clear error.
AVRO_DECODE_ERRORS: tuple[type[BaseException], ...] = _decode_errors()
