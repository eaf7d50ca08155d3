"""``diffstream demo``: the embedded default, no Kafka needed.

Simulates a seeded science/template pair (stars, transients, variables, cosmic rays, bad
columns, a rotated and offset deeper template), writes them as LSST-style FITS, runs the
same ``subtract`` the CLI and the stream run, and prints what was found against the truth.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffstream.stream.ops.settings import Settings


def _found(result, truth, *, radius: float = 2.0) -> np.ndarray:
    """For the printed summary only: the index of a diaSource within ``radius`` px of each
    injected source, or -1 (the science tests' own matcher is tests/science/truth.py)."""
    hit = np.full(len(truth["x"]), -1)
    if len(result.dia_sources) == 0:
        return hit
    xy = np.array([[s["x"], s["y"]] for s in result.dia_sources])
    for i, (x, y) in enumerate(zip(truth["x"], truth["y"], strict=True)):
        d2 = (xy[:, 0] - x) ** 2 + (xy[:, 1] - y) ** 2
        k = int(np.argmin(d2))
        if d2[k] <= radius * radius:
            hit[i] = k
    return hit


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate, then run the stream worker over the directory transport (the embedded
    default: the same Worker as ``diffstream run`` on Kafka; only the transport differs)."""
    from diffstream.stream.cli.summary import print_summary
    from diffstream.stream.pipeline.products import write_products
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.simulate import simulate_pair, write_pair
    from diffstream.stream.transport.directory import DirTransport, write_event_file
    from diffstream.stream.transport.events import make_event
    from diffstream.stream.transport.service import Worker, run_loop

    out = Path(args.out).resolve()
    if settings.apdb is None:  # the embedded APDB: diaObjects and histories in a file
        settings = settings.model_copy(update={"apdb": f"sqlite:///{out / 'apdb.sqlite3'}"})
        print(f"APDB: {settings.apdb}")
    inputs = out / "inputs"
    events = out / "events"
    for d in (inputs, events):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pair = simulate_pair(seed=args.seed, shape=(args.size, args.size))
    sci_path, tmpl_path = write_pair(pair, inputs)
    print(f"simulated {args.size}x{args.size} pair (seed {args.seed}) in "
          f"{time.perf_counter() - t0:.1f} s: {sci_path}, {tmpl_path}")  # fmt: skip

    sim = pair.science
    event = make_event(
        str(sci_path), str(tmpl_path), visit=sim.visit, detector=sim.detector,
        exposure_id=args.seed, band=sim.band,
    )  # fmt: skip
    write_event_file(events / f"visit{sim.visit}-det{sim.detector}.avro", [event])
    print(f"exposure-ready event written to {events}")

    # The worker's subtract step also writes the offline products (difference.fits, ...).
    kept: dict[str, Any] = {}

    def subtract_and_write(*a, **kw):
        result = subtract_files(*a, **kw)
        kept["paths"] = write_products(result, out)
        kept["result"] = result
        return result

    settings = settings.model_copy(update={"data_roots": [str(out)]})
    worker = Worker(settings, subtract=subtract_and_write, worker="demo")
    transport = DirTransport(events, out / "stream")
    try:
        stats = run_loop(worker, transport, exit_when_idle=0.5)
    finally:
        transport.close()
    print(f"stream worker (directory transport): {stats.line()}")
    if "result" not in kept:
        print(f"no result: see {out / 'stream'} (summaries, dead letters)")
        return 1
    result = kept["result"]
    paths = dict(kept["paths"])
    paths["stream"] = out / "stream"
    print_summary(result, paths)

    truth = pair.truth
    hit = _found(result, truth)
    snr = np.asarray(truth["snr_expected"])
    print("against the simulator's truth (injected difference sources):")
    print("  true S/N   injected  found  completeness")
    for lo, hi in [(5, 7), (7, 10), (10, 20), (20, np.inf)]:
        sel = (snr >= lo) & (snr < hi)
        n = int(sel.sum())
        k = int((hit[sel] >= 0).sum())
        label = f"{lo}-{hi}" if np.isfinite(hi) else f">={lo}"
        frac = f"{k / n:.2f}" if n else "-"
        print(f"  {label:<9} {n:>9} {k:>6}  {frac:>12}")
    matched = set(hit[hit >= 0].tolist())
    extra = len(result.dia_sources) - len(matched)
    print(f"  detections not matching an injected source: {extra}")
    return 0
