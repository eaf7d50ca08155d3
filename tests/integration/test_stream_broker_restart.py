"""The broker stops and comes back while a worker is in the middle of a run: the worker
recovers by itself and finishes every event, losing nothing (and, with --exactly-once,
duplicating nothing for read_committed readers).

It needs a broker of its own (the session broker serves the other tests): one started with
compose/kafka-local.sh on free ports and a private state dir.  The restart is the script's own
``stop`` then ``start``, which keep the data dir (issue 16: they used to reformat it, and every
topic and committed offset vanished); ``stop --wipe`` is the clean slate.

Also here (issue 16): an outage longer than the session timeout under ``--exactly-once
--instance-id``, which left the worker fenced and silently idle in the operator trial.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from diffstream.stream.transport.kafka import SESSION_TIMEOUT_MS
from tests.integration.stream_helpers import (
    Workers,
    alerts_by_id,
    event_values,
    make_pairs,
    publish,
    read_all,
    wait_summaries,
)

KAFKA_LOCAL = Path(__file__).resolve().parents[2] / "compose" / "kafka-local.sh"
N_EVENTS = 8
OUTAGE_S = 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    def __init__(self, state: Path) -> None:
        port, cport = _free_port(), _free_port()
        self.env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(cport),
                    "KAFKA_LOCAL_DIR": str(state), "PYTHON": sys.executable}  # fmt: skip
        self.state = state
        self.bootstrap = f"127.0.0.1:{port}"

    def script(self, command: str, timeout: float = 120) -> str:
        done = subprocess.run(["bash", str(KAFKA_LOCAL), command], env=self.env, timeout=timeout,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, f"kafka-local.sh {command}: {done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def stop_and_restart(self, outage: float) -> float:
        """SIGTERM (a controlled shutdown, like an operator's restart), ``outage`` seconds
        down, start on the same data; returns the seconds the broker was unreachable."""
        self.script("stop")
        t0 = time.monotonic()
        time.sleep(outage)
        out = self.script("start")
        assert "reusing the data" in out, out
        return time.monotonic() - t0

    def close(self) -> None:
        self.script("stop", timeout=60)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = PrivateBroker(tmp_path_factory.mktemp("private-kafka"))
    b.script("start", timeout=900)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("restart-data")


@pytest.fixture(scope="module")
def pairs(data_root):
    return make_pairs(data_root, N_EVENTS, seed0=300)


def _topics(bootstrap: str) -> dict[str, str]:
    stem = uuid.uuid4().hex[:8]
    names = {"input": 3, "alerts": 3, "dlq": 1, "metadata": 1}
    topics = {k: f"restart-{k}-{stem}" for k in names}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topics[k], n, 1) for k, n in names.items()])
    for f in futures.values():
        f.result(timeout=30)
    return {**topics, "group": f"restart-group-{stem}"}


@pytest.mark.parametrize("mode", [[], ["--exactly-once"]], ids=["at-least-once", "exactly-once"])
def test_worker_recovers_from_a_broker_restart(broker, pairs, data_root, tmp_path, mode):
    topics = _topics(broker.bootstrap)
    publish(broker.bootstrap, topics["input"], event_values(pairs), partitions=3)
    workers = Workers(tmp_path, broker.bootstrap, topics, data_root)
    try:
        # A pause per event stretches the run so that the outage lands in its middle.
        proc = workers.start(*mode, pause=0.7)
        wait_summaries(broker.bootstrap, topics["metadata"], 2, procs=[proc])
        t0 = time.monotonic()
        broker.stop_and_restart(OUTAGE_S)
        assert proc.proc.poll() is None, f"the worker died with the broker:\n{proc.tail()}"
        wait_summaries(broker.bootstrap, topics["metadata"], N_EVENTS, timeout=150, procs=[proc])
        print(f"finished {time.monotonic() - t0:.1f} s after the broker went down")
        assert proc.stop() == 0, proc.tail()
    finally:
        workers.cleanup()
    got = alerts_by_id(read_all(broker.bootstrap, topics["alerts"]))
    want = {sid for p in pairs for sid in p.alerts}
    assert set(got) == want, f"lost {len(want - set(got))}, unexpected {len(set(got) - want)}"
    if mode:
        assert all(len(v) == 1 for v in got.values()), "duplicates under --exactly-once"


def test_exactly_once_outage_longer_than_the_session_timeout(broker, pairs, data_root, tmp_path):
    """The operator trial's silent stall: --exactly-once --instance-id, the broker down for
    longer than the session timeout.  The worker fenced itself and sat idle, 6 of 8 events
    unprocessed.  Now it either recovers or exits non-zero; restarted, it finishes every event
    with none lost and none duplicated for a read_committed reader."""
    topics = _topics(broker.bootstrap)
    publish(broker.bootstrap, topics["input"], event_values(pairs), partitions=3)
    workers = Workers(tmp_path, broker.bootstrap, topics, data_root)
    args = ["--exactly-once", "--instance-id", "eos-1"]
    outcome = "recovered"
    try:
        proc = workers.start(*args, pause=0.7, fast_session=False)
        wait_summaries(broker.bootstrap, topics["metadata"], 2, procs=[proc])
        down = broker.stop_and_restart(8.0)
        assert down * 1000 > SESSION_TIMEOUT_MS, f"only {down:.1f} s down: the premise fails"
        deadline = time.monotonic() + 150
        while True:
            rc = proc.proc.poll()
            if rc is not None:
                assert rc != 0, f"exited 0 with events pending:\n{proc.tail()}"
                outcome = f"exited {rc}, restarted"
                proc = workers.start(*args, fast_session=False)
                break
            try:
                wait_summaries(broker.bootstrap, topics["metadata"], N_EVENTS, timeout=5)
                break
            except AssertionError:
                assert time.monotonic() < deadline, f"stalled:\n{proc.tail()}"
        wait_summaries(broker.bootstrap, topics["metadata"], N_EVENTS, timeout=150, procs=[proc])
        print(f"outage {down:.1f} s > session {SESSION_TIMEOUT_MS / 1000:g} s: {outcome}")
        assert proc.stop() == 0, proc.tail()
    finally:
        workers.cleanup()
    got = alerts_by_id(read_all(broker.bootstrap, topics["alerts"]))
    want = {sid for p in pairs for sid in p.alerts}
    assert set(got) == want, f"lost {len(want - set(got))}, unexpected {len(set(got) - want)}"
    assert all(len(v) == 1 for v in got.values()), "duplicates under --exactly-once"


def test_stop_and_start_keep_topics_and_offsets_and_wipe_clears_them(broker):
    topic, group = f"keep-{uuid.uuid4().hex[:8]}", f"keep-group-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(3):
        producer.produce(topic, value=b"%d" % i)
    assert producer.flush(30) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    c.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    c.close()
    broker.stop_and_restart(0.0)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert topic in admin.list_topics(timeout=30).topics
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        deadline = time.monotonic() + 60
        while True:  # the offsets topic loads for a moment after a start: NOT_COORDINATOR
            try:
                committed = c.committed([TopicPartition(topic, 0)], timeout=10)
                break
            except KafkaException as exc:
                assert time.monotonic() < deadline, exc
                time.sleep(0.5)
        assert committed[0].offset == 2
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=30) == (0, 3)
    finally:
        c.close()
    # The module's other tests run before this one (file order); the wipe leaves a fresh,
    # empty broker for whatever comes after.
    broker.script("stop")
    done = subprocess.run(["bash", str(KAFKA_LOCAL), "stop", "--wipe"], env=broker.env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (broker.state / "data").exists()
    out = broker.script("start")
    assert "reusing" not in out
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert topic not in admin.list_topics(timeout=30).topics
