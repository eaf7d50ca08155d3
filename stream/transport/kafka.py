"""Kafka transport for the stream worker (confluent-kafka / librdkafka).

Delivery guarantees (issue 4):

- **At-least-once** (default): the consumer never commits or stores offsets on its own
  (``enable.auto.commit=false``, ``enable.auto.offset.store=false``).  For each event the
  alerts, the summary and any dead letter are produced with the idempotent producer, *all*
  delivery reports are awaited, and only then is exactly ``offset + 1`` of that event
  committed (synchronously).  A failed delivery seeks the partition back to the event, so it is
  processed again; a crash before the commit means the next owner reprocesses it (duplicates,
  never losses).
- **Exactly-once** (``exactly_once``): the records and the consumed offset go into one
  transaction (``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447
  fencing).  A crash leaves an open transaction that the broker aborts (at once when the
  restarted replica reuses the transactional.id, see ``instance_id``), so ``read_committed``
  readers see every alert exactly once.
- **Rebalances**: events are processed one at a time between ``poll`` calls, and librdkafka
  runs rebalance callbacks only inside ``poll``, so an event in hand is always finished
  (committed) or abandoned (commit refused: the partition's next owner redoes it; transaction
  aborted) before its partition changes hands.  The one ``poll`` with an event in hand is
  between retries of a failing commit, on paused partitions (``_serve_group``): a partition
  lost there abandons the event.  Only the processed event's own offset is ever committed,
  never one past it.
- **Broker outages**: produce retries inside librdkafka (``message.timeout.ms``); commits and
  transaction calls that fail with a retriable error are retried with back-off; the consumer
  rejoins its group by itself.
- **Fatal client states** (issue 16): a fenced static member, a fenced transactional producer,
  failed authentication or authorization.  No retry can cure them, so :meth:`poll` raises
  :class:`FatalKafkaError` and ``diffstream run`` exits 1 for the orchestrator to restart it.
  librdkafka raises a consumer's fatal error as an event with code ``_FATAL`` whose
  ``fatal()`` is False (confluent-kafka 2.16); the error callback gets the underlying error
  (``rd_kafka_fatal_error``) with ``fatal()`` True.  Both are caught; so are the
  authentication/authorization codes, which librdkafka retries for ever.
- **Idle** (``--exit-when-idle``): :meth:`idle` is True only when the whole input topic is
  committed (or, for a partition held here, consumed) to its end, read from the broker, so a
  worker waiting for an assignment after a restart never mistakes the wait for an empty queue.

Every ``-X key=value`` (``Settings.kafka``) reaches both clients unchanged, so SASL/SSL and any
tuning need no code; the properties the guarantees depend on are refused if contradicted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from diffstream.stream.ops.errors import ConfigError
from diffstream.stream.ops.logs import RepeatFilter
from diffstream.stream.ops.settings import Settings
from diffstream.stream.transport.headers import PRODUCER_TIMESTAMP, producer_timestamp_header
from diffstream.stream.transport.kafkafaults import (
    FatalKafkaError,
    fatal_hint,
    is_fatal,
    read_group_lag,
    warn_if_instance_held,
)
from diffstream.stream.transport.ledger import KafkaLedger, Ledger
from diffstream.stream.transport.outcomes import (
    Metrics,
    NullMetrics,
    Outcome,
    OutRecord,
    SourceMessage,
)
from diffstream.stream.transport.records import worker_id
from diffstream.stream.transport.topics import check_output_topics

__all__ = [
    "FatalKafkaError",
    "KafkaTransport",
    "client_configs",
    "FAULT_PAUSE_ENV",
    "PRODUCER_TIMESTAMP",
    "SESSION_TIMEOUT_MS",
    "is_fatal",
    "producer_timestamp_header",
]

log = logging.getLogger("diffstream.kafka")

# Fault injection for the integration tests (kill -9 / SIGTERM "in the middle of an event"):
# seconds to wait after an event's records are acknowledged (inside the open transaction with
# exactly_once) and before its offset is committed.  Unset in production.
FAULT_PAUSE_ENV = "DIFFSTREAM_FAULT_PAUSE_BEFORE_COMMIT_S"

# The guarantees rest on these; a -X that contradicts them is refused, not silently obeyed.
_PINNED_CONSUMER = {"enable.auto.commit": "false", "enable.auto.offset.store": "false"}
# A commit refused for these reasons will never succeed: the partition has a new owner.
_LOST_OWNERSHIP = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.STALE_MEMBER_EPOCH,
    KafkaError.FENCED_MEMBER_EPOCH,
}
# Group membership defaults (issue 16).  librdkafka's 45 s session timeout made a restarted or
# surviving worker wait ~44 s for the partitions of a killed one.  10 s (heartbeat 2 s, the
# values Kafka used before 3.0) bounds that wait; with --instance-id (static membership) a
# restart takes its partitions back at once, without a rebalance.  The cost: a broker outage
# or a network partition longer than 10 s expires the session, the group rebalances and the
# event in hand is redone by the next owner (a duplicate under at-least-once, none under
# exactly-once); a static member fenced after such an outage exits 1 and is restarted.
# Heartbeats come from librdkafka's own thread, so a long subtraction never expires the
# session (that is max.poll.interval.ms).  Both pass through -X unchanged.
SESSION_TIMEOUT_MS = 10000
HEARTBEAT_INTERVAL_MS = 2000
_LAG_REFRESH_S = 2.0  # how often an idle poll reads the group's committed offsets and ends
_BROKER_QUERY_S = 2.0  # timeout of each of those reads
_TXN_TIMEOUT_S = 30.0  # per call of send_offsets_to_transaction/commit/abort before a retry
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def _output_topics(settings: Settings) -> list[str]:
    return [settings.output_topic, settings.dlq_topic, settings.metadata_topic]


def _as_bool(value: Any) -> str:
    return str(value).strip().lower()


def client_configs(settings: Settings, *, worker: str | None = None) -> tuple[dict, dict]:
    """(consumer config, producer config) for ``settings``; raises ConfigError on a
    contradiction.  Our defaults first, then every ``settings.kafka`` entry unchanged."""
    if not settings.bootstrap_servers:
        raise ConfigError("the Kafka transport needs bootstrap servers (--bootstrap-servers)")
    extra = {str(k): str(v) for k, v in settings.kafka.items()}
    for key, wanted in _PINNED_CONSUMER.items():
        if key in extra and _as_bool(extra[key]) != wanted:
            raise ConfigError(
                f"-X {key}={extra[key]} would commit offsets before the alerts are "
                f"acknowledged; the worker requires {key}={wanted}"
            )
    if "transactional.id" in extra and not settings.exactly_once:
        raise ConfigError("-X transactional.id is only used with --exactly-once; add it or drop -X")
    name = worker or worker_id()
    common: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"diffstream-{name}",
    }
    if settings.sasl_password is not None and "sasl.password" not in extra:
        common["sasl.password"] = settings.sasl_password.get_secret_value()
    consumer: dict[str, Any] = {
        **common,
        "group.id": settings.group_id,
        "auto.offset.reset": "earliest",
        # Events written by a transactional producer: never act on aborted ones.
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
        **_PINNED_CONSUMER,
    }
    producer: dict[str, Any] = {
        **common,
        "enable.idempotence": True,  # retries after a broker outage add no duplicates
        "acks": "all",
        "linger.ms": 5,
        # Rubin's producer and topics use snappy: alerts (float32 noise, FITS padding)
        # shrink by about a third at little CPU; -X compression.type=... overrides it.
        "compression.type": "snappy",
    }
    if settings.instance_id:
        consumer["group.instance.id"] = settings.instance_id
    # The consumer's group coordinator is cached like the transactional one below (librdkafka
    # #5511): after a re-bootstrap it can stay on a decommissioned broker, and commits then
    # fail with "Waiting for coordinator" for ever.  Seen once in the broker-restart test
    # (at-least-once, 150 s of _WAIT_COORD after the broker was back); same remedy, same cost.
    consumer["metadata.recovery.strategy"] = "none"
    if settings.exactly_once:
        tid = settings.instance_id or f"{name}".replace(":", "-")
        producer["transactional.id"] = f"diffstream-{settings.group_id}-{tid}"
        # When every broker is unreachable, librdkafka (>= 2.10) by default "re-bootstraps":
        # it decommissions the known brokers, and a group coordinator cached on one of them
        # makes send_offsets_to_transaction hang for ever, past its timeout (librdkafka
        # issues #5511 and #5456, open in 2.16).  Keeping the brokers known avoids it;
        # tests/integration/test_stream_broker_restart.py[exactly-once] hangs without this.
        # The cost: a cluster whose every broker address changes needs a worker restart.
        producer["metadata.recovery.strategy"] = "none"
    consumer.update(extra)
    producer.update(extra)
    # Re-pin after the passthrough (already checked above, so this changes nothing it allowed).
    consumer.update(_PINNED_CONSUMER)
    return consumer, producer


class _QuietConfWarn(logging.Filter):
    """Drop librdkafka's note that a property of the other client kind is ignored: every -X
    goes to both clients on purpose, so the note would follow each consumer-only setting."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("CONFWARN" in text and "will be ignored by this" in text)


_rdkafka_log = logging.getLogger("diffstream.librdkafka")
_rdkafka_log.addFilter(_QuietConfWarn())
# One broker outage is ~80 librdkafka lines (one per connection attempt and client thread):
# the first of each kind is logged, the repeats are counted (stream/ops/logs.py).
# Only the client's own reports go through it (the error callback logs to its own child
# logger): assignment lines and commit retries are never counted away.
REPEATS = RepeatFilter(window_s=30.0)
_rdkafka_log.addFilter(REPEATS)
_client_log = logging.getLogger("diffstream.kafka.client")
_client_log.addFilter(REPEATS)


def _header_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode() if isinstance(value, str) else bytes(value)


class KafkaTransport:
    """Consumer + producer for one worker; see the module doc for the guarantees."""

    # Class-level defaults: the state below is read by callbacks that may run before
    # __init__ ends (and by tests that build a transport around a scripted consumer).
    metrics: Metrics = NullMetrics()
    ledger: KafkaLedger | None = None
    _fatal: KafkaError | None = None
    _state = ""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        stop: threading.Event | None = None,
        worker: str | None = None,
        subscribe: bool = True,
    ) -> None:
        """Producer, output-topic check, transactions, ledger, then (``subscribe``) the
        consumer joins the group.  ``subscribe=False`` leaves the last step to
        :meth:`subscribe`: ``run`` builds the rest while its warm-up loads the kernels."""
        self.settings = settings
        self.metrics: Metrics = metrics or NullMetrics()
        self.stop = stop or threading.Event()
        self.eos = bool(settings.exactly_once)
        consumer_conf, producer_conf = client_configs(settings, worker=worker)
        for conf in (consumer_conf, producer_conf):
            conf.setdefault("error_cb", self._on_error)
            conf.setdefault("logger", _rdkafka_log)
        self._fatal: KafkaError | None = None
        self._state = ""
        self._group_lag: int | None = None
        self._group_lag_at = -1e9
        self._assigned: set[tuple[str, int]] = set()
        self._in_hand: SourceMessage | None = None
        self._abandoned = False
        self._in_txn = False
        self._last_lag = 0.0
        self._stop_deadline: float | None = None
        pause = os.environ.get(FAULT_PAUSE_ENV, "").strip()
        self._fault_pause = float(pause) if pause else 0.0
        self.producer = Producer(producer_conf)
        self.consumer: Consumer | None = None
        try:
            # Refuse to start when an output topic is missing and nothing would create it.
            check_output_topics(self.producer, _output_topics(settings), conf=producer_conf)
            if self.eos:
                # Fences any earlier producer with the same transactional.id and aborts its open
                # transaction.  The first call on a fresh broker creates __transaction_state.
                self._retry(lambda: self.producer.init_transactions(_TXN_TIMEOUT_S), "init")
            if settings.ledger_topic:
                # Read before subscribing: the first event must already be checked against it.
                self.ledger = KafkaLedger(settings.ledger_topic, settings.group_id, consumer_conf)
                self.ledger.load()
            if settings.instance_id:
                warn_if_instance_held(consumer_conf, settings.group_id, settings.instance_id)
            self._consumer_conf = consumer_conf
            if subscribe:
                self.subscribe()
        except BaseException:
            self.close()
            raise
        self._set_state()

    def subscribe(self) -> None:
        """Create the consumer and join the group (partitions come with the next polls)."""
        if self.consumer is not None:
            return
        self.consumer = Consumer(self._consumer_conf)
        self.consumer.subscribe(
            [self.settings.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- errors and state -------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (runs inside poll/flush).  Broker down, DNS: librdkafka
        retries by itself, a WARNING (rate-limited); a fatal state is recorded and raised by
        the next :meth:`poll`."""
        if is_fatal(err):
            self._mark_fatal(err)
        else:
            _client_log.warning("kafka: %s", err)

    def _mark_fatal(self, err: KafkaError) -> None:
        if self._fatal is None:
            self._fatal = err
            log.critical(
                "fatal Kafka client error, the worker stops (exit 1) and must be restarted: %s%s",
                err,
                fatal_hint(err, self.settings),
            )
        self._set_state()

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise FatalKafkaError(self._fatal)

    @property
    def state(self) -> str:
        """``fatal``, ``assigned`` (holds partitions) or ``waiting`` (holds none)."""
        if self._fatal is not None:
            return "fatal"
        return "assigned" if self._assigned else "waiting"

    def _set_state(self) -> None:
        state = self.state
        if state != self._state:
            self._state = state
            on_state = getattr(self.metrics, "on_state", None)
            if on_state is not None:
                on_state(state)

    @property
    def assigned(self) -> list[int]:
        return sorted(p for _, p in self._assigned)

    # -- rebalance callbacks (run inside consumer.poll) -------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("assigned %s", sorted(p for _, p in self._assigned))
        self._set_state()

    def _release(self, partitions: list[TopicPartition], why: str) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        held = self._in_hand
        if held is not None and (held.topic, held.partition) in gone:
            # Reachable from run_loop only while it waits out a down dependency
            # (wait_in_hand) or a failing commit (_serve_group): never commit for a partition
            # lost meanwhile.
            log.warning("%s: partition %s with the event in hand: abandoned", held.where, why)
            self._abandoned = True
            if self._in_txn:
                self._abort()
        log.info("%s %s", why, sorted(p for _, p in gone))
        self._set_state()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(partitions, "lost")

    # -- consuming --------------------------------------------------------------------------
    def _live_consumer(self) -> Consumer:
        if self.consumer is None:
            raise RuntimeError("the Kafka transport is closed")
        return self.consumer

    def poll(self, timeout: float) -> SourceMessage | None:
        self._raise_if_fatal()
        msg: Message | None = self._live_consumer().poll(timeout)
        self.producer.poll(0)  # serve delivery reports / error callbacks while idle
        self._raise_if_fatal()
        if msg is None:
            self._report_lag(force=False)
            self._refresh_group_lag()
            REPEATS.flush()
            return None
        err = msg.error()
        if err is not None:
            if is_fatal(err):
                self._mark_fatal(err)
                self._raise_if_fatal()
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err)
            return None
        if self.ledger is not None:
            self.ledger.refresh()  # what the group's other workers recorded meanwhile
        raw_headers: Any = msg.headers() or []
        headers = tuple((str(k), _header_bytes(v)) for k, v in raw_headers)
        ts_type, ts = msg.timestamp()
        source = SourceMessage(
            value=msg.value(),
            key=msg.key(),
            headers=headers,
            topic=str(msg.topic()),
            partition=int(msg.partition() or 0),
            offset=int(msg.offset() or 0),
            timestamp_ms=ts if ts_type else None,
        )
        self._in_hand = source
        self._abandoned = False
        log.debug("processing %s", source.where)
        return source

    # -- delivering -------------------------------------------------------------------------
    def _records(self, outcome: Outcome) -> list[tuple[str, OutRecord]]:
        s = self.settings
        out = [(s.output_topic, r) for r in outcome.alert_records]
        out.append((s.metadata_topic, outcome.summary))
        if outcome.dead_letter is not None:
            out.append((s.dlq_topic, outcome.dead_letter))
        return out

    def _ledger_records(self, outcome: Outcome) -> list[tuple[str, OutRecord]]:
        if self.ledger is None or outcome.ledger is None or not self.settings.ledger_topic:
            return []
        key, value = outcome.ledger
        rec = OutRecord(key=key.encode(), value=Ledger.encode(value))
        return [(self.settings.ledger_topic, rec)]

    def _remember(self, outcome: Outcome) -> None:
        if self.ledger is not None and outcome.ledger is not None:
            self.ledger.add(*outcome.ledger)

    def _deadline(self) -> float | None:
        """None: keep trying (librdkafka's own timeouts bound produce); after a stop request,
        the shutdown grace period."""
        if not self.stop.is_set():
            return None
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.settings.shutdown_grace_s
        return self._stop_deadline

    def _expired(self) -> bool:
        deadline = self._deadline()
        return deadline is not None and time.monotonic() >= deadline

    def _produce_all(self, records: list[tuple[str, OutRecord]]) -> list[KafkaError]:
        """Produce and wait for every delivery report; the delivery errors (empty: all acked)."""
        errors: list[KafkaError] = []
        pending = [0]

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            pending[0] -= 1
            if err is not None:
                errors.append(err)

        for topic, rec in records:
            while True:
                try:
                    self.producer.produce(
                        topic,
                        key=rec.key,
                        value=rec.value,
                        headers=[*rec.headers, producer_timestamp_header()],
                        on_delivery=on_delivery,
                    )
                    pending[0] += 1
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.1)
            self.producer.poll(0)
        while pending[0] > 0:
            self.producer.flush(0.5)
            if pending[0] > 0 and self._expired():
                errors.append(KafkaError(KafkaError._TIMED_OUT, "shutdown grace period over"))
                break
        return errors

    def _pause_for_tests(self, msg: SourceMessage) -> None:
        if self._fault_pause > 0:
            log.info(
                "fault injection: pausing %.1f s before committing %s", self._fault_pause, msg.where
            )
            time.sleep(self._fault_pause)

    def _rewind(self, msg: SourceMessage) -> None:
        """Seek back so the event comes again (only if the partition is still ours)."""
        if self.consumer is None or (msg.topic, msg.partition) not in self._assigned:
            return
        self._seek_to(TopicPartition(msg.topic, msg.partition, msg.offset))

    def _retry(self, op: Any, what: str) -> Any:
        """Call ``op`` until it succeeds; retriable KafkaErrors are retried with back-off."""
        attempt = 0
        while True:
            try:
                return op()
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.retriable() or self._expired():
                    raise
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                log.warning("%s: %s; retrying in %.1f s", what, err, delay)
                time.sleep(delay)
                attempt += 1

    def deliver(self, outcome: Outcome) -> bool:
        msg = outcome.source
        try:
            if self._abandoned:
                return False
            ledger = self._ledger_records(outcome)
            if self.eos:  # the ledger entry commits with the alerts and the offset, or not at all
                ok = self._deliver_transactional(msg, self._records(outcome) + ledger)
            else:
                ok = self._deliver_at_least_once(msg, self._records(outcome), ledger)
            if ok:
                self._remember(outcome)
            return ok
        finally:
            self._in_hand = None
            self._group_lag = None  # stale: the next idle poll reads it again
            self._report_lag(force=True)

    def _deliver_at_least_once(
        self, msg: SourceMessage, records: list, ledger: list | None = None
    ) -> bool:
        errors = self._produce_all(records)
        if errors:
            log.warning(
                "%s: %d records not acknowledged (%s): processing it again",
                msg.where,
                len(errors),
                errors[0],
            )
            self._rewind(msg)
            return False
        # Only now: a ledger entry must never promise alerts the broker does not have.
        if ledger and (errors := self._produce_all(ledger)):
            # The alerts are out; without the entry a re-delivered event is processed again
            # (a duplicate, never a loss), so the event is committed all the same.
            log.warning("%s: ledger entry not acknowledged (%s)", msg.where, errors[0])
        self._pause_for_tests(msg)
        return self._commit(msg)

    def _commit(self, msg: SourceMessage) -> bool:
        consumer = self._live_consumer()
        tp = TopicPartition(msg.topic, msg.partition, msg.offset + 1)
        attempt = 0
        while True:
            try:
                result = consumer.commit(offsets=[tp], asynchronous=False)
                failed = [r for r in result or [] if r.error is not None]
                if not failed:
                    return True
                raise KafkaException(failed[0].error)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.code() == KafkaError.FENCED_INSTANCE_ID:
                    self._mark_fatal(err)  # another worker runs with our --instance-id
                if err.code() in _LOST_OWNERSHIP:
                    log.warning(
                        "%s: commit refused (%s): the partition's next owner reprocesses it",
                        msg.where,
                        err,
                    )
                    return False
                if is_fatal(err) or self._expired():
                    log.error("%s: commit failed (%s): it will be reprocessed", msg.where, err)
                    if is_fatal(err):
                        self._mark_fatal(err)
                        raise FatalKafkaError(err) from exc
                    return False
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                log.warning("%s: commit failed (%s); retrying in %.1f s", msg.where, err, delay)
                if not self._serve_group(delay):
                    log.warning(
                        "%s: partition lost while the commit waited: the partition's next owner "
                        "reprocesses it",
                        msg.where,
                    )
                    return False
                attempt += 1

    def _serve_group(self, seconds: float) -> bool:
        """Wait ``seconds`` polling the paused consumer, so that librdkafka can run the group
        protocol's callbacks; False if the event in hand lost its partition meanwhile.

        Why: a consumer whose session timed out (a broker outage longer than
        ``session.timeout.ms``) hands its assignment back through the lost/revoke callback,
        which librdkafka only runs inside ``poll``, and only then rejoins; a commit retried
        with plain sleeps kept the whole group protocol waiting.  (The commit seen stuck for
        150 s in tests/integration/test_stream_broker_restart.py was librdkafka #5511, fixed
        by ``metadata.recovery.strategy=none`` in :func:`client_configs`; with both, that test
        now takes this path on every run: the partition is lost here and reassigned.)  The
        assigned partitions are paused, so nothing new is fetched; a message fetched before
        the pause is sought back.
        """
        consumer = self._live_consumer()
        paused = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if paused:
            try:
                consumer.pause(paused)
            except KafkaException as exc:  # e.g. revoked between the two calls
                log.debug("pause before serving the group: %s", exc)
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0 and not self._abandoned:
                m = consumer.poll(min(left, 0.5))
                if m is None:
                    continue
                err = m.error()
                if err is not None:
                    if is_fatal(err):
                        self._mark_fatal(err)
                        self._raise_if_fatal()
                    continue
                # Fetched before the pause (or on a partition assigned since): it comes again.
                topic, part, offset = m.topic(), m.partition(), m.offset()
                if topic is not None and part is not None and offset is not None:
                    self._seek_to(TopicPartition(topic, part, offset))
        finally:
            # Every paused partition, held or not: librdkafka keeps the pause flag on a
            # partition lost meanwhile, and the next assignment of it would fetch nothing
            # (the broker-restart test sat idle until its timeout that way).
            if paused:
                try:
                    consumer.resume(paused)
                except KafkaException as exc:
                    log.debug("resume after serving the group: %s", exc)
        return not self._abandoned

    def wait_in_hand(self, seconds: float) -> bool:
        """Wait ``seconds`` with the event in hand undelivered, because a dependency of its
        processing is down (service.run_loop retries it); False when its partition went to
        another worker meanwhile.  The partitions are paused and the consumer polled
        (:meth:`_serve_group`): a worker that slept instead would be evicted from its group
        after ``max.poll.interval.ms`` and its partitions handed round while the database is
        down, for every worker alike."""
        self._raise_if_fatal()
        ok = self._serve_group(seconds)
        self._raise_if_fatal()
        return ok

    def give_up_in_hand(self) -> None:
        """The event in hand is left uncommitted (stop requested, or its partition lost):
        its partition's next owner, or this worker after a restart, processes it again."""
        self._in_hand = None
        self._abandoned = False

    def _seek_to(self, tp: TopicPartition) -> None:
        try:
            self._live_consumer().seek(tp)
        except KafkaException as exc:
            log.warning("%s[%d]: cannot seek back to %d (%s); the next owner will reprocess "
                        "it", tp.topic, tp.partition, tp.offset, exc)  # fmt: skip

    def _abort(self) -> None:
        try:
            self._retry(lambda: self.producer.abort_transaction(_TXN_TIMEOUT_S), "abort")
        except KafkaException as exc:
            log.error("abort_transaction failed: %s", exc)
            raise
        finally:
            self._in_txn = False

    def _deliver_transactional(self, msg: SourceMessage, records: list) -> bool:
        consumer = self._live_consumer()
        p = self.producer
        try:
            p.begin_transaction()
            self._in_txn = True
            errors = self._produce_all(records)
            if errors:
                raise KafkaException(errors[0])
            self._pause_for_tests(msg)
            offsets = [TopicPartition(msg.topic, msg.partition, msg.offset + 1)]
            self._retry(
                lambda: p.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), _TXN_TIMEOUT_S
                ),
                f"{msg.where}: send_offsets_to_transaction",
            )
            self._retry(lambda: p.commit_transaction(_TXN_TIMEOUT_S), f"{msg.where}: commit")
            self._in_txn = False
            return True
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if isinstance(err, KafkaError) and is_fatal(err):
                log.error("%s: fatal producer error (%s): stopping", msg.where, err)
                self._mark_fatal(err)
                raise FatalKafkaError(err) from exc
            log.warning(
                "%s: transaction failed (%s): aborting, processing it again", msg.where, err
            )
            if self._in_txn:
                self._abort()
            self._rewind(msg)
            return False

    # -- lag --------------------------------------------------------------------------------
    def _report_lag(self, *, force: bool) -> None:
        now = time.monotonic()
        if self.consumer is None or not self._assigned or (not force and now - self._last_lag < 5):
            return
        self._last_lag = now
        tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        try:
            positions = self.consumer.position(tps)
        except KafkaException:
            return
        for tp in positions:
            if tp.offset < 0:
                continue
            try:
                _lo, hi = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if hi >= 0:
                self.metrics.on_lag(tp.partition, max(0, hi - tp.offset))

    def _refresh_group_lag(self) -> None:
        """Every ``_LAG_REFRESH_S`` while idle: the group's events not yet processed, over every
        partition of the input topic (committed offset to end; for a partition held here, the
        position if further), read from the broker.  None when the broker does not answer."""
        now = time.monotonic()
        if self.consumer is None or now - self._group_lag_at < _LAG_REFRESH_S:
            return
        self._group_lag_at = now
        self._group_lag = self._read_group_lag(self.consumer)
        on_group_lag = getattr(self.metrics, "on_group_lag", None)
        if on_group_lag is not None:
            on_group_lag(self._group_lag)

    def _read_group_lag(self, consumer: Consumer) -> int | None:
        return read_group_lag(consumer, self.settings.input_topic, self._assigned)

    @property
    def group_lag(self) -> int | None:
        """The last :meth:`_refresh_group_lag` reading (None: unknown)."""
        return self._group_lag

    def status_text(self) -> str:
        """For ``run``'s status line: state, partitions, lag."""
        lag = "unknown" if self._group_lag is None else str(self._group_lag)
        return f"{self.state}, partitions {self.assigned}, group lag {lag}"

    def idle(self) -> bool:
        """Nothing left to do: no fatal error, and the group's whole input topic processed to
        its end at the last reading.  A worker without partitions is idle only then too: after
        a kill -9 restart it waits for an assignment while events are pending (issue 16)."""
        if self._fatal is not None or self._in_hand is not None:
            return False
        lag = self._group_lag
        # A reading older than two refresh periods (an event was processed since, or the broker
        # did not answer) proves nothing.
        fresh = time.monotonic() - self._group_lag_at <= 2 * _LAG_REFRESH_S + _BROKER_QUERY_S
        return lag == 0 and fresh

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close both clients (each even if the other fails)."""
        if self.ledger is not None:
            try:
                self.ledger.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the ledger reader: %s", exc)
            self.ledger = None
        try:
            if self.consumer is not None:
                self.consumer.close()  # leaves the group: partitions move on at once
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the consumer: %s", exc)
        finally:
            self.consumer = None
            try:
                if self._in_txn:
                    self._abort()
                left = self.producer.flush(5.0)
                if left:
                    log.warning("%d records still undelivered at close", left)
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the producer: %s", exc)
