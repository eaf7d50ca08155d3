"""Helpers for the stream-worker integration tests: simulated pairs and their offline alerts,
worker subprocesses, and bounded reads of the output topics.  Every wait has a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from diffstream.stream.transport.events import encode_event, make_event
from diffstream.stream.transport.kafka import FAULT_PAUSE_ENV
from diffstream.stream.transport.records import decode_dead_letter, decode_summary
from diffstream.stream.transport.wire import alert_codec

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 90.0  # upper bound of any single wait; a healthy run needs a fraction of it
SAFETY_IDLE_S = "90"  # workers exit by themselves if a test forgets them


# -- inputs and expected outputs ------------------------------------------------------------
@dataclass
class Pair:
    science: Path
    template: Path
    visit: int
    detector: int
    exposure_id: int
    alerts: dict[int, dict[str, Any]] = field(default_factory=dict)  # offline, by diaSourceId

    def event(self, request_id: str | None = None) -> dict[str, Any]:
        return make_event(
            str(self.science), str(self.template), visit=self.visit, detector=self.detector,
            exposure_id=self.exposure_id, request_id=request_id,
        )  # fmt: skip


def make_pairs(root: Path, n: int, *, seed0: int = 100) -> list[Pair]:
    """n distinct simulated 256x256 pairs with their offline ``subtract_files`` alerts."""
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    pairs = []
    for i in range(n):
        sim = simulate_pair(seed=seed0 + i, shape=(256, 256), n_stars=60, n_transients=8)
        sci, tmpl = write_pair(sim, root / f"pair{i:02d}", truth_csv=False)
        pair = Pair(sci, tmpl, visit=1000 + i, detector=i % 9, exposure_id=5000 + i)
        result = subtract_files(
            str(sci), str(tmpl), settings=Settings(), visit=pair.visit,
            detector=pair.detector, exposure_id=pair.exposure_id,
        )  # fmt: skip
        pair.alerts = {a["diaSourceId"]: a for a in result.alerts}
        assert pair.alerts, "a test pair without alerts proves nothing"
        pairs.append(pair)
    return pairs


def publish(bootstrap: str, topic: str, values: Iterable[bytes], *, partitions: int) -> list:
    """Produce values round-robin over partitions; returns [(partition, offset)] in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    done: dict[int, tuple[int, int]] = {}
    for i, value in enumerate(values):

        def report(err, msg, i=i):
            assert err is None, err
            done[i] = (msg.partition(), msg.offset())

        producer.produce(topic, value=value, key=str(i).encode(), partition=i % partitions,
                         on_delivery=report)  # fmt: skip
    assert producer.flush(WAIT_S) == 0
    return [done[i] for i in sorted(done)]


def event_values(pairs: list[Pair]) -> list[bytes]:
    return [encode_event(p.event(request_id=f"req-{p.exposure_id}")) for p in pairs]


# -- worker processes -----------------------------------------------------------------------
@dataclass
class WorkerProc:
    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def wait_for_line(self, needle: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode} before {needle!r}:\n"
                                     f"{self.tail()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = WAIT_S) -> int:
        """SIGTERM, then the exit code (bounded)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            raise AssertionError(f"worker ignored SIGTERM for {timeout} s:\n{self.tail()}") from exc


class Workers:
    """Starts ``python -m stream.cli.main run`` subprocesses; kills leftovers (its own only)."""

    def __init__(self, tmp: Path, bootstrap: str, topics: dict[str, str], data_root: Path):
        self.tmp, self.bootstrap, self.topics, self.data_root = tmp, bootstrap, topics, data_root
        self.started: list[WorkerProc] = []

    def start(self, *extra: str, pause: float | None = None, verbose: bool = False) -> WorkerProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFSTREAM_")}
        if pause:
            env[FAULT_PAUSE_ENV] = str(pause)
        log = self.tmp / f"worker-{len(self.started)}.log"
        t = self.topics
        cmd = [
            sys.executable, "-m", "diffstream.stream.cli.main", *(["-v"] if verbose else []), "run",
            "--bootstrap-servers", self.bootstrap, "--input-topic", t["input"],
            "--output-topic", t["alerts"], "--dlq-topic", t["dlq"],
            "--metadata-topic", t["metadata"], "--group-id", t["group"],
            "--data-root", str(self.data_root), "--exit-when-idle", SAFETY_IDLE_S,
            # A kill -9 test needs the dead member out of the group quickly.
            "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500",
            *extra,
        ]  # fmt: skip
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        wp = WorkerProc(proc, log)
        self.started.append(wp)
        return wp

    def cleanup(self) -> None:
        for wp in self.started:
            if wp.proc.poll() is None:
                wp.proc.kill()
                wp.proc.wait(10)


def new_topics(make_topic: Callable[..., str], partitions: int = 3) -> dict[str, str]:
    return {
        "input": make_topic(partitions),
        "alerts": make_topic(3),
        "dlq": make_topic(1),
        "metadata": make_topic(1),
        "group": f"it-stream-{uuid.uuid4().hex[:10]}",
    }


def wait_group_stable(bootstrap: str, group: str, members: int, timeout: float = WAIT_S) -> None:
    """Until the group is STABLE with ``members`` members that all hold partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            last = (desc.state, len(desc.members))
            if (
                desc.state == ConsumerGroupState.STABLE
                and len(desc.members) == members
                and all(m.assignment.topic_partitions for m in desc.members)
            ):
                return
        except Exception as exc:  # noqa: BLE001 - group not there yet
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"group {group} not stable with {members} members: last {last}")


# -- reading outputs ------------------------------------------------------------------------
def _consumer(bootstrap: str, isolation: str) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"it-read-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": isolation,
    })  # fmt: skip


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[Message]:
    """Every visible record of ``topic``, from the beginning to the current end."""
    c = _consumer(bootstrap, isolation)
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts = sorted(md.partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got: list[Message] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + WAIT_S
        while len(at_end) < len(parts):
            assert time.monotonic() < deadline, f"{topic}: partitions {at_end} reached the end"
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            at_end.discard(msg.partition())
            got.append(msg)
        return got
    finally:
        c.close()


def wait_summaries(
    bootstrap: str, topic: str, n: int, *, timeout: float = WAIT_S, procs=()
) -> list[dict]:
    """Poll the metadata topic (read_committed) until n summaries of distinct events arrived."""
    c = _consumer(bootstrap, "read_committed")
    seen: dict[tuple, dict] = {}
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while len(seen) < n:
            if time.monotonic() > deadline:
                logs = "\n---\n".join(p.tail() for p in procs)
                raise AssertionError(f"{len(seen)} of {n} summaries within {timeout} s\n{logs}")
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            s = decode_summary(msg.value())
            seen[(s["topic"], s["partition"], s["offset"])] = s
        return list(seen.values())
    finally:
        c.close()


def alerts_by_id(messages: list[Message]) -> dict[int, list[tuple[dict, dict]]]:
    """diaSourceId -> [(decoded alert, headers)] (several entries = duplicates)."""
    out: dict[int, list] = {}
    for m in messages:
        # Rubin-framed by default, schemaless with the opt-in: the codec reads both.
        alert = alert_codec("alerts").deserialize(m.value(), m)
        assert m.key() == str(alert["diaSourceId"]).encode()
        out.setdefault(alert["diaSourceId"], []).append((alert, dict(m.headers() or [])))
    return out


def dead_letters(bootstrap: str, topic: str) -> list[dict]:
    return [decode_dead_letter(m.value()) for m in read_all(bootstrap, topic)]


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "isolation.level": "read_committed"})  # fmt: skip
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


_META_KEYS = (
    "pipelineVersion", "method", "configHash", "versionsHash", "exposureId", "visit",
    "detector", "nDiaSources", "templateCoverage", "scienceSha256", "templateSha256",
)  # fmt: skip


def check_alert_matches_offline(got: dict, want: dict, headers: dict | None = None) -> None:
    """Same diaSource measurements and task metadata as the offline subtract of the pair.

    A Rubin-framed alert (the default) carries no diffstreamMetadata: its method and hashes
    are then checked in the Kafka ``headers``."""
    g, w = got["diaSource"], want["diaSource"]
    for key in ("diaSourceId", "visit", "detector", "band", "x", "y", "ra", "dec", "psfFlux",
                "psfFluxErr", "snr", "isNegative", "midpointMjdTai"):  # fmt: skip
        assert g[key] == w[key], (key, g[key], w[key])
    gm, wm = got["diffstreamMetadata"], want["diffstreamMetadata"]
    if gm is None:
        assert headers is not None, "a framed alert's metadata is in its headers"
        for key in ("method", "configHash", "versionsHash"):
            assert headers[f"diffstream.{key}"] == str(wm[key]).encode(), key
    else:
        assert {k: gm[k] for k in _META_KEYS} == {k: wm[k] for k in _META_KEYS}
        assert set(gm["timings"]) == set(wm["timings"])
    for name in ("cutoutDifference", "cutoutScience", "cutoutTemplate"):
        assert got[name] == want[name]
