"""The broker stops and comes back while a worker is in the middle of a run: the worker
recovers by itself and finishes every event, losing nothing (and, with --exactly-once,
duplicating nothing for read_committed readers).

It needs a broker of its own (the session broker serves the other tests): one started with
compose/kafka-local.sh on free ports and a private state dir.  That script formats a fresh log
dir on every ``start``, which a restart must not do (the topics and committed offsets would
vanish), so the restart re-executes the broker's own command line on the same data instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

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
        self.restarted: subprocess.Popen | None = None

    def script(self, command: str, timeout: float = 120) -> str:
        done = subprocess.run(["bash", str(KAFKA_LOCAL), command], env=self.env, timeout=timeout,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, f"kafka-local.sh {command}: {done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def pid(self) -> int:
        return int((self.state / "broker.pid").read_text())

    def stop_and_restart(self, outage: float) -> None:
        pid = self.pid()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        self.script("stop")  # SIGTERM: a controlled shutdown, like an operator's restart
        time.sleep(outage)
        log = (self.state / "broker.log").open("ab")
        self.restarted = subprocess.Popen(
            [c.decode() for c in cmd], cwd=self.state, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        # The script's stop/status/wait find it through the pid file (pid + command line).
        (self.state / "broker.pid").write_text(f"{self.restarted.pid}\n")
        self.script("wait")

    def close(self) -> None:
        try:
            self.script("stop", timeout=60)
        finally:
            if self.restarted is not None and self.restarted.poll() is None:
                self.restarted.send_signal(signal.SIGKILL)
            if self.restarted is not None:
                self.restarted.wait(30)


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
