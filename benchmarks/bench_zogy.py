"""Micro benchmark: tiled :func:`jitcore.zogy.zogy` against a bare whole-image NumPy/SciPy ZOGY.

    .venv/bin/python benchmarks/bench_zogy.py [--size 4096] [--repeat 3]

Both run in this process on the same float32 pair (noise + stars, constant Gaussian PSFs),
after a warm-up call so that Numba's JIT cost is excluded.  The bare version is the textbook
recipe: one rfft2 of each whole image, zero-padded by a PSF box, with the true PSFs and the
global median noise, no tiles, masks or astrometric term; it computes the same D, V_D, S, V_S,
score and flux.  Prints a table (seconds, min over repeats) and how far the two scores differ.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import fft as sfft

from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.jitcore.zogy import zogy


def _embed(stamp: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape)
    h = stamp.shape[0] // 2
    out[np.ix_(np.arange(-h, h + 1) % shape[0], np.arange(-h, h + 1) % shape[1])] = stamp
    return out


def bare_zogy(n, vn, r, vr, stamp_n, stamp_r, *, workers=None) -> dict[str, np.ndarray]:
    """Whole-image ZOGY in plain NumPy/SciPy (F_n = F_r = 1)."""
    ny, nx = n.shape
    pad = max(stamp_n.shape[0], stamp_r.shape[0])
    shape = (
        sfft.next_fast_len(ny + 2 * pad, real=True),
        sfft.next_fast_len(nx + 2 * pad, real=True),
    )

    def rfft(a):
        return sfft.rfft2(a, s=shape, workers=workers)

    def irfft(a):
        return sfft.irfft2(a, s=shape, workers=workers)[:ny, :nx]

    sig_n2, sig_r2 = float(np.median(vn)), float(np.median(vr))
    pn, pr = rfft(_embed(stamp_n, shape)), rfft(_embed(stamp_r, shape))
    b = sig_n2 * np.abs(pr) ** 2 + sig_r2 * np.abs(pn) ** 2
    b = np.maximum(b, 1e-200 * (sig_n2 + sig_r2))
    kdn, kdr = pr / np.sqrt(b), pn / np.sqrt(b)
    kn = np.conj(pn) * np.abs(pr) ** 2 / b
    kr = np.conj(pr) * np.abs(pn) ** 2 / b
    f_d = 1.0 / np.sqrt(sig_n2 + sig_r2)
    herm = np.full(b.shape[1], 2.0)  # rfft half plane: every column but 0 / Nyquist twice
    herm[0] = 1.0
    if shape[1] % 2 == 0:
        herm[-1] = 1.0
    f_s = float(np.sum(np.abs(pn * pr) ** 2 / b * herm)) / (shape[0] * shape[1])
    fn, fr, fvn, fvr = rfft(n), rfft(r), rfft(vn), rfft(vr)

    def sq(k):
        return rfft(sfft.irfft2(k, s=shape, workers=workers) ** 2)

    d = irfft(kdn * fn - kdr * fr)
    vd = irfft(sq(kdn) * fvn + sq(kdr) * fvr)
    s = irfft(kn * fn - kr * fr)
    vs = irfft(sq(kn) * fvn + sq(kr) * fvr)
    return {
        "difference": (d / f_d).astype(np.float32),
        "difference_variance": (vd / f_d**2).astype(np.float32),
        "score": (s / np.sqrt(vs)).astype(np.float32),
        "flux": (s / f_s).astype(np.float32),
        "flux_variance": (vs / f_s**2).astype(np.float32),
    }


def simulate(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (size, size)
    psf_n, psf_r = gaussian_psf(2.2), gaussian_psf(1.6)
    mn = np.zeros(shape, np.float32)
    mr = np.zeros(shape, np.float32)
    h = psf_n.shape[0] // 2
    hr = psf_r.shape[0] // 2
    for _ in range(size * size // 4000):
        x, y = rng.integers(20, size - 20, 2)
        f = float(rng.lognormal(8, 1.5))
        mn[y - h : y + h + 1, x - h : x + h + 1] += f * psf_n
        mr[y - hr : y + hr + 1, x - hr : x + hr + 1] += f * psf_r
    vn = (100.0 + mn).astype(np.float32)
    vr = (36.0 + mr).astype(np.float32)
    n = (mn + rng.standard_normal(shape, np.float32) * np.sqrt(vn)).astype(np.float32)
    r = (mr + rng.standard_normal(shape, np.float32) * np.sqrt(vr)).astype(np.float32)
    return n, vn, r, vr, psf_n, psf_r


def main() -> None:
    from diffstream.stream.ops.memory import configure_from_env

    # As the CLI does: freed arrays stay in the heap (stream/ops/memory.py); both the pipeline
    # and the reference run under it.
    print(f"keep freed memory (glibc mallopt): {configure_from_env()}")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tile-size", type=int, default=512)
    args = ap.parse_args()
    n, vn, r, vr, sn, sr = simulate(args.size)
    shape = n.shape
    pm_n, pm_r = PsfModel.constant(sn, shape), PsfModel.constant(sr, shape)
    bad = np.zeros(shape, bool)
    w = slice(0, 300)
    zogy(n[w, w], vn[w, w], r[w, w], vr[w, w], bad[w, w], pm_n, pm_r)  # JIT warm-up

    rows = []
    results = {}
    for workers in (None, -1):
        for name, fn in (
            ("zogy (tiled)", lambda wk=workers: zogy(n, vn, r, vr, bad, pm_n, pm_r,
                                                     tile_size=args.tile_size, workers=wk)),
            ("bare NumPy/SciPy", lambda wk=workers: bare_zogy(n, vn, r, vr, sn, sr, workers=wk)),
        ):  # fmt: skip
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = fn()
                times.append(time.perf_counter() - t0)
            results[name] = res
            rows.append((name, "default" if workers is None else str(workers), min(times)))
    print(f"ZOGY on a {shape[0]}x{shape[1]} float32 pair, min of {args.repeat} runs")
    print(f"{'implementation':<20} {'workers':>8} {'seconds':>9}")
    for name, wk, t in rows:
        print(f"{name:<20} {wk:>8} {t:9.3f}")
    z, bare = results["zogy (tiled)"], results["bare NumPy/SciPy"]
    inner = (slice(40, -40), slice(40, -40))
    print(f"max |score difference| (interior): {np.abs(z.score - bare['score'])[inner].max():.2e}")


if __name__ == "__main__":
    main()
