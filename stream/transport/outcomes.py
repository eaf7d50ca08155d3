"""What the stream worker and a transport exchange, and the hooks injected into the worker.

:class:`SourceMessage` (one consumed input), :class:`OutRecord` (one record to publish) and
:class:`Outcome` (what became of one event), the :class:`Metrics` hook with its no-op default,
and the error policy (:class:`ErrorAction`, :data:`ErrorPolicy`, :class:`StopProcessing`,
:func:`dead_letter_policy`).  They live apart from :mod:`stream.transport.service` because the
transports
(``stream.transport.kafka``, ``stream.transport.directory``) and metrics backends need only these
types, not the worker and the pipeline behind it.  :mod:`stream.transport.service` re-exports
every name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from diffstream.stream.ops.errors import DiffstreamError

__all__ = [
    "SourceMessage",
    "OutRecord",
    "Outcome",
    "Metrics",
    "NullMetrics",
    "ErrorAction",
    "ErrorPolicy",
    "StopProcessing",
    "dead_letter_policy",
]

# The worker's logger, not this module's name: operators filter on "diffstream.service" for
# the dead-letter warnings (docs/tools.md, stream/ops/logs.py), and the split must not move them.
log = logging.getLogger("diffstream.service")


# -- messages and outcomes ------------------------------------------------------------------
@dataclass(frozen=True)
class SourceMessage:
    """One consumed input, whatever the transport (directory: topic = file, offset = index)."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class OutRecord:
    """One record to publish: Kafka key, value and headers."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Outcome:
    """What became of one event: ``status`` is ``done``, ``no_work``, ``failed`` or ``retry``
    (a dependency such as the APDB is down: nothing is delivered, the event is processed
    again; stream/transport/service.py, ``run_loop``).

    ``alert_records`` (encoded, in diaSource order) and ``alerts`` (the same as dicts) are empty
    unless done; ``dead_letter`` is set for a failure the policy dead-lettered; ``summary`` is
    always set (one summary per consumed event).
    """

    status: str
    source: SourceMessage
    summary: OutRecord
    summary_record: dict[str, Any]
    event: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alert_records: list[OutRecord] = field(default_factory=list)
    dead_letter: OutRecord | None = None
    dead_letter_record: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # (key, value) for the processed-exposures ledger (stream.transport.ledger): set for done
    # and no-work outcomes when the worker has a ledger; the transport writes it with the
    # alerts (exactly-once) or after them (at-least-once).
    ledger: tuple[str, dict[str, Any]] | None = None

    @property
    def event_produced_ms(self) -> int | None:
        return None if self.event is None else int(self.event["producedAt"])


# -- metrics hook ---------------------------------------------------------------------------
class Metrics(Protocol):
    """What the worker reports; every method must return quickly and never raise.

    - ``on_consumed()``: an input message was taken from the transport.
    - ``on_processed(timings)``: an event went through the pipeline (done or no work);
      ``timings`` maps step names (``imageDifference``, ``imageDifference.zogy`` ...) to wall
      seconds.
    - ``on_dead_letter(kind)``: a dead-letter record was delivered; ``kind`` is the error kind
      (``bad_event``, ``bad_exposure``, ``kernel_failure``, ``produce``).
    - ``on_no_work()``: a no-work summary was delivered.
    - ``on_alerts_published(n, latency_s)``: the ``n`` alerts of one event (n may be 0) were
      acknowledged and its offset committed; ``latency_s`` is from the event's ``producedAt``
      to that moment.
    - ``on_lag(partition, lag)``: messages behind the end of an input partition.
    - ``on_warmup(seconds, ok)``: the start-up warm-up took ``seconds`` (``ok``: it finished);
      ~35 s instead of ~2 s says the Numba cache was empty (see stream/cli/warmup.py).
    - ``on_state(state)``: the worker's client state changed: ``assigned`` (holds partitions),
      ``waiting`` (holds none) or ``fatal`` (a client error no retry cures; it stops).
    - ``on_group_lag(lag)``: events of the whole input topic not yet processed by the group
      (None: the broker did not answer).
    - ``on_retry(kind)``: an event is to be processed again because a dependency is down
      (``kind``: the error kind, e.g. ``apdb``); it was neither dead-lettered nor committed.
    """

    def on_consumed(self) -> None: ...
    def on_processed(self, timings: dict[str, float]) -> None: ...
    def on_dead_letter(self, kind: str) -> None: ...
    def on_no_work(self) -> None: ...
    def on_alerts_published(self, n: int, latency_s: float) -> None: ...
    def on_lag(self, partition: int, lag: int) -> None: ...
    def on_warmup(self, seconds: float, ok: bool) -> None: ...
    def on_state(self, state: str) -> None: ...
    def on_group_lag(self, lag: int | None) -> None: ...
    def on_retry(self, kind: str) -> None: ...


class NullMetrics:
    """The default :class:`Metrics`: does nothing."""

    def on_consumed(self) -> None:
        pass

    def on_processed(self, timings: dict[str, float]) -> None:
        pass

    def on_dead_letter(self, kind: str) -> None:
        pass

    def on_no_work(self) -> None:
        pass

    def on_alerts_published(self, n: int, latency_s: float) -> None:
        pass

    def on_lag(self, partition: int, lag: int) -> None:
        pass

    def on_warmup(self, seconds: float, ok: bool) -> None:
        pass

    def on_state(self, state: str) -> None:
        pass

    def on_group_lag(self, lag: int | None) -> None:
        pass

    def on_retry(self, kind: str) -> None:
        pass


# -- error policy ---------------------------------------------------------------------------
class ErrorAction(Enum):
    DEAD_LETTER = "dead_letter"  # publish a dead letter, commit, go on
    SKIP = "skip"  # only the failed summary, commit, go on
    STOP = "stop"  # raise StopProcessing: nothing published or committed for this message


ErrorPolicy = Callable[[SourceMessage, DiffstreamError], ErrorAction]


class StopProcessing(Exception):
    """Raised by :meth:`stream.transport.service.Worker.process` when the error policy says STOP."""

    def __init__(self, message: SourceMessage, error: DiffstreamError) -> None:
        super().__init__(f"{message.where}: stopped on {type(error).__name__}: {error.message}")
        self.source = message
        self.error = error


def dead_letter_policy(message: SourceMessage, error: DiffstreamError) -> ErrorAction:
    """Default policy: log ``topic[partition]@offset`` with the reason, then dead-letter."""
    log.warning(
        "%s: dead-lettered (%s/%s %s): %s",
        message.where,
        error.stage,
        error.kind,
        type(error).__name__,
        error.message,
    )
    return ErrorAction.DEAD_LETTER
