"""The processed-exposures ledger: the same event is not processed twice by ``run`` (issue 16).

A producer retry or an operator re-publishing an event used to make a second set of alerts
(158 alerts, 79 unique, in the operator trial).  Their keys were stable, but a broker should
not have to deduplicate our stream.

**Identity.**  :func:`ledger_key` is ``group:fingerprint:configHash``.  The fingerprint is a
SHA-256 over what the event asks for (ids, exposure bits, every file location, band and
midpoint), not over ``requestId`` and ``producedAt``, which a re-publication changes.  The
config hash is the one the alerts carry (``Settings.science_config``).  The consumer group is
part of the key: another deployment (another group, other output topics) processes the event
for itself.

**Where it lives.**  A compacted Kafka topic (``Settings.ledger_topic``), one record per
processed exposure, written where it can commit atomically with the alerts: inside the
transaction with the alerts and the consumed offset under ``--exactly-once``; under
at-least-once only after every alert of the event is acknowledged (a ledger entry never
promises alerts that are not there; a crash between the two means the event is redone, a
duplicate, never a loss).  A database cannot join a Kafka transaction, so the APDB is not the
ledger.  Every worker of the group reads the whole topic at start (``read_committed``) and
follows it while it runs.

**What counts.**  ``done`` and ``no_work`` outcomes are recorded; a failure is not (a fixed
file re-published must be processed).  A skip is a ``no_work`` summary on the metadata topic
whose reason (``AlreadyProcessed``, ``fields.reason = "already_processed"``) names the first
processing.  ``replay`` and ``run --reprocess`` do not consult the ledger, by design.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from diffstream.stream.ops.errors import NoWorkFound

__all__ = [
    "AlreadyProcessed",
    "Ledger",
    "KafkaLedger",
    "event_fingerprint",
    "ledger_key",
    "ledger_value",
]

log = logging.getLogger("diffstream.ledger")

# What an event asks for; requestId and producedAt change with every publication.
_IDENTITY = (
    "visit",
    "detector",
    "exposureId",
    "exposureBits",
    "band",
    "midpointMjdTai",
    "scienceLocation",
    "templateLocation",
    "sciencePsfLocation",
    "templatePsfLocation",
    "backgroundLocation",
)
_LOAD_TIMEOUT_S = 60.0


class AlreadyProcessed(NoWorkFound):
    """The event was processed before with the same fingerprint and config (a no-work outcome:
    nothing goes to the dead-letter topic)."""


def event_fingerprint(event: dict[str, Any]) -> str:
    ident = {name: event.get(name) for name in _IDENTITY}
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def ledger_key(group: str, event: dict[str, Any], config_hash: str) -> str:
    return f"{group}:{event_fingerprint(event)}:{config_hash}"


def ledger_value(summary: dict[str, Any]) -> dict[str, Any]:
    """What the ledger remembers of the first processing (from the summary record)."""
    keep = ("status", "requestId", "topic", "partition", "offset", "nAlerts", "workerId")
    return {**{k: summary.get(k) for k in keep}, "processedAt": summary.get("processedAt")}


class Ledger:
    """The in-memory view: key -> what the first processing recorded."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def refresh(self) -> None:
        """Take in what other workers recorded meanwhile (nothing to do in memory)."""

    def seen(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def add(self, key: str, value: dict[str, Any]) -> None:
        self._entries[key] = value

    def _take(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        text = key.decode("utf-8", "replace")
        if not text.startswith(self.group + ":"):
            return  # another group's entry
        if value is None:  # a tombstone: an operator forgot the entry
            self._entries.pop(text, None)
            return
        try:
            self._entries[text] = json.loads(value)
        except ValueError:
            log.warning("ledger: entry %s is not JSON; ignored", text)

    @staticmethod
    def encode(value: dict[str, Any]) -> bytes:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


class KafkaLedger(Ledger):
    """The ledger read from its compacted topic (created if missing) and followed."""

    def __init__(self, topic: str, group: str, consumer_conf: dict[str, Any]) -> None:
        from confluent_kafka import Consumer

        super().__init__(group)
        self.topic = topic
        conf = {
            k: v
            for k, v in consumer_conf.items()
            # error_cb and logger stay: its broker-down reports join the worker's, counted.
            if k not in ("group.instance.id", "enable.partition.eof")
        }
        conf.update(
            {
                # Offsets are never committed: each start reads the whole (compacted) topic.
                "group.id": f"{group}-ledger-reader",
                "enable.auto.commit": "false",
                "enable.auto.offset.store": "false",
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        self._ensure_topic(conf)
        self.consumer = Consumer(conf)

    def _ensure_topic(self, conf: dict[str, Any]) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin_conf = {k: v for k, v in conf.items() if not _consumer_only(k)}
        admin = AdminClient(admin_conf)
        topic = NewTopic(
            self.topic,
            num_partitions=1,
            replication_factor=-1,  # the broker's default
            config={"cleanup.policy": "compact"},
        )
        try:
            admin.create_topics([topic], operation_timeout=30)[self.topic].result(timeout=60)
            log.info("created the ledger topic %s (compacted)", self.topic)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def load(self, timeout: float = _LOAD_TIMEOUT_S) -> None:
        """Read the whole topic; returns when every partition reached its end."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

        t0 = time.monotonic()
        md = self.consumer.list_topics(self.topic, timeout=timeout).topics[self.topic]
        if md.error is not None:
            raise KafkaException(md.error)
        parts = sorted(md.partitions)
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        at_end: set[int] = set()
        n = 0
        while len(at_end) < len(parts):
            if time.monotonic() - t0 > timeout:
                raise KafkaException(
                    KafkaError(
                        KafkaError._TIMED_OUT, f"ledger {self.topic} not read in {timeout} s"
                    )
                )
            msg = self.consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(int(msg.partition() or 0))
                continue
            self._take(msg.key(), msg.value())
            n += 1
        log.info(
            "ledger %s: %d entries of group %s (%d records) read in %.1f s",
            self.topic,
            len(self),
            self.group,
            n,
            time.monotonic() - t0,
        )

    def refresh(self) -> None:
        for _ in range(1000):
            msg = self.consumer.poll(0)
            if msg is None:
                return
            if msg.error() is None:
                self._take(msg.key(), msg.value())

    def close(self) -> None:
        self.consumer.close()


def _consumer_only(key: str) -> bool:
    return key.startswith(("group.", "enable.", "isolation.", "auto.", "session.", "heartbeat."))
