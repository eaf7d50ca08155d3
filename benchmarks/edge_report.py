"""What the image edge does to real differences, under each ZOGY edge rule (Settings.zogy_edges).

    .venv/bin/python benchmarks/edge_report.py [--rules none all light] [--margin 22]

The real DECam exposures (tests/data/real/) are subtracted within an epoch (18c - 18d, ...,
04d - 04c: the sky is the same, so a detection is a real change or an artefact) and across
epochs (the report's pairings), as ``diffstream subtract --allow-uncalibrated`` runs them.
For each rule it prints the valid fraction of the difference and every detection within
``--margin`` px of an image edge, with its sign and S/N, so that a person can tell a static
star cut by the edge (a residual: under "none" only) from light in one image (a trail, a
transient: a real difference, which "light" keeps and "all" drops).  A source seen in every
pairing with one exposure, with the sign that exposure gives it, is that exposure's own.
Timing never matters here; the figures go into the notes of issue 12.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "real"
SAME_EPOCH = ["18c-18d", "18d-18e", "18c-18e", "18d-18c",
              "04c-04d", "04d-04e", "04c-04e", "04d-04c"]  # fmt: skip
ACROSS = ["18c-04c", "18d-04d", "18c-04d", "18d-04c", "18e-04c", "18e-04d", "18c-04e", "18d-04e"]


def run(pair: str, rule: str):
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.subtract import subtract_files

    s, t = pair.split("-")
    settings = Settings(allow_uncalibrated=True, zogy_edges=rule)
    return subtract_files(str(DATA / f"DEC-OBS{s}.fits"), str(DATA / f"DEC-OBS{t}.fits"),
                          settings=settings, exposure_id=1)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", nargs="+", default=["none", "all", "light"])
    ap.add_argument("--margin", type=float, default=22.0, help="px from an edge")
    args = ap.parse_args(argv)
    for label, pairs in (("within an epoch", SAME_EPOCH), ("across epochs", ACROSS)):
        print(f"\n{label}: {' '.join(pairs)}")
        for rule in args.rules:
            edge, total, valid, rows = 0, 0, [], []
            for pair in pairs:
                res = run(pair, rule)
                ny, nx = res.zogy.valid.shape
                valid.append(float(res.zogy.valid.mean()))
                total += len(res.dia_sources)
                for a in res.dia_sources:
                    if min(a["x"], a["y"], nx - 1 - a["x"], ny - 1 - a["y"]) >= args.margin:
                        continue
                    edge += 1
                    snr = a["psfFlux"] / a["psfFluxErr"] if a["psfFluxErr"] else np.nan
                    rows.append(f"{pair} ({a['x']:.0f},{a['y']:.0f}) S/N {snr:+.0f}")
            print(f"  {rule:>5}: valid {np.mean(valid):.3f} (min {min(valid):.3f}); "
                  f"{total} detections, {edge} within {args.margin:g} px of an edge")  # fmt: skip
            for r in rows:
                print(f"         {r}")


if __name__ == "__main__":
    main()
