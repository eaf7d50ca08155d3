"""Benchmark: Alard-Lupton subtraction beside ZOGY on a simulated 4k x 4k pair.

    .venv/bin/python benchmarks/bench_al.py [--size 4096] [--repeat 2] [--seed 7]

One process, one seeded pair from stream.sim.simulate (rotated, offset, deeper template; PSFs
varying over the field), written as FITS.  Three measurements:

1. the pipeline end to end (``subtract_files``: load, warp, PSFs, subtraction, detection,
   measurement, alerts) with ZOGY and with AL (the subtraction step swapped by a monkeypatch
   of ``diffstream.stream.pipeline.subtract.zogy`` until the pipeline has its ``method`` switch);
2. the subtraction call alone, :func:`jitcore.zogy.zogy` vs :func:`jitcore.alardlupton.
   al_subtract`, on the very arrays the pipeline passed to it, with workers None (1 thread)
   and -1 (all cores); min over ``--repeat`` runs, after a warm-up (Numba JIT excluded);
3. AL's stages (star selection, stamp normal equations, fit, kernel application, variance,
   decorrelation) from one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import diffstream.stream.pipeline.subtract as pipeline
from diffstream.jitcore import alardlupton
from diffstream.jitcore.alardlupton import al_subtract
from diffstream.jitcore.zogy import zogy
from diffstream.stream.ops.settings import Settings
from diffstream.stream.sim.simulate import simulate_pair, write_pair


def _timed(stages: dict[str, float], name: str, fn):
    def run(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            stages[name] += time.perf_counter() - t0

    return run


def main() -> None:
    from diffstream.stream.ops.memory import configure_from_env

    # As the CLI does: freed arrays stay in the heap (stream/ops/memory.py); both the pipeline
    # and the reference run under it.
    print(f"keep freed memory (glibc mallopt): {configure_from_env()}")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    t0 = time.perf_counter()
    n_stars = int(400 * args.size**2 / 1024**2)
    pair = simulate_pair(seed=args.seed, shape=(args.size, args.size), n_stars=n_stars,
                         n_transients=60 * (args.size // 1024) ** 2,
                         n_variables=20 * (args.size // 1024) ** 2)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench_al_"))
    sci, tmpl = (str(p) for p in write_pair(pair, tmp))
    print(f"simulated {args.size}x{args.size} pair ({n_stars} stars) in "
          f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs")  # fmt: skip

    captured: dict = {}
    real_zogy = pipeline.zogy

    def capture(*a, **k):
        captured["args"], captured["kwargs"] = a, k
        return real_zogy(*a, **k)

    def al_as_zogy(s, sv, t, tv, bad, ps, pt, *, workers=None, psf_error_fraction=0.0, **_):
        return al_subtract(s, sv, t, tv, bad, ps, pt, workers=workers,
                           psf_error_fraction=psf_error_fraction)[0]  # fmt: skip

    settings = Settings()
    rows = []
    for method, fn in (("zogy", capture), ("al", al_as_zogy)):
        pipeline.zogy = fn
        try:
            best, n_src, step = float("inf"), 0, 0.0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = pipeline.subtract_files(sci, tmpl, settings=settings, exposure_id=1)
                dt = time.perf_counter() - t0
                if dt < best:
                    best, n_src = dt, len(res.dia_sources)
                    step = res.metadata.timings().get("imageDifference.zogy", float("nan"))
        finally:
            pipeline.zogy = real_zogy
        rows.append((f"pipeline end to end, {method}", best, f"subtraction step {step:.2f} s, "
                     f"{n_src} diaSources"))  # fmt: skip

    a, k = captured["args"], captured["kwargs"]
    s, sv, t, tv, bad, ps, pt = a
    for workers in (None, -1):
        kz = dict(k, workers=workers)
        for name, call in (
            ("zogy()", lambda kz=kz: zogy(*a, **kz)),
            ("al_subtract()", lambda w=workers: al_subtract(
                s, sv, t, tv, bad, ps, pt, workers=w,
                psf_error_fraction=k.get("psf_error_fraction", 0.0))),
        ):  # fmt: skip
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = call()
                times.append(time.perf_counter() - t0)
            extra = ""
            if name == "al_subtract()":
                info = out[1]
                extra = (f"{info.direction}, {info.n_stars_used}/{info.n_stars_found} stars, "
                         f"kernel {info.kernel_size}px")  # fmt: skip
            rows.append((f"{name} workers={workers}", min(times), extra))

    stages: dict[str, float] = defaultdict(float)
    names = ("select_kernel_stars", "stamp_systems", "fit_kernel", "convolve_spatial",
             "convolve_spatial_variance", "decorrelate")  # fmt: skip
    saved = {n: getattr(alardlupton, n) for n in names}
    try:
        for n in names:
            setattr(alardlupton, n, _timed(stages, n, saved[n]))
        t0 = time.perf_counter()
        al_subtract(s, sv, t, tv, bad, ps, pt, workers=-1,
                    psf_error_fraction=k.get("psf_error_fraction", 0.0))  # fmt: skip
        total = time.perf_counter() - t0
    finally:
        for n in names:
            setattr(alardlupton, n, saved[n])
    for n in names:
        rows.append((f"  AL stage {n} (workers=-1)", stages[n], f"{stages[n] / total:.0%}"))

    print(f"\n{'what':<48} {'seconds':>8}  notes")
    print("-" * 100)
    for what, sec, note in rows:
        print(f"{what:<48} {sec:8.2f}  {note}")


if __name__ == "__main__":
    main()
