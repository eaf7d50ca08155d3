"""The Kafka record headers the stream worker attaches, and the alert schema fingerprint.

Every record the worker publishes (alerts, summaries, dead letters) carries headers under
:data:`HEADER_PREFIX`; :func:`alert_headers` gives an alert's.  Apart from
:mod:`stream.transport.service`
so that ``stream.transport.replay`` can label republished alerts the same way without importing
the worker.
:mod:`diffstream.stream.transport.service` re-exports every public name.
"""

from __future__ import annotations

import time
from typing import Any

from diffstream import __version__
from diffstream.stream.alerts.packets import ALERT_SCHEMA, schema_fingerprint

__all__ = [
    "ALERT_FINGERPRINT",
    "HEADER_PREFIX",
    "PRODUCER_TIMESTAMP",
    "alert_headers",
    "ascii_bytes",
    "producer_timestamp_header",
    "restamped",
]

ALERT_FINGERPRINT: str = schema_fingerprint(ALERT_SCHEMA)
HEADER_PREFIX = "diffstream."


PRODUCER_TIMESTAMP = "producer_timestamp"


def producer_timestamp_header() -> tuple[str, bytes]:
    """The ``producer_timestamp`` header Rubin's alerts carry: when the producer sent the
    record, integer microseconds since the Unix epoch (UTC), as ASCII digits."""
    return PRODUCER_TIMESTAMP, str(time.time_ns() // 1000).encode("ascii")


def restamped(headers: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``headers`` with a fresh ``producer_timestamp`` in place of any old one: a replayed
    alert is produced now, and a consumer measuring delivery latency from the header must not
    see the archive's age."""
    return [*(h for h in headers if h[0] != PRODUCER_TIMESTAMP), producer_timestamp_header()]


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
