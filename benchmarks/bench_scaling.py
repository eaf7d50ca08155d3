"""Scaling benchmark: N workers in one consumer group on the local broker.

    .venv/bin/python benchmarks/bench_scaling.py [--bootstrap-servers B] [--size 4096]
        [--workers 1 2] [--events 8] [--distinct 2] [--work DIR] [--cpus-per-worker N]
        [--repeat-science]

Each worker is a ``diffstream run`` process in one consumer group on an input topic with one
partition per worker.  By default nothing sets its CPUs: each worker's thread count is chosen
automatically (its CPUs, affinity and cgroup quota, shared among the ``run`` workers on the
same CPUs: stream/ops/cpus.py ``HostShare``).  ``--cpus-per-worker 1`` sets ``DIFFSTREAM_CPUS=1``
in each worker instead (the operator knob; this benchmark's setting before issue 17).  The
load is the closed loop of ``bench_stream.py`` (each partition has one event in flight), so
the figures are the service's own:

- CCDs/s: events / (last alert received - first event published);
- core-seconds per CCD: the CPU time the workers consumed during the measured events
  (utime + stime from /proc), divided by the events -- measured, not N / rate; split into the
  pipeline's own CPU (``imageDifference`` cpuTime in each event's task metadata) and the rest
  (event decoding, alert encoding and produce, summaries, commits, the Kafka clients' threads);
- event-to-alert latency p50 / p99;
- cores for LSST: 189 CCDs per ~39 s visit (4.85 CCD/s) times the core-seconds per CCD.

Timing never gates a test.  The machine is shared: run it twice and give the spread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stream import ROOT, Run, make_pairs, start_broker  # noqa: E402

LSST_CCDS_PER_S = 189 / 39.0
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its reaped children, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is fields[0]; utime, stime, cutime, cstime are 11-14.
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK


class ScalingRun(Run):
    """bench_stream's Run, optionally with ``DIFFSTREAM_CPUS`` set in every worker, and with
    a science file of its own for every event (a copy), as a survey's exposures are: a worker
    remembers the checksum of a file it has read before (stream/io/fitsread.py), which is
    right for the template it sees again and again but would flatter the science side."""

    def fresh_copies(self, n: int) -> None:
        self.fresh: list[Path] = []
        if self.args.repeat_science:
            return
        folder = self.work / f"fresh-{self.group}"
        folder.mkdir()
        for i in range(n):
            sci, _ = self.pairs[i % len(self.pairs)]
            self.fresh.append(folder / f"science-{i:03d}.fits")
            shutil.copyfile(sci, self.fresh[-1])

    def pair_for(self, counter: int) -> tuple[Path, Path]:
        sci, tmpl = super().pair_for(counter)
        return (self.fresh[counter] if self.fresh else sci), tmpl

    def close(self) -> None:
        super().close()
        if self.fresh:
            shutil.rmtree(self.fresh[0].parent, ignore_errors=True)

    def start_workers(self) -> None:
        cpus = self.args.cpus_per_worker
        old = os.environ.pop("DIFFSTREAM_CPUS", None)  # the automatic choice unless asked
        if cpus is not None:
            os.environ["DIFFSTREAM_CPUS"] = str(cpus)  # inherited by the worker processes
        try:
            super().start_workers()
        finally:
            os.environ.pop("DIFFSTREAM_CPUS", None)
            if old is not None:
                os.environ["DIFFSTREAM_CPUS"] = old

    def measure(self, n_events: int) -> dict:
        # One warm-up event per worker, then the CPU clock of the workers is read around the
        # measured events only.
        self.warm_up()
        before = sum(cpu_seconds(p.pid) for p in self.procs)
        result = self.closed_loop(n_events)
        used = sum(cpu_seconds(p.pid) for p in self.procs) - before
        result.update(ccds_per_s=result["events_per_s"], cpu_s=used,
                      core_s_per_ccd=used / n_events,
                      pipeline_core_s=result["pipeline_cpu"] / n_events)  # fmt: skip
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap-servers")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--distinct", type=int, default=2, help="distinct pairs")
    ap.add_argument("--work", default=None, help="cache dir for the simulated pairs")
    ap.add_argument(
        "--cpus-per-worker",
        type=int,
        default=None,
        help="DIFFSTREAM_CPUS of each worker (default: unset, chosen automatically)",
    )
    ap.add_argument(
        "--repeat-science",
        action="store_true",
        help="reuse the science files (default: a fresh copy for every event)",
    )
    args = ap.parse_args()
    args.exactly_once = False
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    broker_env = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        bootstrap, broker_env = start_broker(work / "kafka")
    rows = []
    try:
        pairs = make_pairs(work, args.size, args.distinct)
        for n in args.workers:
            run = ScalingRun(args, bootstrap, work, pairs, n)
            try:
                run.fresh_copies(n + args.events)  # one warm-up event per worker
                run.start_workers()
                rows.append((n, run.measure(args.events)))
            finally:
                run.close()
            r = rows[-1][1]
            print(f"  {n} worker(s): {r['ccds_per_s']:.3f} CCD/s, "
                  f"{r['core_s_per_ccd']:.2f} core-s/CCD (pipeline {r['pipeline_core_s']:.2f}), "
                  f"threads {r['threads']}", flush=True)  # fmt: skip
    finally:
        if broker_env is not None:
            subprocess.run(["bash", str(ROOT / "compose/kafka-local.sh"), "stop"],
                           env=broker_env, check=False, timeout=120)  # fmt: skip
    given = args.cpus_per_worker
    cpus = "automatic" if given is None else f"DIFFSTREAM_CPUS={given}"
    print(f"\nscaling, {args.size}x{args.size} CCDs, CPUs per worker {cpus}, one consumer "
          f"group, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'workers':>7} {'threads':>7} {'CCDs':>5} {'CCD/s':>7} {'core-s/CCD':>10} "
          f"{'pipeline':>8} {'outside':>7} {'lat p50 s':>9} {'lat p99 s':>9} "
          f"{'cores for LSST':>14}")  # fmt: skip
    for n, r in rows:
        cores = LSST_CCDS_PER_S * r["core_s_per_ccd"]
        threads = ",".join(str(t) for t in r["threads"]) or "?"
        outside = r["core_s_per_ccd"] - r["pipeline_core_s"]
        print(f"{n:>7} {threads:>7} {r['events']:>5} {r['ccds_per_s']:>7.3f} "
              f"{r['core_s_per_ccd']:>10.2f} {r['pipeline_core_s']:>8.2f} {outside:>7.2f} "
              f"{r['p50']:>9.2f} {r['p99']:>9.2f} {cores:>14.0f}")  # fmt: skip
    print(
        "pipeline: its own CPU (imageDifference cpuTime); outside: decoding, encoding, "
        "produce, commits, Kafka threads"
    )
    print("cores for LSST: 189 CCDs per 39 s visit x core-seconds per CCD (no headroom)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
