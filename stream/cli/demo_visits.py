"""``diffstream demo --visits N``: N visits of one field through the stream worker and the APDB.

The same stars, four variables and a transient appearing at visit 4 (stream/sim/sequence.py),
one event file per visit, the directory transport, the demo's SQLite APDB (or ``--apdb``);
then each true source's diaObject against the truth: detections, nDiaSources, and the last
alert's history (prvDiaSources / prvDiaForcedSources) against the true light curve.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from diffstream.stream.ops.settings import Settings

__all__ = ["run_visits_demo"]


def run_visits_demo(args: argparse.Namespace, settings: Settings) -> int:
    from diffstream.stream.alerts.packets import read_alert_file
    from diffstream.stream.pipeline.apdb.association import separation_arcsec
    from diffstream.stream.pipeline.apdb.store import Apdb
    from diffstream.stream.sim.sequence import simulate_sequence, write_sequence
    from diffstream.stream.transport.directory import DirTransport, write_event_file
    from diffstream.stream.transport.events import make_event
    from diffstream.stream.transport.service import Worker, run_loop

    out = Path(args.out).resolve()
    events = out / "events"
    events.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seq = simulate_sequence(seed=args.seed, n_visits=args.visits, shape=(args.size, args.size))
    template, visits = write_sequence(seq, out / "inputs")
    for v, path in enumerate(visits):
        event = make_event(
            str(path), str(template), visit=seq.visits[v].visit, detector=seq.visits[v].detector,
            exposure_id=args.seed * 1000 + v, band=seq.visits[v].band,
        )  # fmt: skip
        write_event_file(events / f"visit{v:03d}.avro", [event])
    print(f"simulated {args.visits} visits of one {args.size}x{args.size} field in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

    settings = settings.model_copy(update={"data_roots": [str(out)]})
    worker = Worker(settings, worker="demo")
    transport = DirTransport(events, out / "stream")
    try:
        stats = run_loop(worker, transport, exit_when_idle=0.5)
    finally:
        transport.close()
    print(f"stream worker (directory transport): {stats.line()}")
    db = Apdb(settings.apdb or f"sqlite:///{out / 'apdb.sqlite3'}")
    print(f"APDB {db.safe_url}: {db.stats()}")
    alerts = [
        a
        for f in sorted((out / "stream" / "alerts").glob("*.avro"))
        for a in _alerts(f, read_alert_file)
    ]
    truth = seq.truth
    print(f"{'kind':<10} {'diaObjectId':>14} {'detected':>8} {'nDiaSources':>11} "
          f"{'prv':>4} {'prvForced':>9} {'max |pull|':>10}")  # fmt: skip
    for k, kind in enumerate(truth["kind"]):
        near = [
            a for a in alerts
            if separation_arcsec(truth["ra"][k], truth["dec"][k], a["diaSource"]["ra"],
                                 a["diaSource"]["dec"]) < 1.0
        ]  # fmt: skip
        if not near:
            print(f"{kind:<10} {'-':>14} {0:>8}")
            continue
        last = max(near, key=lambda a: a["diaSource"]["midpointMjdTai"])
        obj = last["diaObject"]
        mjd0 = seq.visits[0].mjd_mid
        cadence = (seq.visits[1].mjd_mid - mjd0) if len(seq.visits) > 1 else 1.0
        pulls = [
            (r["psfFlux"] - truth["flux"][k, round((r["midpointMjdTai"] - mjd0) / cadence)])
            / r["psfFluxErr"]
            for r in last["prvDiaForcedSources"]
            if r["psfFlux"] is not None
        ]
        worst = f"{np.max(np.abs(pulls)):.2f}" if pulls else "-"
        print(f"{kind:<10} {obj['diaObjectId']:>14} {len(near):>8} {obj['nDiaSources']:>11} "
              f"{len(last['prvDiaSources']):>4} {len(last['prvDiaForcedSources']):>9} "
              f"{worst:>10}")  # fmt: skip
    return 0


def _alerts(path: Path, reader) -> list[dict]:
    try:
        return list(reader(path))
    except ValueError:  # summaries and dead letters share the folder
        return []
