"""APDB benchmark: association + forced photometry time per exposure, and alert sizes.

    .venv/bin/python benchmarks/bench_apdb.py [--objects 100000] [--sources 1000 10000]
        [--apdb sqlite:///... | postgresql://...] [--repeat 3] [--sizes-only | --no-sizes]

The database is filled with ``--objects`` diaObjects (one diaSource each) spread uniformly
over a square field sized so that an LSST detector (4096^2 px at 0.2") holds about
``--in-footprint`` of them (default 3000: a realistic density).  Each timed exposure brings
``--sources`` diaSources, half at known objects (0.1" off) up to the objects on the detector,
the rest new, and runs stream/pipeline/apdb/step.py's ``associate_exposure`` end to end:
lock, cone load, association, DiaSource writes, forced PSF photometry on difference and
science at every object on the detector, summaries of the objects it changes, history for
the alerts.  Each of the ``--repeat`` timed visits is undone afterwards (its rows deleted), so
every repeat meets the same database; the table prints the step times of the fastest and
the total of the slowest (the machine is shared: best-of-N, with the spread).  The forced
photometry kernels are compiled (or loaded from the cache) before timing.

Then the alert size with 12 months of history, part by part (schemaless Avro of the 11.1
records, from a real alert of a simulated 10-visit field): its diaSource, ``--prv`` previous
diaSources and ``--prv-forced`` forced sources (the alert's mean record sizes), its diaObject
and its three cutouts as the pipeline makes them.  Timing never gates a test.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffstream.jitcore.measure import forced_psf_flux  # noqa: E402
from diffstream.stream.alerts.packets import dia_source_record, make_alert  # noqa: E402
from diffstream.stream.ops.settings import Settings  # noqa: E402
from diffstream.stream.pipeline.apdb.step import associate_exposure, footprint  # noqa: E402
from diffstream.stream.pipeline.apdb.store import Apdb, cone_pixels, sky_pixels  # noqa: E402
from tests.apdb_helpers import images_of, synthetic_exposure  # noqa: E402

RA0, DEC0 = 60.0, -30.0
SHAPE = (4096, 4096)
SCALE = 0.2  # arcsec / px


def _source(sid, ra, dec, x, y, visit, mjd):
    row = {
        "diaSourceId": int(sid), "ra": float(ra), "dec": float(dec), "raErr": 1e-5,
        "decErr": 1e-5, "x": float(x), "y": float(y), "psfFlux": 500.0, "psfFluxErr": 50.0,
        "scienceFlux": 2000.0, "scienceFluxErr": 60.0, "psfNdata": 9, "trailNdata": 0,
        "dipoleNdata": 0, "bboxSize": 15,
    }  # fmt: skip
    return dia_source_record(
        row, visit=visit, detector=0, midpoint_mjd_tai=mjd, band="r",
        time_processed_mjd_tai=mjd, exposure_time=30.0,
    )  # fmt: skip


def _sources_like(template: dict, ids, ra, dec, xs=None, ys=None) -> list[dict]:
    """Copies of one diaSource record with other ids and positions: dia_source_record per
    source (~100 us) made filling 10^6 objects take minutes of set-up, not of the APDB."""
    out = []
    xs32 = np.zeros(len(ids), np.float32) if xs is None else np.asarray(xs, np.float32)
    ys32 = np.zeros(len(ids), np.float32) if ys is None else np.asarray(ys, np.float32)
    for i, r, d, x, y in zip(
        np.asarray(ids).tolist(), np.asarray(ra).tolist(), np.asarray(dec).tolist(),
        xs32.tolist(), ys32.tolist(), strict=True,
    ):  # fmt: skip
        out.append({**template, "diaSourceId": i, "ra": r % 360.0, "dec": d, "x": x, "y": y})
    return out


def fill(db: Apdb, n_objects: int, in_footprint: int, seed: int) -> tuple[float, float]:
    """Fill the APDB; returns (field side in deg, seconds)."""
    from diffstream.stream.alerts.diaobjects import dia_object_summary

    t0 = time.perf_counter()
    fp_area = (SHAPE[0] * SCALE / 3600.0) ** 2
    side = float(np.sqrt(fp_area * n_objects / in_footprint))
    rng = np.random.default_rng(seed)
    cosd = np.cos(np.radians(DEC0))
    template = _source(0, RA0, DEC0, 0.0, 0.0, visit=1, mjd=60000.0)
    template_object = dia_object_summary(0, [template])
    chunk = 50000
    for start in range(0, n_objects, chunk):
        n = min(chunk, n_objects - start)
        ra = RA0 + rng.uniform(-side / 2, side / 2, n) / cosd
        dec = DEC0 + rng.uniform(-side / 2, side / 2, n)
        ids = np.arange(start, start + n) + 10**12  # far from the timed exposures' ids
        sources = _sources_like(template, ids, ra, dec)
        pix = sky_pixels(ra, dec).tolist()
        objects = []
        for src, p in zip(sources, pix, strict=True):
            src["diaObjectId"] = src["diaSourceId"]
            objects.append(
                {**template_object, "diaObjectId": src["diaObjectId"], "ra": src["ra"],
                 "dec": src["dec"], "pixelId": p}
            )  # fmt: skip
        with db.engine.begin() as conn:
            db.insert_sources(conn, sources)
            db.upsert_objects(conn, objects)
    return side, time.perf_counter() - t0


def exposure_run(db: Apdb, url: str, n_sources: int, visit: int, seed: int) -> dict:
    exp = synthetic_exposure(ra=RA0, dec=DEC0, shape=SHAPE, visit=visit, mjd=60100.0 + visit)
    rng = np.random.default_rng([seed, visit])
    diff = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    images = images_of(exp, diff)
    ny, nx = SHAPE
    # Half at known objects in the footprint (0.1" off), half new at random positions.
    ra0, dec0, radius = footprint(exp)
    with db.engine.connect() as conn:
        known = db.objects_in(conn, cone_pixels(ra0, dec0, radius))
    x, y = exp.wcs.all_world2pix(known["ra"], known["dec"], 0)
    inside = (x > 10) & (x < nx - 10) & (y > 10) & (y < ny - 10)
    known_x, known_y = x[inside], y[inside]
    n_known = min(n_sources // 2, known_x.size)
    pick = rng.choice(known_x.size, n_known, replace=False)
    xs = np.concatenate([known_x[pick] + 0.5, rng.uniform(10, nx - 10, n_sources - n_known)])
    ys = np.concatenate([known_y[pick], rng.uniform(10, ny - 10, n_sources - n_known)])
    ra, dec = exp.wcs.all_pix2world(xs, ys, 0)
    base = visit * 10**7
    template = _source(base, ra0, dec0, 0.0, 0.0, visit, exp.midpoint_mjd_tai)
    src = _sources_like(template, base + np.arange(n_sources), ra, dec, xs, ys)
    alerts = [make_alert(s, cutouts={}, task_metadata=None) for s in src]
    t0 = time.perf_counter()
    done = associate_exposure(
        exp, src, alerts, images, settings=Settings(apdb=url), apdb=db, processed_mjd_tai=60200.0
    )
    done["total"] = time.perf_counter() - t0
    done["inFootprint"] = int(inside.sum())
    done["newIds"] = [s["diaSourceId"] for s in src if s["diaObjectId"] == s["diaSourceId"]]
    return done


def undo(db: Apdb, visit: int, new_ids: list[int]) -> None:
    """Delete what a timed visit wrote (its diaSources, forced sources, new diaObjects), so
    every repeat meets the same database: best-of-N compares like with like.  The summaries
    it updated keep their counts (their values do not change what the next visit costs)."""
    sa = db.sa
    t = db.tables
    with db.engine.begin() as conn:
        conn.execute(sa.delete(t["DiaSource"]).where(t["DiaSource"].c.visit == visit))
        conn.execute(sa.delete(t["DiaForcedSource"]).where(t["DiaForcedSource"].c.visit == visit))
        obj = t["DiaObject"]
        for start in range(0, len(new_ids), 5000):
            chunk = new_ids[start : start + 5000]
            conn.execute(sa.delete(obj).where(obj.c.diaObjectId.in_(chunk)))


def warm_up() -> None:
    """Compile (or load from the cache) the forced-photometry kernels before timing."""
    exp = synthetic_exposure(ra=RA0, dec=DEC0, shape=(64, 64), visit=1, mjd=60000.0)
    images = images_of(exp, np.zeros((64, 64), np.float32))
    x = np.array([32.0])
    forced_psf_flux(
        images["difference"], images["difference_variance"], images["psf_d_at"], x, x,
        mask=images["mask"], mask_planes=images["mask_planes"],
    )  # fmt: skip


def alert_sizes(n_prv: int, n_forced: int) -> dict[str, int]:
    """Parts of a real alert: the last visit of a 10-visit simulated field through the
    pipeline and a SQLite APDB (stream/sim/sequence.py), a variable detected at every visit;
    its history records' mean sizes scaled to ``n_prv`` / ``n_forced`` rows."""
    import fastavro

    from diffstream.schemas import load_parsed
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.sequence import simulate_sequence, write_sequence

    def size(name: str, record) -> int:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, load_parsed(f"lsst/lsst.v11_1.{name}"), record)
        return buf.tell()

    tmp = Path(tempfile.mkdtemp())
    seq = simulate_sequence(seed=3, n_visits=10)
    template, visits = write_sequence(seq, tmp)
    settings = Settings(apdb=f"sqlite:///{tmp / 'sizes.sqlite3'}", fft_workers=1)
    for v, path in enumerate(visits):
        result = subtract_files(
            str(path), str(template), settings=settings, exposure_id=9000 + v,
            visit=seq.visits[v].visit, detector=1,
        )  # fmt: skip
    alert = max(result.alerts, key=lambda a: len(a["prvDiaSources"]))
    prv, forced = alert["prvDiaSources"], alert["prvDiaForcedSources"]
    per_prv = sum(size("diaSource", r) for r in prv) / len(prv)
    per_forced = sum(size("diaForcedSource", r) for r in forced) / len(forced)
    cut = {k: len(alert[k] or b"") for k in ("cutoutDifference", "cutoutScience", "cutoutTemplate")}
    return {
        "diaSource": size("diaSource", alert["diaSource"]),
        f"prvDiaSources ({n_prv} x {per_prv:.0f})": round(n_prv * per_prv),
        f"prvDiaForcedSources ({n_forced} x {per_forced:.0f})": round(n_forced * per_forced),
        "diaObject": size("diaObject", alert["diaObject"]),
        **{f"{k} (FITS)": v for k, v in cut.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--in-footprint", type=int, default=3000)
    p.add_argument("--sources", type=int, nargs="+", default=[1000, 10_000])
    p.add_argument("--apdb", default=None, help="default: a SQLite file in a temp dir")
    p.add_argument("--repeat", type=int, default=3, help="timed visits per row (best-of)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sizes-only", action="store_true")
    p.add_argument("--no-sizes", action="store_true", help="only the timing table")
    p.add_argument("--prv", type=int, default=40, help="diaSources in 12 months (~2 bands)")
    p.add_argument("--prv-forced", type=int, default=80, help="forced sources in 12 months")
    args = p.parse_args()

    if not args.sizes_only:
        url = args.apdb or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.sqlite3'}"
        db = Apdb(url)
        side, secs = fill(db, args.objects, args.in_footprint, args.seed)
        print(f"APDB {db.safe_url}: {args.objects} diaObjects over {side:.2f} deg square "
              f"(filled in {secs:.1f} s)", flush=True)  # fmt: skip
        warm_up()
        head = f"{'diaSources':>10} {'in fp':>6} {'new':>6} {'forced':>6} "
        head += " ".join(f"{k:>9}" for k in ("lock", "load", "associate", "forced", "summaries"))
        print(head + f" {'alerts':>8} {'best s':>8} {'worst s':>8}")
        visit = 100
        for n in args.sources:
            runs = []
            for _ in range(args.repeat):
                visit += 1
                done = exposure_run(db, url, n, visit, args.seed)
                undo(db, visit, done["newIds"])
                runs.append(done)
            best = min(runs, key=lambda d: d["total"])
            tm = best["timings"]
            steps, prev = [], 0.0
            for key in ("lock", "load", "associate", "forced", "summaries", "alerts"):
                steps.append(tm[key] - prev)
                prev = tm[key]
            worst = max(d["total"] for d in runs)
            line = f"{n:>10} {best['inFootprint']:>6} {best['nNewObjects']:>6} "
            line += f"{best['nForced']:>6} " + " ".join(f"{s:>9.3f}" for s in steps[:5])
            print(line + f" {steps[5]:>8.3f} {best['total']:>8.2f} {worst:>8.2f}", flush=True)
    if args.no_sizes:
        return 0
    sizes = alert_sizes(args.prv, args.prv_forced)
    print("\nalert size with 12 months of history (schemaless Avro, bytes):")
    for key, value in sizes.items():
        print(f"  {key:<30} {value:>8}")
    print(f"  {'total':<30} {sum(sizes.values()):>8}   (Rubin's average: ~82 KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
