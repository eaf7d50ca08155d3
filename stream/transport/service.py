"""The stream worker, independent of any transport.

One event in, one :class:`Outcome` out::

    bytes -> decode_event -> resolve locations under the data roots -> subtract_files
          -> encoded alerts (keyed by diaSourceId, with headers) + a summary record
          -> or a dead-letter record (bad input) / a no-work summary (NoWorkFound)

A *transport* (``stream.transport.kafka``, ``stream.transport.directory``) supplies
:class:`SourceMessage` objects and delivers outcomes: it publishes the records and, only once
all of them are acknowledged, commits the source position.  :func:`run_loop` drives the two,
so Kafka and directory modes differ in the transport alone.

Failures never escape :meth:`Worker.process`: every error becomes an outcome through the
injected *error policy* (default :func:`dead_letter_policy`: log ``topic[partition]@offset``
and dead-letter).  Only the policy can stop the worker (``ErrorAction.STOP``).

The types a transport exchanges with the worker, the metrics hook and the error policy are in
:mod:`stream.transport.outcomes`, the record headers in :mod:`stream.transport.headers`; this
module re-exports them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from diffstream import __version__
from diffstream.stream.alerts.packets import serialize_alert
from diffstream.stream.io.paths import resolve_data_path
from diffstream.stream.ops.cpus import HostShare
from diffstream.stream.ops.errors import (
    DiffstreamError,
    KernelFailure,
    NoWorkFound,
    PathNotAllowed,
    ProduceError,
)
from diffstream.stream.ops.settings import Settings, config_hash
from diffstream.stream.provenance.store import full_record
from diffstream.stream.provenance.taskmeta import TaskMetadata
from diffstream.stream.transport import outcomes
from diffstream.stream.transport.events import decode_event, now_ms
from diffstream.stream.transport.headers import (
    ALERT_FINGERPRINT,
    HEADER_PREFIX,
    alert_headers,
    ascii_bytes,
)
from diffstream.stream.transport.ledger import (
    AlreadyProcessed,
    Ledger,
    ledger_key,
    ledger_value,
)
from diffstream.stream.transport.outcomes import (
    ErrorAction,
    ErrorPolicy,
    Metrics,
    NullMetrics,
    Outcome,
    OutRecord,
    SourceMessage,
    StopProcessing,
    dead_letter_policy,
)
from diffstream.stream.transport.records import (
    dead_letter_record,
    encode_dead_letter,
    encode_summary,
    reason_record,
    worker_id,
)
from diffstream.stream.transport.wire import RUBIN_SCHEMA_ID

# The message/outcome types, the metrics hook and the error policy live in
# stream.transport.outcomes and
# the record headers in stream.transport.headers (the transports need them without the worker);
# they stay
# exported here so that ``from stream.transport.service import Outcome`` and the like keep working.
__all__ = [
    "ALERT_FINGERPRINT",
    "HEADER_PREFIX",
    "alert_headers",
    "Worker",
    "Transport",
    "RunStats",
    "run_loop",
]
__all__ += outcomes.__all__

log = logging.getLogger("diffstream.service")

_LOCATIONS = (
    "scienceLocation",
    "templateLocation",
    "sciencePsfLocation",
    "templatePsfLocation",
    "backgroundLocation",
)


# -- helpers --------------------------------------------------------------------------------
def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# -- the worker -----------------------------------------------------------------------------
class Worker:
    """Turns one :class:`SourceMessage` into one :class:`Outcome`; holds no transport.

    ``subtract`` is :func:`stream.pipeline.subtract.subtract_files` unless a test injects another
    with
    the same signature.  ``settings.data_roots`` must name at least one root: an event may only
    make the worker open files under them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        error_policy: ErrorPolicy | None = None,
        subtract: Callable[..., Any] | None = None,
        worker: str | None = None,
        event_decoder: Callable[[Any, Any], dict[str, Any]] | None = None,
        alert_serializer: Callable[[Any, Any], bytes] | None = None,
        host_share: HostShare | None = None,
    ) -> None:
        if not settings.data_roots:
            from diffstream.stream.ops.errors import ConfigError

            raise ConfigError(
                "the stream worker needs at least one data root (--data-root or "
                "DIFFSTREAM_DATA_ROOTS): events may only name files under them"
            )
        self.settings = settings
        self.metrics: Metrics = metrics or NullMetrics()
        self.error_policy: ErrorPolicy = error_policy or dead_letter_policy
        if subtract is None:
            from diffstream.stream.pipeline.subtract import subtract_files

            subtract = subtract_files
        self._subtract = subtract
        # (bytes, ctx) -> validated event, raising BadEvent; and (alert, ctx) -> bytes.  The
        # defaults are the single-object events and schemaless alerts; stream.transport.wire's
        # registry
        # codecs (the Confluent wire format) plug in here.
        self._decode: Callable[[Any, Any], dict[str, Any]] = event_decoder or decode_event
        self._serialize: Callable[[Any, Any], bytes] = alert_serializer or serialize_alert
        self.worker_id = worker or worker_id()
        # The processed-exposures ledger; the Kafka transport supplies it (run), None elsewhere
        # (directory transport, replay: they process whatever they are given).
        self.ledger: Ledger | None = None
        self._settings_by_bits: dict[int, Settings] = {settings.exposure_bits: settings}
        # The workers sharing this host's CPUs (stream.ops.cpus.HostShare; the run command
        # makes it): without a cpus setting each event's threads are this worker's share.
        self.host_share = host_share
        self._share: tuple[int, int] | None = None

    # -- steps ------------------------------------------------------------------------------
    def _ledger_check(self, event: dict[str, Any], settings: Settings) -> str | None:
        """The event's ledger key (None without a ledger); AlreadyProcessed if it is there."""
        if self.ledger is None:
            return None
        key = ledger_key(self.settings.group_id, event, config_hash(settings.science_config()))
        first = None if self.settings.reprocess else self.ledger.seen(key)
        if first is not None:
            where = f"{first.get('topic')}[{first.get('partition')}]@{first.get('offset')}"
            raise AlreadyProcessed(
                f"already processed ({first.get('status')}, {first.get('nAlerts')} alerts) as "
                f"{where} by {first.get('workerId')}: same event fingerprint and config hash; "
                "replay or run --reprocess to process it again",
                reason="already_processed",
                ledgerKey=key,
                first=first,
            )
        return key

    def _resolve(self, event: dict[str, Any]) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        for name in _LOCATIONS:
            location = event.get(name)
            if location is None:
                continue
            try:
                paths[name] = resolve_data_path(location, self.settings.data_roots)
            except PathNotAllowed as exc:
                # Checking the event's locations is part of accepting the event.
                exc.stage = "consume"
                exc.fields.setdefault("field", name)
                raise
        return paths

    def _settings_for(self, event: dict[str, Any]) -> Settings:
        bits = int(event["exposureBits"])
        if bits not in self._settings_by_bits:
            # The id layout is the event's to choose (it knows its survey's exposure ids);
            # exposure_bits is part of the config hash, so alerts record the change.
            self._settings_by_bits[bits] = self.settings.model_copy(update={"exposure_bits": bits})
        return self._settings_by_bits[bits]

    def _shared(self, settings: Settings, meta: TaskMetadata) -> Settings:
        """``settings`` with ``cpus`` set to this worker's share of the host's CPUs, when it
        has a HostShare and no ``cpus`` setting (an operator's value always wins)."""
        if self.host_share is None or settings.cpus is not None:
            return settings
        peers, cpus = self.host_share.share()
        if (peers, cpus) != self._share:
            log.info(
                "%d run worker(s) share these %d CPUs: %d thread(s) per event",
                peers, self.host_share.total, cpus,
            )  # fmt: skip
            self._share = (peers, cpus)
        meta.set("cpuShareWorkers", peers)
        return settings.model_copy(update={"cpus": cpus})

    def _encode_alerts(
        self, alerts: list[dict[str, Any]], event: dict[str, Any]
    ) -> list[OutRecord]:
        out = []
        for alert in alerts:
            try:
                value = self._serialize(alert, None)
            except ValueError as exc:
                raise ProduceError(
                    f"alert {alert.get('diaSourceId')} cannot be encoded: {exc}",
                    diaSourceId=alert.get("diaSourceId"),
                ) from exc
            key = ascii_bytes(alert["diaSourceId"])
            fp = getattr(self._serialize, "fingerprint", None)  # of the schema it writes
            headers = alert_headers(alert, event, fingerprint=fp)
            out.append(OutRecord(key=key, value=value, headers=headers))
        return out

    # -- records ----------------------------------------------------------------------------
    def _summary(
        self,
        status: str,
        msg: SourceMessage,
        event: dict[str, Any] | None,
        meta: TaskMetadata,
        *,
        n_alerts: int = 0,
        error: dict[str, Any] | None = None,
        notes: list[str] | None = None,
    ) -> dict[str, Any]:
        root = meta.steps().get(meta.name, {})
        ran = bool(meta.timings())
        return {
            "status": status,
            "requestId": None if event is None else event["requestId"],
            "visit": None if event is None else int(event["visit"]),
            "detector": None if event is None else int(event["detector"]),
            "exposureId": None if event is None else int(event["exposureId"]),
            "topic": msg.topic,
            "partition": int(msg.partition),
            "offset": int(msg.offset),
            "nAlerts": int(n_alerts),
            "nDetections": _opt_int(root.get("nDetections")),
            "nDiaSources": _opt_int(root.get("nDiaSources")),
            "nPositive": _opt_int(root.get("nPositive")),
            "nNegative": _opt_int(root.get("nNegative")),
            "templateCoverage": _opt_float(root.get("templateCoverage")),
            "timings": {k: float(v) for k, v in meta.timings().items()},
            "reason": None if error is None else reason_record(error),
            "configHash": root.get("configHash"),
            "versionsHash": root.get("versionsHash"),
            "alertSchemaFingerprint": ALERT_FINGERPRINT,
            # The id mapping when a registry could not hold Rubin's id (wire.alert_codec).
            "alertSchemaId": getattr(self._serialize, "schema_id", None),
            "rubinSchemaId": RUBIN_SCHEMA_ID,
            "pipelineVersion": __version__,
            "workerId": self.worker_id,
            "eventProducedAt": None if event is None else int(event["producedAt"]),
            "processedAt": now_ms(),
            "notes": list(notes or []),
            # The full record (docs/metadata.md): config, versions, per-step wall/CPU/RSS,
            # counts, diagnostics; the alerts themselves carry only the compact summary.
            "taskMetadataJson": (
                json.dumps(
                    full_record(meta, status=status, settings=self.settings, error=error),
                    sort_keys=True,
                    allow_nan=False,
                )
                if ran
                else None
            ),
        }

    def _summary_out(self, summary: dict[str, Any]) -> OutRecord:
        key = None if summary["exposureId"] is None else ascii_bytes(summary["exposureId"])
        headers = (
            (HEADER_PREFIX + "status", ascii_bytes(summary["status"])),
            (HEADER_PREFIX + "pipeline.version", ascii_bytes(__version__)),
        )
        return OutRecord(key=key, value=encode_summary(summary), headers=headers)

    def _failed(
        self,
        msg: SourceMessage,
        event: dict[str, Any] | None,
        exc: DiffstreamError,
        meta: TaskMetadata,
    ) -> Outcome:
        """A ``failed`` outcome under the error policy; or, for a retriable error (a
        dependency that is down, such as the APDB: no fault of the input), a ``retry`` one
        that neither the policy nor the dead-letter topic sees: :func:`run_loop` processes
        the event again after a back-off, without committing it."""
        action = None if exc.retriable else self.error_policy(msg, exc)
        if action is ErrorAction.STOP:
            raise StopProcessing(msg, exc)
        error = exc.to_record()
        summary = self._summary("failed", msg, event, meta, error=error)
        outcome = Outcome(
            status="retry" if exc.retriable else "failed",
            source=msg,
            summary=self._summary_out(summary),
            summary_record=summary,
            event=event,
            error=error,
        )
        if action is ErrorAction.DEAD_LETTER:
            record = dead_letter_record(
                value=msg.value,
                key=msg.key,
                headers=msg.headers,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                error=error,
                request_id=None if event is None else event["requestId"],
                failed_at_ms=now_ms(),
                worker=self.worker_id,
            )
            headers = (
                (HEADER_PREFIX + "error.kind", ascii_bytes(error["kind"])),
                (HEADER_PREFIX + "error.stage", ascii_bytes(error["stage"])),
                (HEADER_PREFIX + "pipeline.version", ascii_bytes(__version__)),
            )
            outcome.dead_letter = OutRecord(
                key=msg.key, value=encode_dead_letter(record), headers=headers
            )
            outcome.dead_letter_record = record
        return outcome

    # -- the one entry point ----------------------------------------------------------------
    def process(self, msg: SourceMessage, *, again: bool = False) -> Outcome:
        """Decode, check, subtract, encode.  Never raises except :class:`StopProcessing`.

        ``again``: the same message once more after a ``retry`` outcome (run_loop); it was
        counted as consumed the first time."""
        if not again:
            self.metrics.on_consumed()
        meta = TaskMetadata()
        event: dict[str, Any] | None = None
        notes: list[str] = []
        key: str | None = None
        try:
            event = self._decode(msg.value, msg)
            paths = self._resolve(event)
            settings = self._shared(self._settings_for(event), meta)
            key = self._ledger_check(event, settings)
            with meta.timer():
                result = self._subtract(
                    str(paths["scienceLocation"]),
                    str(paths["templateLocation"]),
                    settings=settings,
                    visit=event["visit"],
                    detector=event["detector"],
                    exposure_id=event["exposureId"],
                    metadata=meta,
                    science_psf=_opt_str(paths.get("sciencePsfLocation")),
                    template_psf=_opt_str(paths.get("templatePsfLocation")),
                    science_background=_opt_str(paths.get("backgroundLocation")),
                )
            records = self._encode_alerts(result.alerts, event)
            notes = self._notes(event, result)
        except NoWorkFound as exc:
            error = exc.to_record()
            log.info("%s: no work: %s", msg.where, exc.message)
            self.metrics.on_processed(meta.timings())
            summary = self._summary("no_work", msg, event, meta, error=error)
            return Outcome(
                status="no_work",
                source=msg,
                summary=self._summary_out(summary),
                summary_record=summary,
                event=event,
                error=error,
                ledger=None if key is None else (key, ledger_value(summary)),
            )
        except DiffstreamError as exc:
            return self._failed(msg, event, exc, meta)
        except Exception as exc:  # a bug or an input nobody foresaw: still never lose the message
            log.exception("%s: unexpected error", msg.where)
            wrapped = KernelFailure(f"unexpected {type(exc).__name__}: {exc}")
            return self._failed(msg, event, wrapped, meta)
        self.metrics.on_processed(meta.timings())
        summary = self._summary("done", msg, event, meta, n_alerts=len(records), notes=notes)
        return Outcome(
            status="done",
            source=msg,
            summary=self._summary_out(summary),
            summary_record=summary,
            event=event,
            alerts=list(result.alerts),
            alert_records=records,
            ledger=None if key is None else (key, ledger_value(summary)),
        )

    @staticmethod
    def _notes(event: dict[str, Any], result: Any) -> list[str]:
        notes = []
        science = getattr(result, "science", None)
        band = getattr(science, "band", None)
        if event.get("band") is not None and band is not None and event["band"] != band:
            notes.append(f"event band {event['band']!r} differs from the header's {band!r}")
        mid = getattr(science, "midpoint_mjd_tai", None)
        given = event.get("midpointMjdTai")
        if given is not None and mid is not None and abs(given - mid) * 86400.0 > 1.0:
            notes.append(
                f"event midpointMjdTai {given} differs from the header's {mid} by "
                f"{abs(given - mid) * 86400.0:.1f} s"
            )
        return notes


# -- the loop -------------------------------------------------------------------------------
class Transport(Protocol):
    """Where messages come from and outcomes go.

    ``poll`` returns the next message or None after at most ``timeout`` seconds.  ``deliver``
    publishes the outcome's records and, once every one is acknowledged, commits the source
    position (offset + 1); True when committed, False when not (the message will be seen
    again, here or by the partition's next owner).  ``close`` releases the clients.
    """

    def poll(self, timeout: float) -> SourceMessage | None: ...
    def deliver(self, outcome: Outcome) -> bool: ...
    def close(self) -> None: ...


def _event_line(outcome: Outcome, committed: bool, seconds: float) -> str:
    """The one INFO line per event (issue 16): where, which exposure, what came of it."""
    s = outcome.summary_record
    exposure = "" if s.get("visit") is None else f" visit {s['visit']} detector {s['detector']}:"
    what = outcome.status
    if outcome.status == "done":
        n_src = s.get("nDiaSources")
        what += (
            f", {'?' if n_src is None else n_src} diaSources, {len(outcome.alert_records)} alerts"
        )
    elif outcome.error is not None:
        what += f" ({outcome.error['kind']})"
        if outcome.dead_letter is not None:
            what += ", dead-lettered"
    commit = "committed" if committed else "NOT committed (it will be processed again)"
    return f"{outcome.source.where}:{exposure} {what}, {seconds:.2f} s, {commit}"


class _Status:
    """The periodic status line of ``run``: rate, lag, partitions (issue 16)."""

    def __init__(self, transport: Any, interval: float | None) -> None:
        self.transport, self.interval = transport, interval
        self.t0 = self.last = time.monotonic()
        self.done_at_last = 0

    def maybe_log(self, stats: RunStats) -> None:
        now = time.monotonic()
        if self.interval is None or now - self.last < self.interval:
            return
        n = stats.committed - self.done_at_last
        rate = n / max(now - self.last, 1e-9)
        self.last, self.done_at_last = now, stats.committed
        extra = getattr(self.transport, "status_text", None)
        log.info(
            "status: %d events in the last %.0f s (%.3f/s), %d in total, %d alerts%s",
            n,
            self.interval,
            rate,
            stats.committed,
            stats.alerts,
            "" if extra is None else f"; {extra()}",
        )


# Seconds between attempts at an event whose dependency is down; the last value repeats
# until the dependency is back (a database restart takes seconds to minutes; retrying faster
# would only fill the log).
RETRY_BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def _wait_in_hand(transport: Any, seconds: float, stop: threading.Event) -> bool:
    """Wait ``seconds`` with an event in hand; False to give it up (stop requested, or the
    transport says its partition is no longer ours)."""
    wait = getattr(transport, "wait_in_hand", None)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop.is_set():
            return False
        step = min(left, 0.5)
        if wait is None:
            stop.wait(step)
        elif not wait(step):
            return False
    return not stop.is_set()


@dataclass
class RunStats:
    consumed: int = 0
    committed: int = 0
    done: int = 0
    no_work: int = 0
    failed: int = 0
    alerts: int = 0
    not_committed: int = 0
    retries: int = 0
    stopped_by: str = ""

    def line(self) -> str:
        return (
            f"consumed {self.consumed}, committed {self.committed} (done {self.done}, "
            f"no work {self.no_work}, failed {self.failed}), alerts {self.alerts}, "
            f"not committed {self.not_committed}, retries {self.retries}; "
            f"stopped by {self.stopped_by or '-'}"
        )


def run_loop(
    worker: Worker,
    transport: Transport,
    *,
    max_messages: int | None = None,
    exit_when_idle: float | None = None,
    stop: threading.Event | None = None,
    poll_timeout: float = 0.5,
    status_interval: float | None = None,
    retry_backoff: tuple[float, ...] = RETRY_BACKOFF_S,
) -> RunStats:
    """Poll, process, deliver until ``stop`` is set, ``max_messages`` events are committed,
    or the transport was idle for ``exit_when_idle`` seconds.  The event in hand is always
    finished (delivered and committed) before ``stop`` is looked at.

    Idle: nothing arrived and, if the transport has an ``idle()`` method, it says so; the Kafka
    transport's is True only when the group has no unprocessed event left (a worker waiting
    for its partitions after a restart is not idle, issue 16).

    A dependency that is down (an unreachable APDB: a ``retry`` outcome) is not bad input:
    the event is processed again after ``retry_backoff`` seconds (the last value repeats),
    each wait a WARNING and a ``Metrics.on_retry``, until it goes through; nothing is
    delivered or committed meanwhile.  The transport's ``wait_in_hand(seconds)``, if it has
    one, does the waiting (Kafka: partitions paused and the consumer polled, so the group
    keeps this member); a stop request, or the partition lost meanwhile, gives the event up
    uncommitted for its partition's next owner."""
    stop = stop or threading.Event()
    stats = RunStats()
    metrics = worker.metrics
    last = time.monotonic()
    transport_idle = getattr(transport, "idle", None)
    status = _Status(transport, status_interval)
    while True:
        if stop.is_set():
            stats.stopped_by = "signal"
            break
        if max_messages is not None and stats.committed >= max_messages:
            stats.stopped_by = "max_messages"
            break
        status.maybe_log(stats)
        msg = transport.poll(poll_timeout)
        if msg is None:
            now = time.monotonic()
            if transport_idle is not None and not transport_idle():
                last = now
            elif exit_when_idle is not None and now - last >= exit_when_idle:
                stats.stopped_by = "idle"
                break
            continue
        stats.consumed += 1
        t0 = time.monotonic()
        outcome = worker.process(msg)
        attempt = 0
        while outcome.status == "retry" and outcome.error is not None:
            delay = retry_backoff[min(attempt, len(retry_backoff) - 1)]
            attempt += 1
            stats.retries += 1
            on_retry = getattr(metrics, "on_retry", None)  # hooks written before it existed
            if on_retry is not None:
                on_retry(str(outcome.error["kind"]))
            log.warning(
                "%s: %s is down (not bad input: not dead-lettered, not committed), attempt %d, "
                "processing it again in %.1f s: %s",
                msg.where,
                outcome.error["kind"],
                attempt,
                delay,
                outcome.error["message"],
            )
            if not _wait_in_hand(transport, delay, stop):
                break
            outcome = worker.process(msg, again=True)
        if outcome.status == "retry":
            # Stopped, or the partition went to another worker while we waited: the event
            # stays uncommitted, and whoever owns its partition next processes it.
            give_up = getattr(transport, "give_up_in_hand", None)
            if give_up is not None:
                give_up()
            log.warning("%s: given up after %d attempts, NOT committed", msg.where, attempt)
            stats.not_committed += 1
            last = time.monotonic()
            continue
        committed = transport.deliver(outcome)
        log.info("%s", _event_line(outcome, committed, time.monotonic() - t0))
        if not committed:
            stats.not_committed += 1
            last = time.monotonic()
            continue
        stats.committed += 1
        if outcome.status == "done":
            stats.done += 1
            stats.alerts += len(outcome.alert_records)
            produced = outcome.event_produced_ms
            latency = 0.0 if produced is None else max(0.0, (now_ms() - produced) / 1000.0)
            metrics.on_alerts_published(len(outcome.alert_records), latency)
        elif outcome.status == "no_work":
            stats.no_work += 1
            metrics.on_no_work()
        else:
            stats.failed += 1
            if outcome.dead_letter is not None and outcome.error is not None:
                metrics.on_dead_letter(str(outcome.error["kind"]))
        last = time.monotonic()
    return stats
