"""Start-up benchmark (issue 17): the fixed cost of a fresh ``diffstream`` process.

    .venv/bin/python benchmarks/bench_startup.py [--rounds 5] [--bootstrap-servers B] [--work DIR]

Two figures, each against the same round's baseline, a fresh interpreter that only does
``import numpy, scipy.fft, astropy.io.fits, astropy.wcs, numba, sep, fastavro``:

- ``subtract`` overhead: the wall time of ``diffstream subtract`` on a simulated 1k x 1k pair
  minus the run's own ``totalWallTime`` (metadata.json): imports, argument parsing, the Numba
  cache loads the run does not time, writing the products, interpreter exit.
- ``run`` start-up: from spawning ``diffstream run`` to its ``assigned [...]`` log line (the
  first poll with partitions assigned), on the broker given, or on one started here with
  compose/kafka-local.sh.  It includes the warm-up exposure a worker runs before subscribing.

The Numba cache is warmed by one untimed ``subtract`` first, and the package's modules are
compiled to bytecode first, as installing a wheel does (``--no-compile``: not): an editable
install never writes them, and under ``PYTHONDONTWRITEBYTECODE=1`` (set on the CI-like hosts)
every process would compile ~120 of our modules from source, ~0.3 s that no installed worker
pays.  Rounds alternate baseline and
measured commands so that a busy host slows both; the table gives every round, the median and
the spread.  Timing never gates a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stream import ROOT, make_pairs, start_broker  # noqa: E402

BASELINE = "import numpy, scipy.fft, astropy.io.fits, astropy.wcs, numba, sep, fastavro"
DIFFSTREAM = [sys.executable, "-m", "diffstream"]
ASSIGN_TIMEOUT_S = 120.0


PACKAGE_DIRS = ("diffstream", "stream", "jitcore", "schemas")


def compile_bytecode(compile_: bool) -> None:
    """Our modules' .pyc files, as ``pip install`` of a wheel writes them; or, with
    ``compile_`` False, none (removed, so that the figure is what it says)."""
    import compileall

    for name in PACKAGE_DIRS:
        if compile_:
            compileall.compile_dir(str(ROOT / name), quiet=1)
        else:
            for pyc in (ROOT / name).rglob("__pycache__/*.pyc"):  # not Numba's .nbi/.nbc
                pyc.unlink()


def baseline_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BASELINE], check=True)
    return time.perf_counter() - t0


def subtract_overhead_s(sci: Path, tmpl: Path, out: Path) -> tuple[float, float]:
    """(wall, the run's own totalWallTime) of one ``diffstream subtract``."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([*DIFFSTREAM, "subtract", str(sci), str(tmpl), "--out", str(out),
                    "--exposure-id", "5"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - t0
    meta = json.loads((out / "metadata.json").read_text())
    return wall, float(meta["totalWallTime"])


def create_topics(bootstrap: str, stem: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    topics = {k: f"bench-start-{k}-{stem}" for k in ("input", "alerts", "dlq", "metadata")}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
    for f in futures.values():
        f.result(60)
    return topics


def run_startup_s(bootstrap: str, root: Path, topics: dict[str, str], group: str) -> float:
    """Seconds from spawning ``diffstream run`` to its ``assigned`` log line."""
    cmd = [*DIFFSTREAM, "run", "--bootstrap-servers", bootstrap, "--input-topic",
           topics["input"], "--output-topic", topics["alerts"], "--dlq-topic", topics["dlq"],
           "--metadata-topic", topics["metadata"], "--group-id", group, "--data-root",
           str(root), "--ledger-topic", ""]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if " assigned [" in line or '"assigned [' in line:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > ASSIGN_TIMEOUT_S:
                break
        raise RuntimeError(f"diffstream run never reported an assignment (rc {proc.poll()})")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _row(name: str, values: list[float], base: list[float]) -> str:
    ratios = [v / b for v, b in zip(values, base, strict=True)]
    runs = ", ".join(f"{v:.2f}" for v in values)
    return (f"{name:<22} median {statistics.median(values):5.2f} s (runs {runs}); "
            f"median {statistics.median(ratios):.2f}x the same round's baseline "
            f"(ratios {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bootstrap-servers", help="broker for the run start-up (default: start one)")
    ap.add_argument("--no-kafka", action="store_true", help="only the subtract overhead")
    ap.add_argument("--work", default=None, help="cache dir for the simulated pair")
    ap.add_argument("--no-compile", action="store_true", help="do not compile our bytecode first")
    args = ap.parse_args()
    compile_bytecode(not args.no_compile)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    ((sci, tmpl),) = make_pairs(work, 1024, 1)
    out = work / "out"
    subtract_overhead_s(sci, tmpl, out)  # warms the Numba cache; untimed
    bootstrap, broker_env = args.bootstrap_servers, None
    if not args.no_kafka and not bootstrap:
        bootstrap, broker_env = start_broker(work / "kafka")
    base_sub, over, base_run, start = [], [], [], []
    try:
        stem = uuid.uuid4().hex[:8]
        topics = create_topics(bootstrap, stem) if bootstrap else {}
        for i in range(args.rounds):
            base_sub.append(baseline_s())
            wall, own = subtract_overhead_s(sci, tmpl, out)
            over.append(wall - own)
            if bootstrap:
                base_run.append(baseline_s())
                start.append(run_startup_s(bootstrap, work, topics, f"bench-start-{stem}-{i}"))
            print(f"  round {i + 1}: baseline {base_sub[-1]:.2f} s, subtract overhead "
                  f"{over[-1]:.2f} s (wall {wall:.2f} - run {own:.2f})"
                  + (f", run start-up {start[-1]:.2f} s" if start else ""), flush=True)  # fmt: skip
    finally:
        if broker_env is not None:
            subprocess.run(["bash", str(ROOT / "compose/kafka-local.sh"), "stop", "--wipe"],
                           env=broker_env, check=False, timeout=120)  # fmt: skip
    load = os.getloadavg()[0]
    pyc = "source compiled per process" if args.no_compile else "bytecode compiled"
    print(f"\nstart-up, {args.rounds} rounds, warm Numba cache, {pyc}, load average "
          f"{load:.1f}, {os.cpu_count()} CPUs")  # fmt: skip
    print(_row("baseline imports", base_sub, base_sub))
    print(_row("subtract overhead", over, base_sub))
    if start:
        print(_row("run start-up", start, base_run))
    print("targets (issue 17): subtract overhead <= 1.5x the baseline; run start-up <= 3 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
