"""``diffstream tail``: print alerts from a topic or from an archived alert file.

One line per alert::

    alerts[1]@17  diaSourceId=1099511627780 visit=1 det=2 band=r  ra=150.012345 dec=-30.004321
        psfFlux=12345.6±123.4 nJy  snr=100.1  +

(one line; the sign is ``-`` for a negative diaSource, ``isNegative``), or with ``--json`` one
JSON object per alert, bytes fields (cutouts) as ``{"bytes": N}`` or, with
``--bytes base64``, as base64 text.  Messages that do not decode (a wrong schema, another
framing) are reported on stderr with their ``topic[partition]@offset`` and counted; the
command then exits 1.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TextIO

from diffstream.stream.ops.errors import DiffstreamError
from diffstream.stream.ops.logs import where

__all__ = ["alert_line", "alert_json", "TailStats", "tail_file", "tail_topic"]

BYTES_MODES = ("length", "base64")


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    return format(value, fmt)


def alert_line(alert: dict[str, Any]) -> str:
    """One human line: ids, position [deg], PSF flux ± error [nJy], S/N and sign."""
    src = alert.get("diaSource") or {}
    flux = src.get("psfFlux")
    negative = src.get("isNegative")
    if negative is None:
        negative = flux is not None and math.isfinite(flux) and flux < 0
    band = src.get("band") or "?"
    return (
        f"diaSourceId={alert.get('diaSourceId')} visit={src.get('visit')} "
        f"det={src.get('detector')} band={band}  ra={_num(src.get('ra'), '.6f')} "
        f"dec={_num(src.get('dec'), '.6f')}  psfFlux={_num(flux, '.1f')}"
        f"\u00b1{_num(src.get('psfFluxErr'), '.1f')} nJy  snr={_num(src.get('snr'), '.1f')}  "
        f"{'-' if negative else '+'}"
    )


def _plain(value: Any, bytes_as: str) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return (
            base64.b64encode(raw).decode("ascii") if bytes_as == "base64" else {"bytes": len(raw)}
        )
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v, bytes_as) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, bytes_as) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def alert_json(alert: dict[str, Any], *, bytes_as: str = "length") -> str:
    """The alert as one line of strict JSON (NaN -> null); bytes as ``{"bytes": N}`` or base64."""
    if bytes_as not in BYTES_MODES:
        raise ValueError(f"bytes_as must be one of {BYTES_MODES}, got {bytes_as!r}")
    return json.dumps(_plain(alert, bytes_as), separators=(",", ":"), allow_nan=False)


@dataclass
class TailStats:
    printed: int = 0
    failed: int = 0


def _emitter(
    out: TextIO, *, as_json: bool, bytes_as: str
) -> Callable[[dict[str, Any], str | None], None]:
    def emit(alert: dict[str, Any], prefix: str | None) -> None:
        if as_json:
            text = alert_json(alert, bytes_as=bytes_as)
            if prefix is not None:  # keep the object pure JSON: the position goes inside
                text = text[:-1] + f',"_where":{json.dumps(prefix)}}}'
            print(text, file=out, flush=True)
        else:
            line = alert_line(alert)
            print(f"{prefix}  {line}" if prefix else line, file=out, flush=True)

    return emit


def tail_file(
    path: str | os.PathLike[str],
    *,
    as_json: bool = False,
    bytes_as: str = "length",
    max_alerts: int | None = None,
    reader_schema: dict[str, Any] | None = None,
    out: TextIO,
) -> TailStats:
    """Print the alerts of an Avro container file (``write_alert_file``'s output)."""
    from diffstream.stream.alerts.packets import read_alert_file

    if bytes_as not in BYTES_MODES:
        raise ValueError(f"bytes_as must be one of {BYTES_MODES}, got {bytes_as!r}")
    emit = _emitter(out, as_json=as_json, bytes_as=bytes_as)
    stats = TailStats()
    for alert in read_alert_file(path, reader_schema=reader_schema):
        if max_alerts is not None and stats.printed >= max_alerts:
            break
        emit(alert, None)
        stats.printed += 1
    return stats


def tail_topic(
    consumer: Any,
    topic: str,
    ranges_start: dict[int, int],
    *,
    deserialize: Callable[[Any, Any], dict[str, Any]],
    as_json: bool = False,
    bytes_as: str = "length",
    max_alerts: int | None = None,
    idle_timeout: float | None = None,
    out: TextIO,
    err: TextIO,
    should_stop: Callable[[], bool] | None = None,
) -> TailStats:
    """Follow ``topic`` from ``ranges_start`` (``{partition: offset}``) and print each alert.

    Stops after ``max_alerts`` alerts, after ``idle_timeout`` seconds without a message (None:
    never), or when ``should_stop()`` says so.  ``deserialize`` is a wire-format deserializer
    (:mod:`stream.transport.wire`); it receives the message itself as context, for its headers.
    """
    from confluent_kafka import KafkaError, TopicPartition

    if bytes_as not in BYTES_MODES:
        raise ValueError(f"bytes_as must be one of {BYTES_MODES}, got {bytes_as!r}")
    emit = _emitter(out, as_json=as_json, bytes_as=bytes_as)
    stats = TailStats()
    consumer.assign([TopicPartition(topic, p, o) for p, o in sorted(ranges_start.items())])
    last = time.monotonic()
    try:
        while max_alerts is None or stats.printed + stats.failed < max_alerts:
            if should_stop is not None and should_stop():
                break
            msg = consumer.poll(0.25)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    break
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                print(f"{topic}: {msg.error()}", file=err, flush=True)
                stats.failed += 1
                continue
            last = time.monotonic()
            here = where(msg.topic(), msg.partition(), msg.offset())
            try:
                alert = deserialize(msg.value(), msg)
            except (DiffstreamError, ValueError) as exc:
                text = exc.message if isinstance(exc, DiffstreamError) else str(exc)
                print(f"{here}: cannot decode: {text}", file=err, flush=True)
                stats.failed += 1
                continue
            emit(alert, here)
            stats.printed += 1
    finally:
        consumer.unassign()
    return stats
