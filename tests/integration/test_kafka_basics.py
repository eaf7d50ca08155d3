"""The broker does what the pipeline relies on: consumer groups resume at committed offsets, and
transactions hide aborted records from read_committed consumers. Avro payloads round-trip.

These check the test broker (compose/kafka-local.sh or whatever KAFKA_BOOTSTRAP_SERVERS names)
and the client settings the worker uses, not diffstream code.
"""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import fastavro
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

N_RECORDS = 60
PARTITIONS = 3
WAIT_S = 60.0  # upper bound on any one wait; a healthy broker needs a few seconds at most
QUIET_S = 2.0  # how long "nothing more arrives" is watched for

SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "Probe",
        "namespace": "diffstream.test",
        "fields": [
            {"name": "diaSourceId", "type": "long"},
            {"name": "ra", "type": "double"},
            {"name": "dec", "type": "double"},
            {"name": "band", "type": "string"},
            {"name": "psfFlux", "type": ["null", "double"], "default": None},
        ],
    }
)


def make_record(i: int) -> dict[str, Any]:
    return {
        "diaSourceId": 10_000_000_000 + i,
        "ra": 150.0 + i * 1e-4,
        "dec": -30.0 - i * 2e-4,
        "band": "ugrizy"[i % 6],
        "psfFlux": None if i % 7 == 0 else 1234.5 * i,
    }


def encode(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, record)
    return buf.getvalue()


def decode(payload: bytes) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(payload), SCHEMA, SCHEMA)


def produce(producer: Producer, topic: str, items: list[tuple[str, bytes]]) -> dict[str, Message]:
    """Produce (key, value) pairs and wait for every delivery report; returns key -> delivered
    message (which carries partition and offset)."""
    delivered: dict[str, Message] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.key().decode()] = msg

    for key, value in items:
        producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(WAIT_S)
    assert remaining == 0, f"{remaining} messages not delivered within {WAIT_S} s"
    assert not errors, errors
    assert len(delivered) == len(items)
    return delivered


def consume(consumer: Consumer, n: int, *, timeout: float = WAIT_S) -> list[Message]:
    """Poll until exactly n messages arrived; fail (never hang) after timeout."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"received {len(got)} of {n} messages within {timeout} s"
        msg = consumer.poll(min(1.0, left))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        got.append(msg)
    return got


def drain_quiet(consumer: Consumer, *, quiet: float = QUIET_S) -> list[Message]:
    """Whatever else arrives within `quiet` seconds (expected: nothing)."""
    extra: list[Message] = []
    deadline = time.monotonic() + quiet
    while (left := deadline - time.monotonic()) > 0:
        msg = consumer.poll(min(0.5, left))
        if msg is not None and not msg.error():
            extra.append(msg)
    return extra


def test_group_resumes_after_committed_offsets_and_avro_round_trips(
    kafka_bootstrap: str, make_topic
) -> None:
    topic = make_topic(PARTITIONS)
    records = {f"src-{i:04d}": make_record(i) for i in range(N_RECORDS)}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    delivered = produce(producer, topic, [(k, encode(r)) for k, r in records.items()])
    # The keys are fixed, so this is deterministic: it guards the test's own premise that the
    # resume is checked on several partitions at once.
    assert {m.partition() for m in delivered.values()} == set(range(PARTITIONS))

    group = f"it-group-{uuid.uuid4().hex[:10]}"
    conf = {
        "bootstrap.servers": kafka_bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }

    half = N_RECORDS // 2
    first_consumer = Consumer(conf)
    try:
        first_consumer.subscribe([topic])
        first = consume(first_consumer, half)
        # Commit exactly what was processed: next offset = last processed + 1, per partition.
        next_offset: dict[int, int] = {}
        for m in first:
            next_offset[m.partition()] = max(next_offset.get(m.partition(), 0), m.offset() + 1)
        first_consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in next_offset.items()],
            asynchronous=False,
        )
    finally:
        first_consumer.close()

    second_consumer = Consumer(conf)
    try:
        committed = second_consumer.committed(
            [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=WAIT_S
        )
        assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == next_offset
        second_consumer.subscribe([topic])
        second = consume(second_consumer, N_RECORDS - half)
        extra = drain_quiet(second_consumer)
    finally:
        second_consumer.close()

    assert extra == [], "the restarted consumer received more than the uncommitted remainder"
    first_pos = {(m.partition(), m.offset()) for m in first}
    second_pos = {(m.partition(), m.offset()) for m in second}
    all_pos = {(m.partition(), m.offset()) for m in delivered.values()}
    assert first_pos.isdisjoint(second_pos)
    assert first_pos | second_pos == all_pos
    # Resumed exactly at the committed offset on every partition (0 where nothing was committed).
    for p in range(PARTITIONS):
        offsets = sorted(o for q, o in second_pos if q == p)
        if offsets:
            assert offsets[0] == next_offset.get(p, 0)

    decoded = {m.key().decode(): decode(m.value()) for m in first + second}
    assert decoded == records


def read_to_end(bootstrap: str, topic: str, isolation: str) -> list[int]:
    """diaSourceIds of every record a consumer with `isolation` sees, from the beginning to the
    end of every partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-read-{uuid.uuid4().hex[:10]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    seen: list[int] = []
    at_end: set[int] = set()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        deadline = time.monotonic() + WAIT_S
        while len(at_end) < PARTITIONS:
            left = deadline - time.monotonic()
            assert left > 0, f"{isolation}: only partitions {sorted(at_end)} reached their end"
            msg = consumer.poll(min(1.0, left))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            at_end.discard(msg.partition())
            seen.append(decode(msg.value())["diaSourceId"])
    finally:
        consumer.close()
    return seen


def test_read_committed_hides_aborted_transaction(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic(PARTITIONS)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"it-tx-{uuid.uuid4().hex[:10]}",
        }
    )
    # The first init_transactions on a fresh broker creates __transaction_state: allow for it.
    producer.init_transactions(WAIT_S)

    committed = [make_record(i) for i in range(12)]
    aborted = [make_record(i) for i in range(100, 112)]

    producer.begin_transaction()
    produce(producer, topic, [(f"c-{r['diaSourceId']}", encode(r)) for r in committed])
    producer.commit_transaction(WAIT_S)

    producer.begin_transaction()
    # produce() flushes: the aborted records are really in the log (an abort without a flush
    # would purge them client-side and the read_uncommitted check below would prove nothing).
    produce(producer, topic, [(f"a-{r['diaSourceId']}", encode(r)) for r in aborted])
    producer.abort_transaction(WAIT_S)

    committed_ids = sorted(r["diaSourceId"] for r in committed)
    aborted_ids = sorted(r["diaSourceId"] for r in aborted)
    assert sorted(read_to_end(kafka_bootstrap, topic, "read_committed")) == committed_ids
    assert sorted(read_to_end(kafka_bootstrap, topic, "read_uncommitted")) == sorted(
        committed_ids + aborted_ids
    )


def test_transport_built_without_subscribing_holds_no_partition_until_subscribe(
    kafka_bootstrap: str, make_topic, kafka_admin
) -> None:
    """``run`` builds its transport (producer, topic check, ledger) during the warm-up with
    ``subscribe=False``: the group must not see the worker, nor hand it partitions, before
    :meth:`KafkaTransport.subscribe`."""
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.transport.kafka import KafkaTransport

    topics = {k: make_topic(1) for k in ("input", "output", "dlq", "metadata", "ledger")}
    group = f"it-subscribe-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap_servers=kafka_bootstrap, input_topic=topics["input"],
        output_topic=topics["output"], dlq_topic=topics["dlq"],
        metadata_topic=topics["metadata"], ledger_topic=topics["ledger"], group_id=group,
    )  # fmt: skip
    transport = KafkaTransport(settings, subscribe=False)
    try:
        assert transport.consumer is None
        assert transport.ledger is not None  # read already: the first event is checked
        members = kafka_admin.describe_consumer_groups([group])[group].result(WAIT_S).members
        assert members == []
        transport.subscribe()
        transport.subscribe()  # twice: one consumer
        deadline = time.monotonic() + WAIT_S
        while transport.state != "assigned" and time.monotonic() < deadline:
            transport.poll(0.2)
        assert transport.state == "assigned"
        members = kafka_admin.describe_consumer_groups([group])[group].result(WAIT_S).members
        assert len(members) == 1
    finally:
        transport.close()
