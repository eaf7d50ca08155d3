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


def alert_headers(alert: dict[str, Any], event: dict[str, Any]) -> tuple[tuple[str, bytes], ...]:
    """Kafka headers of one alert: visit, detector, exposure, schema and pipeline version."""
    src = alert["diaSource"]
    return (
        (HEADER_PREFIX + "visit", ascii_bytes(src["visit"])),
        (HEADER_PREFIX + "detector", ascii_bytes(src["detector"])),
        (HEADER_PREFIX + "exposureId", ascii_bytes(event["exposureId"])),
        (HEADER_PREFIX + "requestId", event["requestId"].encode()),
        (HEADER_PREFIX + "schema.name", ascii_bytes(ALERT_SCHEMA["name"])),
        (HEADER_PREFIX + "schema.fingerprint", ascii_bytes(ALERT_FINGERPRINT)),
        (HEADER_PREFIX + "pipeline.version", ascii_bytes(__version__)),
    )
