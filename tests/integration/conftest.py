"""Fixtures for the integration tier: a real Kafka broker and throw-away topics.

``kafka_bootstrap`` uses ``KAFKA_BOOTSTRAP_SERVERS`` when set (``make test`` starts one broker with
``compose/kafka-local.sh`` and passes its address). Otherwise it starts its own broker with the
same script, on free ports and with a state dir under pytest's tmp, and stops it at the end of the
session, so a plain ``pytest`` works too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
KAFKA_LOCAL = HERE.parents[1] / "compose" / "kafka-local.sh"

# The first start may download the broker jars with Maven (seconds to minutes on a slow link);
# later ones are bounded by the script's own readiness timeout (KAFKA_START_TIMEOUT, 90 s).
START_LIMIT_S = 900.0
STOP_LIMIT_S = 60.0
TOPIC_READY_S = 30.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, not only this directory's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_script(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(KAFKA_LOCAL), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ``host:port`` of a running broker for the whole session."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if given:
        yield given
        return

    port = _free_port()
    controller_port = _free_port()
    while controller_port == port:
        controller_port = _free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "KAFKA_LOCAL_DIR": str(tmp_path_factory.mktemp("kafka-local")),
        "PYTHON": sys.executable,
    }
    started = _run_script("start", env, START_LIMIT_S)
    if started.returncode != 0:
        # Stop whatever half-started, then fail every test that needs the broker with the reason.
        _run_script("stop", env, STOP_LIMIT_S)
        pytest.fail(
            f"compose/kafka-local.sh start exited {started.returncode}:\n"
            f"{started.stdout}\n{started.stderr}",
            pytrace=False,
        )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _run_script("stop", env, STOP_LIMIT_S)


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def _wait_for_topic(admin: AdminClient, topic: str, partitions: int, timeout: float) -> None:
    # create_topics() returns once the controller accepted the topic; metadata (and partition
    # leaders) can reach the broker a moment later, and a producer that looks too early fails.
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        if (
            t is not None
            and t.error is None
            and len(t.partitions) == partitions
            and all(p.leader >= 0 for p in t.partitions.values())
        ):
            return
        if time.monotonic() >= deadline:
            msg = f"topic {topic} not ready with {partitions} partitions within {timeout} s"
            raise TimeoutError(msg)
        time.sleep(0.1)


@pytest.fixture
def make_topic(
    kafka_admin: AdminClient, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Factory: ``make_topic(partitions=3, *, config=None) -> str``, a new topic with a unique
    name, ready for producers; every topic made is deleted at teardown."""
    made: list[str] = []
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(partitions: int = 3, *, config: dict[str, str] | None = None) -> str:
        name = f"it-{stem}-{uuid.uuid4().hex[:10]}"
        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        kafka_admin.create_topics([new], operation_timeout=TOPIC_READY_S)[name].result(
            timeout=TOPIC_READY_S
        )
        made.append(name)
        _wait_for_topic(kafka_admin, name, partitions, TOPIC_READY_S)
        return name

    yield make

    if made:
        futures = kafka_admin.delete_topics(made, operation_timeout=10)
        for future in futures.values():
            try:
                future.result(timeout=15)
            except Exception:  # noqa: S110 - a leftover topic is harmless; a masked test result is not
                pass
