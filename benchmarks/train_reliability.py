"""Train the real/bogus model shipped as stream/alerts/models/diffstream-gbt-1.json.

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python benchmarks/train_reliability.py [--out stream/alerts/models]
        [--cache /tmp/reliability-data.npz] [--roc docs/images/reliability_roc.png] [--cv]

Everything is fixed by the seeds below; a rerun writes the same model file (byte for byte,
on the same library versions).  Figures printed at the end go into docs/reliability.md.

Data (docs/reliability.md has the reasons):

- **Runs.** Real DECam pairings (tests/data/real/, science of epoch 18 minus template of
  epoch 04; the pairing 18e - 04e is held out, as in tests/science/test_real_decam.py) and
  seeded simulated pairs (stream/sim/); the simulated seeds of the held-out set are never
  trained on.  Every run gets star-stamp fakes (``diffstream inject --from-stars``,
  stream/cli/inject.py ``inject_file``) at science S/N 5-20, on hosts and on sky, and one of
  four treatments, so that subtraction goes wrong on purpose:
  ``clean`` (nothing), ``psf`` (the science PSF given as an external stamp 5-15% too wide or
  too narrow), ``astrometry`` (the template shifted by 0.1-0.5 px under its WCS), ``defects``
  (unflagged cosmic rays and bad columns; saturated stars in both images; the simulator adds
  its own flagged ones too).
- **Labels.** Real (1): a detection within max(2, FWHM) px of a fake or of a simulated
  truth source (simulated transients and variables, S/N 5-20 on the difference).  Bogus (0):
  every other detection more than 3 FWHM from any fake or truth source: the treatments'
  artifacts and the clean runs' own detections, which on these fields are residuals of stars
  and galaxies (benchmarks/real_data_report.py --mosaic shows them).  Detections within
  3 FWHM of a fake but not matched to it (split footprints) are left out as ambiguous.
- **Features.** diffstream.stream.alerts.reliability.features, the function the pipeline
  calls: there is no second copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "real"
# The pairings of tests/science/test_real_decam.py (PAIRS, HELD_OUT).
TRAIN_PAIRS = ["18c-04c", "18d-04d", "18c-04d", "18d-04c", "18e-04c", "18e-04d", "18c-04e",
               "18d-04e"]  # fmt: skip
HELD_OUT_PAIRS = ["18e-04e"]
TRAIN_REAL_SEEDS = tuple(range(101, 109))
HELD_REAL_SEEDS = tuple(range(201, 213))
TRAIN_SIM_SEEDS = tuple(range(301, 331))
# The science test (tests/science/test_reliability_science.py) uses seed 977, in neither list.
HELD_SIM_SEEDS = tuple(range(401, 409))
KINDS = ("clean", "psf", "astrometry", "defects")
VERSION = "diffstream-gbt-1"
SIM_SHAPE = (384, 384)

# HistGradientBoostingClassifier: 120 trees of <= 15 leaves keep the JSON under ~150 KB;
# more trees did not move the held-out rejection (docs/reliability.md).
GBT_PARAMS = {
    "max_iter": 120,
    "learning_rate": 0.1,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
    "early_stopping": False,
    "random_state": 0,
}


def _settings(score: bool):
    from diffstream.stream.ops.settings import Settings

    # Training runs score nothing: the model being trained must not depend on the one shipped.
    return Settings(allow_uncalibrated=True, fft_workers=1, reliability=score)


def _edit_image(src: Path, dst: Path, fn) -> None:
    """Copy ``src`` to ``dst`` with its image HDU (the one the loader reads) replaced by
    ``fn(image, exposure)``."""
    from diffstream.stream.io.fitsio import load_exposure

    exp = load_exposure(str(src), allow_uncalibrated=True, exposure_id=0, measure_psf=False)
    with fits.open(src) as hdul:
        target = hdul[exp.info["hdu"]]
        data = np.asarray(target.data, dtype=np.float64)
        target.data = fn(data, exp).astype(target.data.dtype)
        hdul.writeto(dst, overwrite=True)


def _shifted(dx: float, dy: float):
    def fn(img: np.ndarray, exp) -> np.ndarray:
        finite = np.isfinite(img)
        out = ndimage.shift(np.where(finite, img, 0.0), (dy, dx), order=3, mode="nearest")
        return np.where(finite, out, img)

    return fn


def _far(x, y, avoid_x, avoid_y, dist) -> bool:
    return not len(avoid_x) or bool(np.min(np.hypot(avoid_x - x, avoid_y - y)) > dist)


def _positions(rng, shape, n, avoid_x, avoid_y, dist, margin=12):
    ny, nx = shape
    out = []
    for _ in range(200 * max(n, 1)):
        if len(out) >= n:
            break
        x, y = rng.uniform(margin, nx - margin), rng.uniform(margin, ny - margin)
        if _far(x, y, avoid_x, avoid_y, dist):
            out.append((x, y))
            avoid_x = np.append(avoid_x, x)
            avoid_y = np.append(avoid_y, y)
    return out


def _defects(rng, avoid_x, avoid_y, fwhm: float):
    """Unflagged cosmic rays (1-4 px tracks, 8-80 sigma a pixel) and bad columns (hot or cold
    segments of 30-150 px, 3-15 sigma), away from the fakes."""

    def fn(img: np.ndarray, exp) -> np.ndarray:
        out = img.copy()
        ny, nx = img.shape
        sigma = float(np.sqrt(np.nanmedian(exp.variance)))
        for x, y in _positions(rng, (ny, nx), int(rng.integers(3, 9)), avoid_x, avoid_y,
                               3 * fwhm):  # fmt: skip
            ix, iy = int(x), int(y)
            for _ in range(int(rng.integers(1, 5))):
                out[iy, ix] += rng.uniform(8, 80) * sigma
                ix = int(np.clip(ix + rng.integers(-1, 2), 0, nx - 1))
                iy = int(np.clip(iy + rng.integers(-1, 2), 0, ny - 1))
        for _ in range(int(rng.integers(1, 3))):
            for _ in range(50):
                x = int(rng.integers(10, nx - 10))
                if not len(avoid_x) or np.min(np.abs(avoid_x - x)) > 3 * fwhm:
                    break
            length = int(rng.integers(30, 150))
            y0 = int(rng.integers(0, max(1, ny - length)))
            level = rng.uniform(3, 15) * sigma * rng.choice([-1.0, 1.0], p=[0.3, 0.7])
            out[y0 : y0 + length, x] += level
        return out

    return fn


def _saturated_stars(stars):
    """Stars (x, y, peak factor, flux scale) whose peaks reach ``peak factor`` x SATURATE,
    clipped there; the loader flags the clipped pixels SAT in plain files."""

    def fn(img: np.ndarray, exp) -> np.ndarray:
        if exp.saturation is None or exp.psf is None:
            return img
        out = img.copy()
        ny, nx = img.shape
        for x, y, peak_factor, flux_scale in stars:
            stamp = np.asarray(exp.psf.at(x, y), dtype=np.float64)
            stamp = stamp / stamp.sum()
            flux = peak_factor * exp.saturation / stamp.max() * flux_scale
            h = stamp.shape[0] // 2
            ix, iy = int(round(x)), int(round(y))
            y0, y1 = max(iy - h, 0), min(iy + h + 1, ny)
            x0, x1 = max(ix - h, 0), min(ix + h + 1, nx)
            part = stamp[y0 - (iy - h) : y1 - (iy - h), x0 - (ix - h) : x1 - (ix - h)]
            out[y0:y1, x0:x1] = np.minimum(out[y0:y1, x0:x1] + flux * part, exp.saturation)
        return out

    return fn


def _stretched_psf(stamp: np.ndarray, factor: float) -> np.ndarray:
    """``stamp`` widened by ``factor`` about its centre (same size, unit sum)."""
    c = (stamp.shape[0] - 1) / 2.0
    out = ndimage.affine_transform(
        stamp, np.eye(2) / factor, offset=c - c / factor, order=3, mode="constant"
    )
    out = np.clip(out, 0.0, None)
    return out / out.sum()


@dataclass
class Case:
    x: np.ndarray  # features of the labelled detections
    y: np.ndarray  # 1 real, 0 bogus, -2 a fake match whose flux is not the fake's
    snr: np.ndarray
    n_flux: int  # fake matches left out: their flux is not the fake's
    keep: np.ndarray  # which of result.dia_sources are labelled
    result: Any  # the pipeline's SubtractResult


def run_case(
    sci: Path, tmpl: Path, kind: str, seed: int, work: Path, truth=None, *, score: bool = False
):
    """One injected, treated run: (features, labels, snr) of its labelled detections, the
    count of fake matches left out, and the pipeline's result (``score``: with the shipped
    model's reliability filled, as tests/science/test_reliability_science.py runs it)."""
    from diffstream.stream.alerts.reliability import features
    from diffstream.stream.cli.inject import inject_file
    from diffstream.stream.io.fitsio import load_exposure
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.inject import match_positions

    rng = np.random.default_rng(seed * 10 + KINDS.index(kind))
    injected = work / "injected.fits"
    opts = {"n_host": 6, "n_sky": 8, "snr": (5.0, 20.0), "seed": seed, "allow_uncalibrated": True}
    try:
        fakes = inject_file(sci, injected, from_stars=True, **opts)
    except ValueError as exc:  # a crowded simulated field: no isolated bright star
        print(f"  {exc}: fakes shaped by the PSF model instead", file=sys.stderr)
        fakes = inject_file(sci, injected, from_stars=False, **opts)
    fwhm = float(fakes.fwhm)
    tx = np.concatenate([fakes.x, [] if truth is None else truth["x"]])
    ty = np.concatenate([fakes.y, [] if truth is None else truth["y"]])
    # The difference-image flux each one should have, in the pipeline's units (nJy when
    # calibrated, the file's counts otherwise).
    fake_flux = fakes.flux if fakes.flux_njy is None else fakes.flux_njy
    tflux = np.concatenate([fake_flux, [] if truth is None else truth["flux_diff_njy"]])
    sci_run, tmpl_run, psf_path = injected, tmpl, None
    if kind == "psf":
        exp = load_exposure(str(injected), allow_uncalibrated=True, exposure_id=0)
        ny, nx = exp.shape
        stamp = np.asarray(exp.psf.at((nx - 1) / 2, (ny - 1) / 2), dtype=np.float64)
        factor = rng.uniform(1.05, 1.15) if rng.random() < 0.5 else rng.uniform(0.85, 0.95)
        psf_path = work / "psf.fits"
        fits.PrimaryHDU(_stretched_psf(stamp / stamp.sum(), factor)).writeto(
            psf_path, overwrite=True
        )
    elif kind == "astrometry":
        r, phi = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
        tmpl_run = work / "template-shifted.fits"
        _edit_image(tmpl, tmpl_run, _shifted(r * np.cos(phi), r * np.sin(phi)))
    elif kind == "defects":
        if truth is None:  # the simulator makes its own saturated stars
            shape = fits.getdata(sci).shape
            where = _positions(rng, shape, int(rng.integers(1, 3)), tx, ty, 8 * fwhm)
            stars = [(x, y, rng.uniform(2, 20), rng.uniform(0.9, 1.1)) for x, y in where]
            saturated = work / "science-saturated.fits"
            _edit_image(injected, saturated, _saturated_stars([s[:3] + (1.0,) for s in stars]))
            tmpl_run = work / "template-saturated.fits"
            _edit_image(tmpl, tmpl_run, _saturated_stars(stars))
        else:
            saturated = injected
        sci_run = work / "science-defects.fits"
        _edit_image(saturated, sci_run, _defects(rng, tx, ty, fwhm))
    res = subtract_files(str(sci_run), str(tmpl_run), settings=_settings(score), exposure_id=seed,
                         science_psf=None if psf_path is None else str(psf_path))  # fmt: skip
    x = features(res.sources, res.dia_sources, res.zogy.difference, res.zogy.difference_variance)
    fx, fy = res.sources["x"], res.sources["y"]
    labels = np.full(len(fx), -1, dtype=np.int64)
    hit = match_positions(tx, ty, fx, fy, max(2.0, fwhm))
    for i in np.flatnonzero(hit >= 0):
        # A fake that lands on a star's residual is "found" by that residual: real only when
        # the measured flux is the fake's (within a factor 3, sign included); otherwise the
        # detection is the residual's, and is left out (neither real nor bogus).
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = res.sources["psfFlux"][hit[i]] / tflux[i]
        labels[hit[i]] = 1 if 1.0 / 3.0 <= ratio <= 3.0 else -2
    for j in np.flatnonzero(labels == -1):
        if _far(fx[j], fy[j], tx, ty, 3 * fwhm):
            labels[j] = 0
    # The left-out fake matches ride along as -2 (never trained on; reported apart).
    keep = (labels >= 0) | (labels == -2)
    return Case(x[keep], labels[keep], np.abs(res.sources["snr"][keep]),
                int(np.sum(labels == -2)), keep, res)  # fmt: skip


def _real_cases(pairs, seeds):
    for pair in pairs:
        s, t = pair.split("-")
        for seed in seeds:
            for kind in KINDS:
                sci, tmpl = DATA / f"DEC-OBS{s}.fits", DATA / f"DEC-OBS{t}.fits"
                yield f"real {pair}", sci, tmpl, kind, seed


def simulated_pair(seed: int, outdir: Path):
    """The simulated pair of ``seed`` as written files, with its truth table (also used by the
    science test, with a seed of its own)."""
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    pair = simulate_pair(
        seed=seed, shape=SIM_SHAPE, n_stars=200, n_transients=16, n_variables=8, n_hosted=6,
        snr_range=(5.0, 20.0), n_saturated=3, n_cosmic_rays=8, n_bad_columns=2,
        psf_profile="moffat", science_fwhm=3.4, template_fwhm=2.6,
    )  # fmt: skip
    sci, tmpl = write_pair(pair, outdir, truth_csv=False)
    return sci, tmpl, pair.truth


def collect(split: str, work_root: Path) -> dict[str, np.ndarray]:
    """Every labelled detection of ``split`` ("train", "held_real" or "held_sim")."""
    xs, ys, snrs, kinds, groups = [], [], [], [], []
    cases: list = []
    if split == "train":
        cases += [(*c, None) for c in _real_cases(TRAIN_PAIRS, TRAIN_REAL_SEEDS)]
    if split == "held_real":
        cases += [(*c, None) for c in _real_cases(HELD_OUT_PAIRS, HELD_REAL_SEEDS)]
    sim_seeds = {"train": TRAIN_SIM_SEEDS, "held_sim": HELD_SIM_SEEDS}.get(split, ())
    for seed in sim_seeds:
        d = work_root / f"sim-{seed}"
        sci, tmpl, truth = simulated_pair(seed, d)
        cases += [(f"sim {seed}", sci, tmpl, kind, seed, truth) for kind in KINDS]
    for i, (name, sci, tmpl, kind, seed, truth) in enumerate(cases):
        work = work_root / f"{split}-{i}"
        work.mkdir(parents=True, exist_ok=True)
        case = run_case(Path(sci), Path(tmpl), kind, seed, work, truth)
        x, y, snr, n_flux = case.x, case.y, case.snr, case.n_flux
        xs.append(x)
        ys.append(y)
        snrs.append(snr)
        kinds += [kind] * len(y)
        groups += [name] * len(y)
        print(f"  {split:9s} {name:12s} seed {seed} {kind:10s} real {int(y.sum()):3d} "
              f"bogus {int((y == 0).sum()):3d} left out (flux not the fake's) {n_flux}",
              file=sys.stderr, flush=True)  # fmt: skip
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "snr": np.concatenate(snrs),
            "kind": np.array(kinds), "group": np.array(groups)}  # fmt: skip


def rejection_at(scores_pos, scores_neg, completeness=0.95) -> tuple[float, float]:
    """(threshold, fraction of negatives below it) where ``completeness`` of the positives
    score at or above the threshold."""
    thr = float(np.quantile(scores_pos, 1.0 - completeness, method="lower"))
    return thr, float(np.mean(scores_neg < thr))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "stream" / "alerts" / "models"))
    ap.add_argument("--cache", default=None, help="npz of the labelled features (reused)")
    ap.add_argument("--roc", default=str(ROOT / "docs" / "images" / "reliability_roc.png"))
    ap.add_argument("--cv", action="store_true", help="also leave-one-pairing-out figures")
    args = ap.parse_args(argv)

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score, roc_curve

    from diffstream.stream.alerts.reliability import FEATURE_NAMES, TreeModel, export_trees

    t0 = time.perf_counter()
    data: dict[str, dict[str, np.ndarray]] = {}
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            for split in ("train", "held_real", "held_sim"):
                data[split] = {k: z[f"{split}_{k}"] for k in ("x", "y", "snr", "kind", "group")}
    else:
        with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
            for split in ("train", "held_real", "held_sim"):
                data[split] = collect(split, Path(tmp))
        if cache is not None:
            np.savez_compressed(cache, **{f"{s}_{k}": v for s, d in data.items()
                                          for k, v in d.items()})  # fmt: skip
    t_data = time.perf_counter() - t0

    for split, d in data.items():
        print(f"{split}: fake matches left out (flux not the fake's): {int(np.sum(d['y'] == -2))}")
    labelled = {s: {k: v[d["y"] >= 0] for k, v in d.items()} for s, d in data.items()}
    tr = labelled["train"]
    clf = HistGradientBoostingClassifier(**GBT_PARAMS, class_weight="balanced")
    t1 = time.perf_counter()
    clf.fit(tr["x"], tr["y"])
    t_fit = time.perf_counter() - t1

    if args.cv:
        # Leave one real training pairing out (its runs only; the simulated ones stay in).
        for pair in TRAIN_PAIRS:
            out = tr["group"] == f"real {pair}"
            cv = HistGradientBoostingClassifier(**GBT_PARAMS, class_weight="balanced")
            cv.fit(tr["x"][~out], tr["y"][~out])
            p = cv.predict_proba(tr["x"][out])[:, 1]
            _, rej = rejection_at(p[tr["y"][out] == 1], p[tr["y"][out] == 0])
            print(f"leave out {pair}: real {int(tr['y'][out].sum())} "
                  f"bogus {int((tr['y'][out] == 0).sum())} rejected at 95% {rej:.4f}")  # fmt: skip

    figures: dict[str, dict] = {}
    curves = {}
    print(f"\nfeatures: {len(FEATURE_NAMES)}; data {t_data:.0f} s, fit {t_fit:.1f} s")
    print(f"{'set':10s} {'real':>6s} {'bogus':>6s} {'AUC':>7s} {'thr@95%':>8s} {'rejected':>9s}")
    for split in ("train", "held_real", "held_sim", "held_all"):
        if split == "held_all":
            d = {k: np.concatenate([labelled["held_real"][k], labelled["held_sim"][k]])
                 for k in ("x", "y")}  # fmt: skip
        else:
            d = labelled[split]
        p = clf.predict_proba(d["x"])[:, 1]
        pos, neg = p[d["y"] == 1], p[d["y"] == 0]
        auc = float(roc_auc_score(d["y"], p))
        thr, rej = rejection_at(pos, neg)
        figures[split] = {"n_real": int(pos.size), "n_bogus": int(neg.size),
                          "auc": round(auc, 4), "threshold_95": round(thr, 4),
                          "rejected_at_95": round(rej, 4)}  # fmt: skip
        curves[split] = roc_curve(d["y"], p)
        print(f"{split:10s} {pos.size:6d} {neg.size:6d} {auc:7.4f} {thr:8.4f} {rej:9.4f}")
    for split in ("held_real", "held_sim"):
        d = data[split]
        p = clf.predict_proba(d["x"])[:, 1]
        pos = p[d["y"] == 1]
        # The strict view: every fake match is real, whatever flux it measured.
        thr, rej = rejection_at(p[d["y"] != 0], p[d["y"] == 0])
        figures[split]["rejected_at_95_with_left_out_as_real"] = round(rej, 4)
        print(f"  {split} with the {int(np.sum(d['y'] == -2))} left-out fake matches counted "
              f"real: rejected {rej:.4f} (threshold {thr:.4f})")  # fmt: skip
        for kind in KINDS:
            neg = p[(d["y"] == 0) & (d["kind"] == kind)]
            if neg.size:
                thr, rej = rejection_at(pos, neg)
                print(f"  {split} bogus from {kind:10s}: n {neg.size:4d} rejected {rej:.4f}")

    import sklearn

    model = export_trees(
        clf, version=VERSION, feature_names=FEATURE_NAMES,
        kind="sklearn.HistGradientBoostingClassifier, binary, P(real)",
        sklearn=sklearn.__version__, params=GBT_PARAMS, figures=figures,
    )  # fmt: skip
    blob = json.dumps(model, separators=(",", ":"), sort_keys=False).encode()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{VERSION}.json"
    path.write_bytes(blob)
    # The exported trees must give sklearn's probabilities (the unit test checks it too).
    mine = TreeModel.from_dict(model).predict(tr["x"])
    worst = float(np.max(np.abs(mine - clf.predict_proba(tr["x"])[:, 1])))
    sha = hashlib.sha256(blob).hexdigest()
    print(f"\nmodel {path} ({len(blob) / 1024:.1f} KB, sha256 {sha[:16]}...), "
          f"max |JSON - sklearn| {worst:.2e}")  # fmt: skip
    if args.roc:
        _plot(curves, figures, Path(args.roc))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def _plot(curves, figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    labels = {"held_real": "held-out real (18e-04e)", "held_sim": "held-out simulated",
              "train": "training (for reference)"}  # fmt: skip
    for split, style in (("held_real", "-"), ("held_sim", "-"), ("train", ":")):
        fpr, tpr, _ = curves[split]
        f = figures[split]
        ax.plot(fpr, tpr, style, label=f"{labels[split]}: AUC {f['auc']:.3f}, "
                f"{f['rejected_at_95']:.0%} bogus rejected at 95% real kept")  # fmt: skip
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_ylim(0.5, 1.005)
    ax.set_xlabel("bogus kept (false-positive rate)")
    ax.set_ylabel("real kept (completeness)")
    ax.set_title(f"{VERSION}: ROC on held-out pairs")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
