"""Stream benchmark: events/s and event-to-alert latency of ``diffstream run`` on Kafka.

    .venv/bin/python benchmarks/bench_stream.py [--bootstrap-servers B] [--sizes 2048 4096]
        [--workers 1 2] [--events 6] [--distinct 2] [--exactly-once] [--work DIR]

For each image size and worker count: simulate ``--distinct`` pairs (cached under
``--work``), start the workers as subprocesses (``python -m stream.cli.main run``) in one consumer
group on an input topic with one partition per worker, warm each worker up with one event,
then run ``--events`` events *closed loop*: every partition has exactly one event in flight,
and the next is published the moment the previous one's last alert arrives.  So the figures
are the service's own, without a queue in front of it:

- events/s: events / (last alert received - first event published);
- latency: event ``producedAt`` -> the bench consumer receives the event's last alert
  (p50, p99; with few events p99 is close to the maximum);
- pipeline: the median ``imageDifference`` wall time from the summaries.

Without ``--bootstrap-servers`` a private broker is started with compose/kafka-local.sh.
Timing never gates a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import (  # noqa: E402
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

_COORDINATOR_CODES = {
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.GROUP_ID_NOT_FOUND,
}  # fmt: skip

from diffstream.stream.transport.events import encode_event, make_event, now_ms  # noqa: E402
from diffstream.stream.transport.records import decode_summary  # noqa: E402

WAIT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(state: Path) -> tuple[str, dict]:
    port = free_port()
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(free_port()),
           "KAFKA_LOCAL_DIR": str(state), "PYTHON": sys.executable}  # fmt: skip
    subprocess.run(["bash", str(ROOT / "compose/kafka-local.sh"), "start"], env=env, check=True,
                   timeout=900)  # fmt: skip
    return f"127.0.0.1:{port}", env


def make_pairs(work: Path, size: int, n: int) -> list[tuple[Path, Path]]:
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    out = []
    for i in range(n):
        d = work / f"pairs-{size}" / f"{i:02d}"
        if not (d / "template.fits").exists():
            t = time.perf_counter()
            write_pair(simulate_pair(seed=500 + i, shape=(size, size)), d, truth_csv=False)
            print(f"  simulated {size}x{size} pair {i} in {time.perf_counter() - t:.1f} s")
        out.append((d / "science.fits", d / "template.fits"))
    return out


class Run:
    """One (size, workers) measurement."""

    def __init__(self, args, bootstrap: str, work: Path, pairs, n_workers: int) -> None:
        self.args, self.bootstrap, self.work, self.pairs = args, bootstrap, work, pairs
        self.n = n_workers
        stem = uuid.uuid4().hex[:8]
        self.topics = {k: f"bench-{k}-{stem}" for k in ("input", "alerts", "dlq", "metadata")}
        self.group = f"bench-{stem}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        parts = {"input": n_workers, "alerts": 3, "dlq": 1, "metadata": 1}
        futures = admin.create_topics([NewTopic(self.topics[k], p, 1) for k, p in parts.items()])
        for f in futures.values():
            f.result(timeout=60)
        self.admin = admin
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{stem}-read",
                                  "enable.auto.commit": False,
                                  "isolation.level": "read_committed"})  # fmt: skip
        ends = [TopicPartition(self.topics[k], p, OFFSET_END)
                for k in ("alerts", "metadata") for p in range(parts[k])]  # fmt: skip
        self.consumer.assign(ends)
        self.procs: list[subprocess.Popen] = []
        self.counter = 0
        self.pending: dict[str, dict] = {}  # requestId -> state
        self.done: list[dict] = []

    def start_workers(self) -> None:
        t = self.topics
        for i in range(self.n):
            cmd = [sys.executable, "-m", "diffstream.stream.cli.main", "run", "--bootstrap-servers",
                   self.bootstrap, "--input-topic", t["input"], "--output-topic", t["alerts"],
                   "--dlq-topic", t["dlq"], "--metadata-topic", t["metadata"], "--group-id",
                   self.group, "--data-root", str(self.work), "--instance-id", f"b{i}",
                   *(["--exactly-once"] if self.args.exactly_once else [])]  # fmt: skip
            log = (self.work / f"worker-{self.group}-{i}.log").open("wb")
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                d = self.admin.describe_consumer_groups([self.group])[self.group].result(30)
            except KafkaException as exc:
                # Right after the broker starts, or before the group exists, the coordinator
                # may still be loading or elsewhere: ask again until the deadline.
                err = exc.args[0]
                if not (err.retriable() or err.code() in _COORDINATOR_CODES):
                    raise
                time.sleep(0.2)
                continue
            if len(d.members) == self.n and all(m.assignment.topic_partitions for m in d.members):
                return
            time.sleep(0.2)
        raise RuntimeError("the worker group did not form")

    def pair_for(self, counter: int) -> tuple[Path, Path]:
        return self.pairs[counter % len(self.pairs)]

    def publish(self, partition: int) -> None:
        sci, tmpl = self.pair_for(self.counter)
        rid = f"bench-{self.counter}"
        ev = make_event(str(sci), str(tmpl), visit=self.counter, detector=0,
                        exposure_id=10_000 + self.counter, request_id=rid)  # fmt: skip
        self.pending[rid] = {"partition": partition, "produced": ev["producedAt"], "alerts": 0,
                             "expected": None, "last": None, "pipeline": None}  # fmt: skip
        self.producer.produce(self.topics["input"], value=encode_event(ev), partition=partition)
        self.producer.flush(30)
        self.counter += 1

    def _complete(self, rid: str) -> bool:
        st = self.pending[rid]
        return st["expected"] is not None and st["alerts"] >= st["expected"]

    def wait_one(self) -> dict:
        """Poll until some pending event is complete; returns its record."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            now = now_ms()
            if msg.topic() == self.topics["metadata"]:
                s = decode_summary(msg.value())
                st = self.pending.get(s["requestId"])
                if st is None:
                    continue
                st["expected"] = s["nAlerts"]
                st["pipeline"] = s["timings"].get("imageDifference")
                # The pipeline's own CPU seconds (all threads, process_time around the run) and
                # its thread count: what the worker spends outside the pipeline is the rest.
                full = json.loads(s["taskMetadataJson"] or "{}")
                st["pipeline_cpu"] = full.get("steps", {}).get("imageDifference", {}).get("cpuTime")
                st["threads"] = full.get("fullMetadata", {}).get("imageDifference.threads")
                st["last"] = st["last"] or now
                rid = s["requestId"]
            else:
                rid = dict(msg.headers() or []).get("diffstream.requestId", b"").decode()
                st = self.pending.get(rid)
                if st is None:
                    continue
                st["alerts"] += 1
                st["last"] = now
            if self._complete(rid):
                st = self.pending.pop(rid)
                st["latency_s"] = (st["last"] - st["produced"]) / 1000.0
                return st
        raise RuntimeError(f"no event completed within {WAIT_S} s")

    def warm_up(self) -> None:
        """One event per worker: numba cache load, first FFT plans, connections."""
        for p in range(self.n):
            self.publish(p)
        for _ in range(self.n):
            self.wait_one()

    def closed_loop(self, n_events: int) -> dict:
        """``n_events`` events, one in flight per partition: rate and latencies."""
        t0 = time.monotonic()
        sent = 0
        for p in range(min(self.n, n_events)):
            self.publish(p)
            sent += 1
        results = []
        while len(results) < n_events:
            st = self.wait_one()
            results.append(st)
            if sent < n_events:
                self.publish(st["partition"])
                sent += 1
        elapsed = time.monotonic() - t0
        lat = sorted(r["latency_s"] for r in results)
        return {
            "events": n_events,
            "events_per_s": n_events / elapsed,
            "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
            "pipeline": statistics.median(r["pipeline"] or 0.0 for r in results),
            "alerts": statistics.median(r["expected"] for r in results),
            "pipeline_cpu": sum(r.get("pipeline_cpu") or 0.0 for r in results),
            "threads": sorted({r.get("threads") for r in results} - {None}),
        }

    def measure(self, n_events: int) -> dict:
        self.warm_up()
        return self.closed_loop(n_events)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
        self.consumer.close()
        self.admin.delete_topics(list(self.topics.values()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap-servers")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--events", type=int, default=6)
    ap.add_argument("--distinct", type=int, default=2, help="distinct pairs per size")
    ap.add_argument("--exactly-once", action="store_true")
    ap.add_argument("--work", default=None, help="cache dir for the simulated pairs")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    broker_env = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        bootstrap, broker_env = start_broker(work / "kafka")
    rows = []
    try:
        for size in args.sizes:
            pairs = make_pairs(work, size, args.distinct)
            for n in args.workers:
                run = Run(args, bootstrap, work, pairs, n)
                try:
                    run.start_workers()
                    r = run.measure(args.events)
                finally:
                    run.close()
                rows.append((size, n, r))
                print(f"  {size}x{size}, {n} worker(s): {r['events_per_s']:.3f} events/s, "
                      f"latency p50 {r['p50']:.2f} s p99 {r['p99']:.2f} s", flush=True)  # fmt: skip
    finally:
        if broker_env is not None:
            subprocess.run(["bash", str(ROOT / "compose/kafka-local.sh"), "stop"],
                           env=broker_env, check=False, timeout=120)  # fmt: skip
    mode = "exactly-once" if args.exactly_once else "at-least-once"
    print(f"\nstream benchmark ({mode}, {os.cpu_count()} CPUs, closed loop: one event in flight "
          f"per worker)")  # fmt: skip
    print(f"{'size':>11} {'workers':>7} {'events':>6} {'events/s':>9} {'lat p50 s':>9} "
          f"{'lat p99 s':>9} {'pipeline s':>10} {'alerts/ev':>9}")  # fmt: skip
    for size, n, r in rows:
        print(f"{size:>5}x{size:<5} {n:>7} {r['events']:>6} {r['events_per_s']:>9.3f} "
              f"{r['p50']:>9.2f} {r['p99']:>9.2f} {r['pipeline']:>10.2f} "
              f"{r['alerts']:>9.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
