"""Print the science acceptance figures (issue 3) that tests/science asserts on.

    .venv/bin/python benchmarks/science_report.py [--method zogy|al]

The same seeded 1024^2 pools as tests/science/test_zogy_science.py (3 seeds per case, 4
pure-noise pairs): completeness per S/N bin, false positives, PSF-flux bias, noise pulls,
fading variables.  The tests assert the thresholds; this prints the numbers for a PR note.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(d: Path, seed: int, case: str, method: str, transients: bool = True):
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.simulate import simulate_pair, write_pair
    from tests.science.acceptance import CASES

    pair = simulate_pair(seed=seed, shape=(1024, 1024), transients=transients, **CASES[case])
    sci, tmpl = write_pair(pair, d / f"{case}-{seed}-{int(transients)}")
    result = subtract_files(str(sci), str(tmpl), settings=Settings(method=method),
                            exposure_id=seed)  # fmt: skip
    return pair, result


def report(method: str, d: Path) -> None:
    from tests.science.acceptance import CASES, NOISE_SEEDS, SEEDS, completeness
    from tests.science.truth import match_truth

    for case in CASES:
        rows, n_false = [], []
        for seed in SEEDS:
            pair, result = _run(d, seed, case, method)
            hit = match_truth(result, pair.truth)
            for i in range(len(pair.truth["x"])):
                rows.append({
                    "kind": pair.truth["kind"][i],
                    "flux": float(pair.truth["flux_diff_njy"][i]),
                    "snr": float(pair.truth["snr_expected"][i]),
                    "src": result.dia_sources[hit[i]] if hit[i] >= 0 else None,
                })  # fmt: skip
            n_false.append(len(result.dia_sources) - len(set(hit[hit >= 0].tolist())))
        noise = sum(len(_run(d, s, case, method, False)[1].dia_sources) for s in NOISE_SEEDS)
        mpix = len(NOISE_SEEDS) * 1024 * 1024 / 1e6
        bright = [r for r in rows if r["src"] is not None and r["snr"] > 20]
        bias = np.median([r["src"]["psfFlux"] / r["flux"] for r in bright]) - 1.0
        found = [r for r in rows if r["src"] is not None]
        pulls = np.array([(r["src"]["psfFlux"] - r["flux"]) / r["src"]["psfFluxErr"]
                          for r in found])  # fmt: skip
        q75, q25 = np.percentile(pulls, [75, 25])
        fading = [r for r in found if r["kind"] == "fading"]
        print(f"\n{method} {case}")
        for lo, hi in ((5, 7), (7, 10), (10, np.inf)):
            k, n = completeness(rows, lo, hi)
            print(f"  completeness S/N {lo}-{hi}: {k}/{n}")
        print(f"  false positives per pair ({len(rows) / len(SEEDS):.0f} injected): {n_false}")
        print(f"  pure noise: {noise} on {mpix:.2f} Mpix = {noise / mpix:.2f} per Mpix")
        print(f"  PSF-flux bias at S/N > 20: {bias:+.2%} ({len(bright)} sources)")
        print(f"  pulls: median {np.median(pulls):+.2f}, robust std {(q75 - q25) / 1.349:.3f}")
        neg = sum(bool(r["src"]["isNegative"]) for r in fading)
        print(f"  fading variables isNegative: {neg}/{len(fading)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["zogy", "al"], default="zogy")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        report(args.method, Path(d))


if __name__ == "__main__":
    main()
