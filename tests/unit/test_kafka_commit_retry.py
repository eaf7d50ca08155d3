"""KafkaTransport's commit retries serve the consumer group (unit tier: a scripted consumer
stands in for librdkafka's state machine; the real broker outage is
tests/integration/test_stream_broker_restart.py)."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import diffstream.stream.transport.kafka as kt
from diffstream.stream.ops.settings import Settings
from diffstream.stream.transport.outcomes import SourceMessage

pytestmark = pytest.mark.unit

TOPIC = "exposures"


class Msg:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def error(self):
        return None

    def topic(self):
        return TOPIC

    def partition(self):
        return self._p

    def offset(self):
        return self._o


class ScriptedConsumer:
    """librdkafka after a session timeout: commits wait for the coordinator until the
    application polls, and the first poll runs the lost-partitions callback."""

    def __init__(self, transport, *, lose_on_poll: bool, fetched=None) -> None:
        self.transport = transport
        self.lose_on_poll = lose_on_poll
        self.fetched = list(fetched or [])
        self.polled = 0
        self.commits = 0
        self.calls: list[tuple] = []

    def commit(self, offsets, asynchronous):
        self.commits += 1
        if self.polled == 0:
            raise KafkaException(KafkaError(KafkaError._WAIT_COORD))
        return offsets

    def poll(self, timeout):
        self.polled += 1
        if self.lose_on_poll and self.polled == 1:
            self.transport._on_lost(self, [TopicPartition(TOPIC, p) for p in (0, 1)])
        return self.fetched.pop(0) if self.fetched else None

    def pause(self, tps):
        self.calls.append(("pause", sorted(tp.partition for tp in tps)))

    def resume(self, tps):
        self.calls.append(("resume", sorted(tp.partition for tp in tps)))

    def seek(self, tp):
        self.calls.append(("seek", tp.partition, tp.offset))


def _transport(monkeypatch, **consumer_kwargs):
    monkeypatch.setattr(kt, "_BACKOFF_S", (0.05,))
    t = object.__new__(kt.KafkaTransport)  # no clients: the consumer is scripted
    t.settings = Settings()
    t.stop = threading.Event()
    t._stop_deadline = None
    t._assigned = {(TOPIC, 0), (TOPIC, 1)}
    t._abandoned = False
    t._in_txn = False
    held = SourceMessage(value=b"", key=None, headers=(), topic=TOPIC, partition=1, offset=7,
                         timestamp_ms=None)  # fmt: skip
    t._in_hand = held
    t.consumer = ScriptedConsumer(t, **consumer_kwargs)
    return t, held


def test_a_partition_lost_while_the_commit_waits_abandons_the_event(monkeypatch):
    t, held = _transport(monkeypatch, lose_on_poll=True)
    assert t._commit(held) is False  # returns instead of retrying for ever
    c = t.consumer
    assert c.commits == 1 and c.polled == 1
    # Resumed although lost: librdkafka keeps the pause flag for the next assignment.
    assert c.calls == [("pause", [0, 1]), ("resume", [0, 1])]
    assert t._assigned == set() and t._abandoned


def test_the_commit_goes_through_once_the_group_is_served(monkeypatch):
    t, held = _transport(monkeypatch, lose_on_poll=False, fetched=[Msg(0, 12)])
    assert t._commit(held) is True
    c = t.consumer
    assert c.commits == 2 and c.polled >= 1
    # Paused while polling, the message fetched before the pause sought back, then resumed.
    assert c.calls == [("pause", [0, 1]), ("seek", 0, 12), ("resume", [0, 1])]
