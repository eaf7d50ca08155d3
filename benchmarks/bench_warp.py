"""Micro benchmark: the template warp (:func:`diffstream.jitcore.warp.warp_image_spline`, Lanczos).

    .venv/bin/python benchmarks/bench_warp.py [--size 4096] [--order 3] [--repeat 5]
        [--reference OLD_LANCZOS.py]

A synthetic float32 template (noise, a few masked pixels) is warped through a rotated,
slightly scaled and distorted map (like two visits' WCSs: runs of ~40 pixels share template
rows), the way stream.pipeline.warping.warp_template does: map_spline once, then the fused kernel,
on 1 thread and on all cores.  ``--reference`` takes another version of
jitcore/_kernels/lanczos.py (e.g. ``git show REV:jitcore/_kernels/lanczos.py > /tmp/old.py``)
and times it in the same process, alternating with the current one, and checks that both
give the same mask.  A lanczos.py from f019b83 or older imports row helpers that bspline.py
no longer has: save that revision's bspline.py beside it and import from there, e.g.
``git show f019b83:jitcore/_kernels/bspline.py > /tmp/ref/bspline_old.py`` and
``sed -i 's/diffstream.jitcore._kernels.bspline/bspline_old/' /tmp/ref/old.py``, then run
with ``PYTHONPATH=/tmp/ref``.  The plain SciPy reference is ``scipy.ndimage.map_coordinates`` (cubic
spline, image plane only) through the same map.  Prints the best of ``--repeat`` calls
after a warm-up (Numba's JIT cost excluded): wall seconds, ns per output pixel, ns per
pixel per thread, and the process's CPU seconds (best of the same calls).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

import diffstream.jitcore.warp as jw

NO_DATA, EDGE, BAD = 1 << 8, 1 << 4, 1 << 0


def _mapping(size: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    c, s = math.cos(math.radians(1.5)), math.sin(math.radians(1.5))

    def mapping(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, v = x - size / 2, y - size / 2
        quad = 2e-6 * (u * u - v * v) / size  # a few tenths of a pixel at the corners
        return (
            size / 2 + 30.0 + 1.0002 * (c * u - s * v) + quad,
            size / 2 + 20.0 + 1.0002 * (s * u + c * v),
        )

    return mapping


def _template(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    image = rng.normal(100.0, 10.0, size=(size, size)).astype(np.float32)
    variance = np.full_like(image, 100.0)
    mask = np.zeros(image.shape, dtype=np.int32)
    mask[rng.random(image.shape) < 1e-4] = BAD
    mask[rng.random(image.shape) < 1e-3] |= 1 << 3
    return image, variance, mask


def _load(path: str) -> ModuleType:
    # Registered under its file's stem: Numba's on-disk cache re-imports a kernel's module
    # by that name when it loads a cached kernel.
    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _without_blocks(kernel: Callable[..., None]) -> Callable[..., None]:
    """A lanczos_warp_spline from before the mask blocks (f019b83 and older) called the way
    warp_image_spline calls the current one: the blocks argument (4th) dropped."""
    if "blocks" in inspect.signature(kernel).parameters:
        return kernel

    def call(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, blocks: np.ndarray,
             *rest: object) -> None:  # fmt: skip
        kernel(image, variance, mask, *rest)

    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--step", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--reference", help="another jitcore/_kernels/lanczos.py to compare")
    args = ap.parse_args()

    image, variance, mask = _template(args.size)
    shape = (args.size, args.size)
    mapping = _mapping(args.size)
    jw.map_spline(mapping, shape, step=args.step)  # warm-up (scipy imports)
    t0 = time.perf_counter()
    spline = jw.map_spline(mapping, shape, step=args.step)
    t_map = time.perf_counter() - t0

    kernels = {"current": jw.lanczos_warp_spline}
    if args.reference:
        kernels["reference"] = _without_blocks(_load(args.reference).lanczos_warp_spline)
    current = jw.lanczos_warp_spline
    n_cores = os.cpu_count() or 1
    threads = sorted({1, n_cores})
    bits = {"no_data_bit": NO_DATA, "edge_bit": EDGE, "bad_bits": BAD, "order": args.order}

    def warp(name: str, workers: int) -> tuple[np.ndarray, ...]:
        # warp_image_spline's own checks and banding, with the kernel swapped in.
        jw.lanczos_warp_spline = kernels[name]
        try:
            return jw.warp_image_spline(image, variance, mask, spline, workers=workers, **bits)
        finally:
            jw.lanczos_warp_spline = current

    outs = {name: warp(name, 1) for name in kernels}  # warm-up: compile / load the cache
    if "reference" in outs:
        a, b = outs["current"], outs["reference"]
        same_mask = bool(np.array_equal(a[2], b[2]))
        fin = np.isfinite(b[0])
        diff = float(np.max(np.abs(a[0][fin] - b[0][fin]), initial=0.0))
        print(f"masks identical: {same_mask}; max |image difference|: {diff:.3g}")

    best = {(name, t): math.inf for name in kernels for t in threads}
    # CPU seconds of the process (all threads): on a shared host the wall time measures the
    # other processes as much as this one.
    best_cpu = dict(best)
    for _ in range(args.repeat):
        for t in threads:
            for name in kernels:  # alternating, so both see the same machine load
                t0 = time.perf_counter()
                c0 = time.process_time()
                warp(name, t)
                best_cpu[name, t] = min(best_cpu[name, t], time.process_time() - c0)
                best[name, t] = min(best[name, t], time.perf_counter() - t0)

    # The plain SciPy reference: scipy.ndimage.map_coordinates (cubic spline) of the image
    # alone through the same map, evaluated full-frame (xt, yt) as NumPy code would.  It does
    # less than the kernel (no variance, no mask, no NO_DATA/EDGE rules), on one thread.
    from scipy import ndimage

    yy, xx = np.mgrid[0 : args.size, 0 : args.size].astype(np.float64)
    t_ref = math.inf
    for _ in range(max(1, args.repeat // 2)):
        t0 = time.perf_counter()
        xt, yt = mapping(xx, yy)
        ndimage.map_coordinates(image, [yt, xt], order=3, mode="constant", cval=np.nan)
        t_ref = min(t_ref, time.perf_counter() - t0)
        del xt, yt

    npix = args.size * args.size
    print(f"{args.size} x {args.size}, order {args.order}, map_spline {t_map * 1e3:.1f} ms")
    head = f"{'kernel':10s} {'threads':>7s} {'best s':>8s} {'ns/px':>7s} {'ns/px/thread':>13s}"
    print(f"{head} {'best cpu s':>10s} {'cpu ns/px':>9s}")
    for (name, t), sec in best.items():
        per = sec / npix * 1e9
        cpu = best_cpu[name, t]
        print(f"{name:10s} {t:7d} {sec:8.3f} {per:7.1f} {per * t:13.1f} {cpu:10.3f} "
              f"{cpu / npix * 1e9:9.1f}")  # fmt: skip
    print(f"{'scipy':10s} {1:7d} {t_ref:8.3f} {t_ref / npix * 1e9:7.1f}   "
          "(map_coordinates order 3, image only)")  # fmt: skip
    for t in threads:
        ratio = best["current", t] / t_ref
        print(f"ratio current ({t} thread{'s' if t > 1 else ''}) / scipy reference: {ratio:.2f}")


if __name__ == "__main__":
    main()
