"""Injection and recovery on the real DECam pairs (tests/data/real/): the science report.

    .venv/bin/python benchmarks/real_data_report.py [--seeds 3] [--snr 5 40] [--psf-model]
        [--mosaic clean-detections.png] [--pairs 18c-04c 18d-04d ...] [--measure-scale]

For each pairing (science of epoch 18 minus template of epoch 04) and seed, fakes are put into
the science exposure with ``diffstream inject``'s function (stream/cli/inject.py): half on the
light of stars and galaxies ("hosted"), half on empty sky ("hostless"), shaped by stamps of
the exposure's own bright stars (``--psf-model``: by its PSF model), with S/N from the total
noise over the PSF uniform in ``--snr``.  The pair then goes through ``subtract_files``, as
``diffstream subtract --allow-uncalibrated`` runs it (fluxes in counts), with the clean run's
template flux scale F_r (Settings.template_flux_ratio: a calibration of the pair, which the
fakes on its few bright stars would move; ``--measure-scale`` measures it again on the
injected image, fakes and all).  Printed, for hosted
and hostless fakes apart:

- completeness by S/N (a fake matched to a diaSource that the clean run has too counts only
  if that diaSource's psfFlux rose by half the injected flux: a star's own residual is not
  the fake on it; stream/sim/inject.py ``not_already_there``);
- the median psfFlux / injected flux (found fakes with S/N >= 15);
- new false detections per injected run: diaSources that are neither a fake nor within 2 px
  of a detection of the clean run;
- the clean runs' own detections, with a mosaic of their difference cutouts (``--mosaic``),
  so that a person can judge what is real.

The pairing DEC-OBS18e - DEC-OBS04e is held out: nothing is tuned on it, and it is reported
on its own line.  Timing never matters here; the figures go into the notes of the issue.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "real"
PAIRS = ["18c-04c", "18d-04d", "18c-04d", "18d-04c", "18e-04c", "18e-04d", "18c-04e", "18d-04e"]
HELD_OUT = ["18e-04e"]
BINS = [5, 7, 10, 15, 20, 30, 50]


@dataclass
class Outcome:
    pair: str
    snr: np.ndarray
    flux: np.ndarray
    on_host: np.ndarray
    found: np.ndarray  # bool
    psf_flux: np.ndarray  # NaN when not found
    n_false: int
    why: list  # per fake: "" when found, else why not (see _why_missed)
    forced_gain: np.ndarray  # per fake: forced PSF flux at the diaSource, injected - clean run
    covered: np.ndarray  # per fake: its PSF core (1 FWHM) all valid in the clean run


def _path(tag: str) -> Path:
    return DATA / f"DEC-OBS{tag}.fits"


def run_pair(sci: Path, tmpl: Path, exposure_id: int, f_r: float | None = None):
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.subtract import subtract_files

    settings = Settings(allow_uncalibrated=True, template_flux_ratio=f_r)
    return subtract_files(str(sci), str(tmpl), settings=settings, exposure_id=exposure_id)


def measure(
    pair: str, seeds: int, snr, star_shapes: bool, work: Path, clean_store: dict,
    measure_scale: bool = False,
):  # fmt: skip
    from diffstream.stream.cli.inject import inject_file
    from diffstream.stream.sim.inject import covered, match_positions, not_already_there

    s_tag, t_tag = pair.split("-")
    sci, tmpl = _path(s_tag), _path(t_tag)
    clean = run_pair(sci, tmpl, exposure_id=1)
    clean_store[pair] = clean
    # The injected runs keep the clean run's flux scale (a calibration: fakes on the pair's
    # few bright stars would move a scale measured on them), unless --measure-scale.
    scale = clean.metadata.get("photoScale", step=clean.metadata.name)
    f_r = None if measure_scale else float(scale["fR"])
    cx = np.array([s["x"] for s in clean.dia_sources])
    cy = np.array([s["y"] for s in clean.dia_sources])
    out = []
    for seed in range(seeds):
        dst = work / f"{pair}-{seed}.fits"
        truth = inject_file(sci, dst, seed=1000 * seed + sum(map(ord, pair)), snr=snr,
                            from_stars=star_shapes, n_host=8, n_sky=12,
                            allow_uncalibrated=True)  # fmt: skip
        res = run_pair(dst, tmpl, exposure_id=2 + seed, f_r=f_r)
        pos = [s for s in res.dia_sources if not s.get("isNegative")]
        fx = np.array([s["x"] for s in pos])
        fy = np.array([s["y"] for s in pos])
        near = match_positions(truth.x, truth.y, fx, fy, max(2.0, truth.fwhm))
        hit = not_already_there(near, truth.flux, pos, clean.dia_sources)  # residuals aren't fakes
        why = [_why_missed(res, truth.x[i], truth.y[i], pos[j] if j >= 0 else None)
               if hit[i] < 0 else "" for i, j in enumerate(near)]  # fmt: skip
        gain = np.array([_forced(res, pos[j]) - _forced(clean, pos[j]) if j >= 0 else np.nan
                         for j in near])  # fmt: skip
        psf_flux = np.array([pos[j]["psfFlux"] if j >= 0 else np.nan for j in hit])
        matched = {id(pos[j]) for j in hit if j >= 0}
        n_false = 0
        for s in res.dia_sources:
            if id(s) in matched:
                continue
            if len(cx) and (np.hypot(cx - s["x"], cy - s["y"]) <= 2.0).any():
                continue  # already in the clean run: not made by the fakes
            n_false += 1
        out.append(Outcome(pair, truth.snr, truth.flux, truth.on_host, hit >= 0,
                           psf_flux, n_false, why, gain,
                           covered(clean.zogy.valid, truth.x, truth.y, truth.fwhm)))  # fmt: skip
    return out


def _why_missed(res, x: float, y: float, src) -> str:
    """Why a fake counts as missed: its pixel has no valid score ("invalid"), no positive
    diaSource lies within the matching radius ("no detection"), the one there was merged
    into a dipole ("dipole"), or it is a residual the clean run has too and its psfFlux did
    not rise by half the injected flux ("residual")."""
    if not res.zogy.valid[int(round(y)), int(round(x))]:
        return "invalid"
    if src is None:
        return "no detection"
    return "dipole" if src.get("isDipole") else "residual"


def _forced(res, src) -> float:
    """PSF-weighted flux of ``res``'s difference at ``src``'s nearest pixel (diagnostic: the
    clean and injected runs measured at one position, unlike their diaSources)."""
    z = res.zogy
    p = np.asarray(z.tile_at(src["x"], src["y"]).psf_d, dtype=np.float64)
    h = p.shape[0] // 2
    ix, iy = int(round(src["x"])), int(round(src["y"]))
    ny, nx = z.difference.shape
    if not (h <= ix < nx - h and h <= iy < ny - h):
        return float("nan")
    d = z.difference[iy - h : iy + h + 1, ix - h : ix + h + 1].astype(np.float64)
    return float(np.sum(p * d) / np.sum(p * p))


def report(outcomes: list[Outcome], label: str) -> None:
    if not outcomes:
        return
    snr = np.concatenate([o.snr for o in outcomes])
    flux = np.concatenate([o.flux for o in outcomes])
    host = np.concatenate([o.on_host for o in outcomes])
    found = np.concatenate([o.found for o in outcomes])
    pf = np.concatenate([o.psf_flux for o in outcomes])
    print(f"\n{label}: {len(outcomes)} injected runs, {len(snr)} fakes")
    print(f"  {'S/N':<9}{'hostless':>18}{'hosted':>18}")
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        cells = []
        for h in (False, True):
            sel = (host == h) & (snr >= lo) & (snr < hi)
            n = int(sel.sum())
            cells.append(f"{found[sel].mean():.2f} ({int(found[sel].sum())}/{n})" if n else "-")
        print(f"  {f'{lo}-{hi}':<9}{cells[0]:>18}{cells[1]:>18}")
    for h, name in ((False, "hostless"), (True, "hosted")):
        sel = (host == h) & found & (snr >= 15)
        ratio = np.median(pf[sel] / flux[sel]) if sel.any() else np.nan
        print(f"  median psfFlux / injected, {name}, S/N >= 15: {ratio:.3f} (n={int(sel.sum())})")
    why = np.array([w for o in outcomes for w in o.why])
    gain = np.concatenate([o.forced_gain for o in outcomes])
    miss = host & ~found & (snr >= 15)
    kinds = ("invalid", "no detection", "dipole", "residual")
    print(f"  hosted S/N >= 15 missed: {int(miss.sum())} of {int((host & (snr >= 15)).sum())}: "
          + ", ".join(f"{k} {int((why[miss] == k).sum())}" for k in kinds))  # fmt: skip
    res = miss & (why == "residual")
    if res.any():
        g = np.nanpercentile(gain[res] / flux[res], [25, 50, 75])
        print(f"    'residual' misses: forced flux gain at the diaSource / injected, quartiles "
              f"{g[0]:.2f} {g[1]:.2f} {g[2]:.2f}")  # fmt: skip
    cov = np.concatenate([o.covered for o in outcomes])
    cells = []
    for h, name in ((False, "hostless"), (True, "hosted")):
        sel = cov & (host == h) & (snr >= 15)
        cells.append(f"{name} {found[sel].mean():.2f} ({int(found[sel].sum())}/{int(sel.sum())})"
                     if sel.any() else f"{name} -")  # fmt: skip
    print(
        f"  S/N >= 15 on covered pixels (PSF core valid in the clean run): {', '.join(cells)};"
        f" left out {int((~cov & host).sum())} hosted, {int((~cov & ~host).sum())} hostless"
    )
    nf = [o.n_false for o in outcomes]
    print(f"  new false detections per injected run: mean {np.mean(nf):.2f}, max {max(nf)}")


def mosaic(clean: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = []
    for pair, res in clean.items():
        d = res.zogy.difference
        for s in res.dia_sources:
            x, y = int(round(s["x"])), int(round(s["y"]))
            c = d[max(0, y - 12) : y + 13, max(0, x - 12) : x + 13]
            cuts.append((f"{pair} ({x},{y}) S/N {s['snr']:.0f}", c))
    if not cuts:
        print("no clean-run detection: no mosaic")
        return
    n = len(cuts)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, c) in zip(axes.flat, cuts, strict=False):
        lim = np.nanpercentile(np.abs(c), 99) or 1.0
        ax.imshow(c, origin="lower", cmap="gray", vmin=-lim, vmax=lim)
        ax.set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"clean-run detections: {n}, mosaic {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--snr", type=float, nargs=2, default=(5.0, 40.0))
    ap.add_argument("--psf-model", action="store_true", help="fakes shaped by the PSF model")
    ap.add_argument("--pairs", nargs="+", default=PAIRS)
    ap.add_argument("--mosaic", default="clean-detections.png")
    ap.add_argument(
        "--measure-scale",
        action="store_true",
        help="injected runs measure F_r on their own stars (fakes on them too)",
    )
    args = ap.parse_args()
    clean: dict = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        stars = not args.psf_model
        opts = (args.seeds, args.snr, stars, work, clean, args.measure_scale)
        tuned = [o for p in args.pairs if p not in HELD_OUT for o in measure(p, *opts)]
        held = [o for p in HELD_OUT for o in measure(p, *opts)]
    shape = "PSF model" if args.psf_model else "star stamps"
    report(tuned, f"pairings {' '.join(p for p in args.pairs if p not in HELD_OUT)} ({shape})")
    report(held, f"HELD-OUT pairing {' '.join(HELD_OUT)} ({shape})")
    print("\nclean runs (no fakes): diaSources per pairing")
    for pair, res in clean.items():
        neg = sum(1 for s in res.dia_sources if s.get("isNegative"))
        psf = res.metadata.get("psf", step=res.metadata.name)
        print(f"  {pair}: {len(res.dia_sources)} ({len(res.dia_sources) - neg} positive, {neg} "
              f"negative); PSF science {psf['science']['source']} ({psf['science']['nstars']} "
              f"stars), template {psf['template']['source']} "
              f"({psf['template']['nstars']})")  # fmt: skip
    mosaic(clean, Path(args.mosaic))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
