"""Replay an archived topic into another one: events re-processed, or alerts re-published.

    events mode: archived exposure events -> the stream worker
    (:class:`stream.transport.service.Worker`,
                 the same processing as ``diffstream run``) -> alerts on the output topic
    alerts mode: archived alerts -> decoded, checked, re-encoded for the output topic's framing

Positions (:func:`parse_position`): ``earliest``, ``latest``, an absolute ``OFFSET`` (the same
in every partition; a negative one counts back from the end), or an ISO-8601 time resolved
per partition through ``offsets_for_times`` (first message at or after it).  The range is
``[start, end)`` in every partition; ``end`` defaults to the end of each partition when the
replay starts, so a replay of a live topic finishes.

The replay reads with ``assign()`` (no group rebalances) and commits its progress under its own
consumer group (``diffstream-replay-<random>`` unless given), never the worker's.  Alerts are
published keyed by diaSourceId with the worker's headers plus ``diffstream.replay.source``
(``topic[partition]@offset`` of the input).  The pipeline is deterministic given the exposure
id, so replayed events give the same diaSourceIds and fluxes as the first run
(tests/integration/test_tools.py checks it).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import KafkaError, TopicPartition

from diffstream.stream.ops.errors import ConfigError, DiffstreamError, ProduceError
from diffstream.stream.ops.logs import where

__all__ = [
    "Position",
    "parse_position",
    "partition_ranges",
    "read_range",
    "Progress",
    "ReplayStats",
    "replay_alerts",
    "replay_events",
    "summary_table",
    "REPLAY_SOURCE_HEADER",
]

log = logging.getLogger("diffstream.replay")

REPLAY_SOURCE_HEADER = "diffstream.replay.source"
_OFFSET = re.compile(r"^[+-]?\d+$")
_FLUSH_S = 60.0


# -- positions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """Where a range starts or ends: ``kind`` is earliest, latest, offset or time.

    ``value``: the offset (negative: from the end) or the time in ms since the epoch (UTC).
    """

    kind: str
    value: int | None = None

    def __str__(self) -> str:
        if self.kind == "offset":
            return str(self.value)
        if self.kind == "time":
            ts = datetime.fromtimestamp((self.value or 0) / 1000, tz=UTC)
            return ts.isoformat(timespec="milliseconds")
        return self.kind


def parse_position(text: str) -> Position:
    """``earliest`` | ``latest`` | ``OFFSET`` (int; negative counts back from the end) |
    ISO-8601 time (``2026-11-25T09:10:00Z``, ``2026-11-25 09:10:00+01:00``; no zone = UTC)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a position is earliest, latest, an offset or an ISO time; got {text!r}")
    s = text.strip()
    if s.lower() in ("earliest", "beginning"):
        return Position("earliest")
    if s.lower() in ("latest", "end"):
        return Position("latest")
    if _OFFSET.match(s):
        return Position("offset", int(s))
    try:
        ts = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"a position is earliest, latest, an offset or an ISO-8601 time; got {text!r}"
        ) from exc
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ms = int(round(ts.timestamp() * 1000))
    if ms < 0:
        raise ValueError(f"a time position must be after 1970-01-01, got {text!r}")
    return Position("time", ms)


def _watermarks(consumer: Any, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    got = consumer.get_watermark_offsets(tp, timeout=timeout)
    if got is None:
        raise ConfigError(f"no watermarks for {tp.topic}[{tp.partition}] within {timeout:g} s")
    return int(got[0]), int(got[1])


def _resolve(
    consumer: Any, topic: str, partitions: list[int], pos: Position, timeout: float
) -> dict[int, int]:
    marks = {p: _watermarks(consumer, TopicPartition(topic, p), timeout) for p in partitions}
    if pos.kind == "earliest":
        return {p: lo for p, (lo, _) in marks.items()}
    if pos.kind == "latest":
        return {p: hi for p, (_, hi) in marks.items()}
    if pos.kind == "offset":
        n = int(pos.value or 0)
        if n >= 0:
            return {p: min(max(n, lo), hi) for p, (lo, hi) in marks.items()}
        return {p: max(hi + n, lo) for p, (lo, hi) in marks.items()}
    asked = [TopicPartition(topic, p, int(pos.value or 0)) for p in partitions]
    found = consumer.offsets_for_times(asked, timeout=timeout)
    out: dict[int, int] = {}
    for tp in found:
        if tp.error is not None:
            raise ConfigError(f"offsets_for_times({topic}[{tp.partition}], {pos}): {tp.error}")
        lo, hi = marks[tp.partition]
        # -1: no message at or after that time, so the range starts at the end.
        out[tp.partition] = hi if tp.offset < 0 else min(max(tp.offset, lo), hi)
    return out


def topic_partitions(consumer: Any, topic: str, *, timeout: float = 10.0) -> list[int]:
    """The partition ids of ``topic``; ConfigError when it does not exist."""
    md = consumer.list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        reason = t.error if t is not None and t.error is not None else "not found"
        raise ConfigError(f"topic {topic} is not available on the broker: {reason}")
    return sorted(t.partitions)


def partition_ranges(
    consumer: Any,
    topic: str,
    start: Position,
    end: Position | None = None,
    *,
    partitions: list[int] | None = None,
    timeout: float = 10.0,
) -> dict[int, tuple[int, int]]:
    """``{partition: (first, stop)}``: the offsets ``first <= o < stop`` to read in each
    partition of ``topic`` (``end`` None: each partition's end now)."""
    parts = partitions if partitions is not None else topic_partitions(consumer, topic)
    lo = _resolve(consumer, topic, parts, start, timeout)
    hi = _resolve(consumer, topic, parts, end or Position("latest"), timeout)
    return {p: (lo[p], max(lo[p], hi[p])) for p in parts}


def read_range(
    consumer: Any,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    *,
    idle_timeout: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[Any]:
    """Every message of ``ranges`` (assigned, not subscribed), in order within each partition
    (partitions interleave as fetched); ConfigError if ``idle_timeout`` seconds pass without
    one while some are still missing (a compacted/deleted range, or an unreachable broker).

    Offsets inside a range can be missing (transaction markers, aborted records with
    read_committed, compaction): a partition is done once a message at or past its stop
    arrives or its position reaches the stop.
    """
    todo = {p: (a, b) for p, (a, b) in ranges.items() if b > a}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, a) for p, (a, _) in todo.items()])
    last = time.monotonic()
    try:
        while todo:
            if should_stop is not None and should_stop():
                return
            msg = consumer.poll(0.5)
            if msg is None:
                # Markers at the end of a range never arrive as messages: ask the position.
                for tp in consumer.position([TopicPartition(topic, p) for p in list(todo)]):
                    if tp.offset >= 0 and tp.offset >= todo[tp.partition][1]:
                        del todo[tp.partition]
                if todo and time.monotonic() - last > idle_timeout:
                    missing = {p: f"{a}..{b}" for p, (a, b) in todo.items()}
                    raise ConfigError(
                        f"no message from {topic} for {idle_timeout:g} s while ranges {missing} "
                        "are unfinished (deleted or compacted records, or the broker is gone)"
                    )
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise ConfigError(f"reading {topic}: {msg.error()}")
            last = time.monotonic()
            p, offset = msg.partition(), msg.offset()
            if p not in todo:
                continue
            stop = todo[p][1]
            if offset >= stop:
                del todo[p]
                consumer.pause([TopicPartition(topic, p)])
                continue
            yield msg
            if offset + 1 >= stop:
                del todo[p]
                consumer.pause([TopicPartition(topic, p)])
    finally:
        try:
            consumer.unassign()
        except Exception as exc:  # closing after a broker loss: nothing left to release
            log.debug("unassign failed: %s", exc)


# -- progress and summary -------------------------------------------------------------------
class Progress:
    """``replay: 12/40 events (30%), 2.5/s, ETA 11 s`` on ``stream``.

    On a terminal the line is redrawn in place; elsewhere (CI logs, pipes) a line is printed at
    most every ``every_s`` seconds, plus the final one.
    """

    def __init__(
        self,
        total: int,
        *,
        unit: str = "messages",
        stream: TextIO | None = None,
        every_s: float = 2.0,
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.done = 0
        self.t0 = time.monotonic()
        self._last = -1e9
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = self.total - self.done
        eta = f"{left / rate:.0f} s" if rate > 0 and left > 0 else ("0 s" if left <= 0 else "?")
        return f"replay: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.2f}/s, ETA {eta}"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self._tty:
            self.stream.write("\r" + self.line())
            self.stream.flush()
        elif now - self._last >= self.every_s:
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\r" + self.line() + "\n")
        else:
            print(self.line(), file=self.stream)
        self.stream.flush()


@dataclass
class PartitionStats:
    first: int
    stop: int
    read: int = 0
    alerts: int = 0
    failed: int = 0


@dataclass
class ReplayStats:
    """What a replay did; ``partitions`` maps partition -> range and counts."""

    mode: str
    source: str
    output: str
    group_id: str
    partitions: dict[int, PartitionStats] = field(default_factory=dict)
    read: int = 0
    done: int = 0
    no_work: int = 0
    failed: int = 0
    alerts: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.stop - p.first for p in self.partitions.values())


def summary_table(stats: ReplayStats) -> str:
    """The final table: one row per partition, then totals, rate and the consumer group."""
    rows = [("partition", "start", "end", "read", "alerts", "failed")]
    for p in sorted(stats.partitions):
        s = stats.partitions[p]
        rows.append((str(p), str(s.first), str(s.stop), str(s.read), str(s.alerts), str(s.failed)))
    rows.append(("total", "", "", str(stats.read), str(stats.alerts), str(stats.failed)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    rate = stats.read / stats.seconds if stats.seconds > 0 else 0.0
    head = f"replay ({stats.mode}) {stats.source} -> {stats.output}, group {stats.group_id}"
    unit = "events" if stats.mode == "events" else "alerts"
    tail = f"{stats.read} {unit} in {stats.seconds:.1f} s ({rate:.2f}/s)"
    if stats.mode == "events":
        tail += f": done {stats.done}, no work {stats.no_work}, failed {stats.failed}"
    else:
        tail += f": re-published {stats.done}, failed {stats.failed}"
    return "\n".join([head, *lines, tail])


# -- publishing -----------------------------------------------------------------------------
class _Publisher:
    """Produce and wait: every record of a batch acknowledged, or ProduceError."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    def send(self, records: list[tuple[str, bytes | None, bytes, list[tuple[str, Any]]]]) -> None:
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                errors.append(f"{msg.topic()}: {err}")

        for topic, key, value, headers in records:
            while True:
                try:
                    self.producer.produce(
                        topic, key=key, value=value, headers=headers, on_delivery=on_delivery
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self.producer.poll(0.5)
        left = self.producer.flush(_FLUSH_S)
        if left or errors:
            reason = "; ".join(errors[:3]) or f"{left} not acknowledged within {_FLUSH_S:g} s"
            raise ProduceError(f"replay could not publish {len(records)} records: {reason}")


def _commit(consumer: Any, msg: Any) -> None:
    try:
        consumer.commit(
            offsets=[TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
            asynchronous=False,
        )
    except Exception as exc:  # progress bookkeeping only: the output is already acknowledged
        log.warning("%s: could not commit replay progress: %s", _where(msg), exc)


def _where(msg: Any) -> str:
    return where(msg.topic(), msg.partition(), msg.offset())


def _with_source(headers: Any, msg: Any, drop: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    kept = [(k, v) for k, v in (headers or []) if k not in drop and k != REPLAY_SOURCE_HEADER]
    return [*kept, (REPLAY_SOURCE_HEADER, _where(msg).encode())]


def _stats_for(mode: str, source: str, output: str, group: str, ranges: dict) -> ReplayStats:
    stats = ReplayStats(mode=mode, source=source, output=output, group_id=group)
    stats.partitions = {p: PartitionStats(a, b) for p, (a, b) in ranges.items()}
    return stats


def new_group_id() -> str:
    return f"diffstream-replay-{uuid.uuid4().hex[:12]}"


# -- the two modes --------------------------------------------------------------------------
def replay_alerts(
    consumer: Any,
    producer: Any,
    *,
    source_topic: str,
    ranges: dict[int, tuple[int, int]],
    output_topic: str,
    source_codec: Any,
    target_codec: Any,
    group_id: str,
    progress: Progress | None = None,
    idle_timeout: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
    metrics: Any = None,
) -> ReplayStats:
    """Re-publish the alerts of ``ranges``: each is decoded with ``source_codec`` (a wrong
    schema is counted as failed and reported, never passed on) and encoded with
    ``target_codec``, keyed and headed as it was.  ``metrics`` (a worker Metrics hook) counts
    alerts consumed and published."""
    from diffstream.stream.transport.headers import restamped
    from diffstream.stream.transport.wire import FINGERPRINT_HEADER

    stats = _stats_for("alerts", source_topic, output_topic, group_id, ranges)
    pub = _Publisher(producer)
    t0 = time.monotonic()
    for msg in read_range(
        consumer, source_topic, ranges, idle_timeout=idle_timeout, should_stop=should_stop
    ):
        t_read = time.monotonic()
        part = stats.partitions[msg.partition()]
        part.read += 1
        stats.read += 1
        if metrics is not None:
            metrics.on_consumed()
            metrics.on_lag(msg.partition(), part.stop - msg.offset() - 1)
        try:
            alert = source_codec.deserialize(msg.value(), msg)
            value = target_codec.serialize(alert, None)
        except (DiffstreamError, ValueError) as exc:
            text = exc.message if isinstance(exc, DiffstreamError) else str(exc)
            log.warning("%s: not re-published: %s", _where(msg), text)
            stats.failures.append(f"{_where(msg)}: {text}")
            stats.failed += 1
            part.failed += 1
        else:
            headers = _with_source(msg.headers(), msg, drop=(FINGERPRINT_HEADER,))
            headers = restamped([*target_codec.headers, *headers])
            pub.send([(output_topic, msg.key(), value, headers)])
            stats.done += 1
            stats.alerts += 1
            part.alerts += 1
            if metrics is not None:
                metrics.on_alerts_published(1, time.monotonic() - t_read)
        _commit(consumer, msg)
        if progress is not None:
            progress.update()
    stats.seconds = time.monotonic() - t0
    if progress is not None:
        progress.finish()
    return stats


def replay_events(
    consumer: Any,
    producer: Any,
    *,
    source_topic: str,
    ranges: dict[int, tuple[int, int]],
    output_topic: str,
    worker: Any,
    alert_codec: Any,
    group_id: str,
    event_codec: Any = None,
    metadata_topic: str | None = None,
    dlq_topic: str | None = None,
    progress: Progress | None = None,
    idle_timeout: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
) -> ReplayStats:
    """Re-process the events of ``ranges`` with ``worker`` (a
    :class:`stream.transport.service.Worker`)
    and publish their alerts to ``output_topic`` with ``alert_codec``.

    ``event_codec`` (registry mode) decodes Confluent-framed events; they are handed to the
    worker in its own single-object encoding.  Summaries go to ``metadata_topic`` and dead
    letters to ``dlq_topic`` when those are given (else only counted and logged).
    """
    from diffstream.stream.transport.events import encode_event
    from diffstream.stream.transport.headers import alert_headers, restamped
    from diffstream.stream.transport.outcomes import SourceMessage
    from diffstream.stream.transport.wire import FINGERPRINT_HEADER

    stats = _stats_for("events", source_topic, output_topic, group_id, ranges)
    pub = _Publisher(producer)
    t0 = time.monotonic()
    for msg in read_range(
        consumer, source_topic, ranges, idle_timeout=idle_timeout, should_stop=should_stop
    ):
        t_read = time.monotonic()
        part = stats.partitions[msg.partition()]
        part.read += 1
        stats.read += 1
        worker.metrics.on_lag(msg.partition(), part.stop - msg.offset() - 1)
        value = msg.value()
        if event_codec is not None and event_codec.mode == "registry":
            try:
                value = encode_event(event_codec.deserialize(value, msg))
            except DiffstreamError as exc:
                # The worker dead-letters what it cannot decode; hand it the original bytes.
                log.debug("%s: registry decode failed: %s", _where(msg), exc.message)
        _, ts = msg.timestamp()
        source = SourceMessage(
            value=value,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            headers=tuple(msg.headers() or ()),
            timestamp_ms=ts if ts > 0 else None,
        )
        outcome = worker.process(source)
        records: list[tuple[str, bytes | None, bytes, list[tuple[str, Any]]]] = []
        for alert in outcome.alerts:
            headers = [
                (k, v) for k, v in alert_headers(alert, outcome.event) if k != FINGERPRINT_HEADER
            ]
            headers = restamped([*alert_codec.headers, *_with_source(headers, msg)])
            key = str(alert["diaSourceId"]).encode("ascii")
            records.append((output_topic, key, alert_codec.serialize(alert, None), headers))
        if metadata_topic:
            s = outcome.summary
            records.append((metadata_topic, s.key, s.value, _with_source(s.headers, msg)))
        if dlq_topic and outcome.dead_letter is not None:
            d = outcome.dead_letter
            records.append((dlq_topic, d.key, d.value, _with_source(d.headers, msg)))
        pub.send(records)
        if outcome.status == "done":
            stats.done += 1
            n = len(outcome.alerts)
            stats.alerts += n
            part.alerts += n
            # Event-to-alert latency of a replay: from reading the event to its alerts
            # acknowledged (its producedAt is history).
            worker.metrics.on_alerts_published(n, time.monotonic() - t_read)
        elif outcome.status == "no_work":
            stats.no_work += 1
            worker.metrics.on_no_work()
        else:
            stats.failed += 1
            part.failed += 1
            error = outcome.error or {}
            stats.failures.append(f"{_where(msg)}: {error.get('message', 'failed')}")
            if dlq_topic and outcome.dead_letter is not None:
                worker.metrics.on_dead_letter(str(error.get("kind", "unknown")))
        _commit(consumer, msg)
        if progress is not None:
            progress.update()
    stats.seconds = time.monotonic() - t0
    if progress is not None:
        progress.finish()
    return stats
