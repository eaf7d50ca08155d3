"""The Kafka record headers the stream worker attaches, and the alert schema fingerprint.

Every record the worker publishes (alerts, summaries, dead letters) carries headers under
:data:`HEADER_PREFIX`; :func:`alert_headers` gives an alert's.  Apart from
:mod:`stream.transport.service`
so that ``stream.transport.replay`` can label republished alerts the same way without importing
the worker.
:mod:`diffstream.stream.transport.service` re-exports every public name.
"""

from __future__ import annotations

from typing import Any

from diffstream import __version__
from diffstream.stream.alerts.packets import ALERT_SCHEMA, schema_fingerprint

__all__ = ["ALERT_FINGERPRINT", "HEADER_PREFIX", "alert_headers", "ascii_bytes"]

ALERT_FINGERPRINT: str = schema_fingerprint(ALERT_SCHEMA)
HEADER_PREFIX = "diffstream."


def ascii_bytes(value: Any) -> bytes:
    """A header value or record key as ASCII bytes (``?`` for anything outside ASCII)."""
    return str(value).encode("ascii", "replace")


# The task metadata's ids and hashes that travel as headers: the alert body on Kafka is the
# official schema alone (stream/transport/wire.py says why), and the full record is the
# metadata topic's summary, keyed by exposureId.
_META_HEADERS = ("method", "configHash", "versionsHash")


def alert_headers(
    alert: dict[str, Any], event: dict[str, Any], *, fingerprint: str | None = None
) -> tuple[tuple[str, bytes], ...]:
    """Kafka headers of one alert: visit, detector, exposure, request, the writer schema's
    fingerprint (``fingerprint``: the one the value was written with; default our extended
    schema's), the pipeline version and the task metadata's method and hashes."""
    src = alert["diaSource"]
    meta = alert.get("diffstreamMetadata") or {}
    return (
        (HEADER_PREFIX + "visit", ascii_bytes(src["visit"])),
        (HEADER_PREFIX + "detector", ascii_bytes(src["detector"])),
        (HEADER_PREFIX + "exposureId", ascii_bytes(event["exposureId"])),
        (HEADER_PREFIX + "requestId", event["requestId"].encode()),
        (HEADER_PREFIX + "schema.name", ascii_bytes(ALERT_SCHEMA["name"])),
        (HEADER_PREFIX + "schema.fingerprint", ascii_bytes(fingerprint or ALERT_FINGERPRINT)),
        (HEADER_PREFIX + "pipeline.version", ascii_bytes(__version__)),
        *((HEADER_PREFIX + k, ascii_bytes(meta[k])) for k in _META_HEADERS if meta.get(k)),
    )
