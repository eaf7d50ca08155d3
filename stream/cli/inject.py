"""``diffstream inject``: fake point sources put into a real exposure (stream/sim/inject.py).

    diffstream inject EXPOSURE.fits --out INJECTED.fits [--catalog FAKES.csv]
        [--positions POS.csv | --n-host N --n-sky N] [--snr LO HI | --flux LO HI]
        [--from-stars] [--seed S] [--allow-uncalibrated] [--hdu EXT]

``--positions``: a CSV with columns x, y and either flux (file units) or snr.  Otherwise
positions are drawn, ``--n-host`` on the light of stars and galaxies and ``--n-sky`` on empty
sky, with S/N (total noise over the PSF) or flux uniform in the range given.  The shape is
the exposure's PSF model, or with ``--from-stars`` stamps of its own bright isolated stars.
The output is the input file with the sources added to its image HDU (and their photon
variance to its variance plane when the gain is known); the catalogue lists every fake:
id, x, y, ra, dec, flux (file units), flux_njy (when calibrated), snr, on_host, shape.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffstream.stream.ops.errors import EXIT_BAD_INPUT, EXIT_OK, DiffstreamError

__all__ = ["cmd_inject", "register"]


def register(sub: argparse._SubParsersAction, add_settings_args: Callable) -> None:
    p = sub.add_parser("inject", help="inject fake point sources into a real exposure")
    p.add_argument("exposure", help="FITS file (any layout diffstream subtract reads)")
    p.add_argument("--out", required=True, help="the injected FITS file to write")
    p.add_argument("--catalog", help="CSV of the fakes (default: OUT with .csv)")
    p.add_argument("--positions", help="CSV with x, y and flux or snr columns")
    p.add_argument("--n-host", type=int, default=0, help="fakes on stars and galaxies")
    p.add_argument("--n-sky", type=int, default=0, help="fakes on empty sky")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--snr", type=float, nargs=2, metavar=("LO", "HI"), default=None)
    g.add_argument("--flux", type=float, nargs=2, metavar=("LO", "HI"), default=None)
    p.add_argument(
        "--from-stars",
        action="store_true",
        help="shape: stamps of the exposure's own bright stars, not the PSF model",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hdu", help="image HDU (EXTNAME or index) of a multi-extension file")
    p.add_argument("--allow-uncalibrated", action="store_true")
    p.set_defaults(func=cmd_inject)


def _image_hdu(hdul, hdu: str | None):
    names = [h.name.upper() for h in hdul]
    if hdu is not None:
        return hdul[int(hdu)] if str(hdu).lstrip("-").isdigit() else hdul[str(hdu).upper()]
    for name in ("IMAGE", "SCI"):
        if name in names:
            return hdul[name]
    return next(h for h in hdul if h.data is not None and np.ndim(h.data) == 2)


def _read_positions(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"x", "y"} <= set(rows[0]):
        raise ValueError(f"{path}: needs x and y columns and at least one row")
    x = np.array([float(r["x"]) for r in rows])
    y = np.array([float(r["y"]) for r in rows])
    if "flux" in rows[0]:
        return x, y, np.array([float(r["flux"]) for r in rows]), np.full(len(rows), np.nan)
    if "snr" in rows[0]:
        return x, y, None, np.array([float(r["snr"]) for r in rows])
    raise ValueError(f"{path}: needs a flux or an snr column")


def cmd_inject(args: argparse.Namespace) -> int:
    from astropy.io import fits

    from diffstream.stream.io.fitsio import load_exposure
    from diffstream.stream.sim import inject as inj

    try:
        exp = load_exposure(
            args.exposure, allow_uncalibrated=args.allow_uncalibrated, exposure_id=0,
            **({"hdu": args.hdu} if args.hdu is not None else {}),
        )  # fmt: skip
    except DiffstreamError as exc:
        print(f"diffstream: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    if exp.psf is None:
        print(f"diffstream: error: no PSF for {args.exposure}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rng = np.random.default_rng(args.seed)
    ny, nx = exp.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    fwhm = float(exp.psf.fwhm_at(cx, cy))
    bad = (exp.mask != 0) | ~np.isfinite(exp.image) | ~(exp.variance > 0)
    sc = inj.scene(exp.image, exp.variance, bad, fwhm=fwhm)

    fluxes: np.ndarray | None
    if args.positions:
        try:
            xs, ys, fluxes, snrs = _read_positions(args.positions)
        except (OSError, ValueError, KeyError) as exc:
            print(f"diffstream: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        on_host = np.zeros(len(xs), bool)
    else:
        xs, ys, on_host = inj.choose_positions(sc, n_host=args.n_host, n_sky=args.n_sky, rng=rng)
        lo, hi = args.flux or args.snr or (10.0, 30.0)
        draw = rng.uniform(lo, hi, len(xs))
        fluxes, snrs = (draw, np.full(len(xs), np.nan)) if args.flux else (None, draw)

    size = int(2 * np.ceil(3.0 * fwhm) + 1)
    if args.from_stars:
        stamps = inj.star_stamps(sc, size=size, saturation=exp.saturation)
        if not stamps:
            print("diffstream: error: no bright isolated unsaturated star for --from-stars",
                  file=sys.stderr)  # fmt: skip
            return EXIT_BAD_INPUT
        shapes = [f"star{i % len(stamps)}" for i in range(len(xs))]
        per_fake = [stamps[i % len(stamps)] for i in range(len(xs))]
    else:
        per_fake = [inj.psf_stamp(exp.psf, x, y) for x, y in zip(xs, ys, strict=True)]
        shapes = [f"psf:{exp.psf.source}"] * len(xs)
    # Plain files' variance is estimated from the sky: the host's photon noise is added to
    # the S/N's noise; a stated variance plane already has it.
    host_noise = bool(exp.info.get("variance_estimated"))
    if fluxes is None:
        fluxes = np.array([
            inj.snr_to_flux(sc, s, x, y, r, gain=exp.gain, host_noise=host_noise)
            for s, x, y, r in zip(per_fake, xs, ys, snrs, strict=True)
        ])  # fmt: skip
    else:
        snrs = np.array([
            f / inj.snr_to_flux(sc, s, x, y, 1.0, gain=exp.gain, host_noise=host_noise)
            for s, x, y, f in zip(per_fake, xs, ys, fluxes, strict=True)
        ])  # fmt: skip
    image, variance = inj.inject(exp.image, exp.variance, xs, ys, fluxes, per_fake, gain=exp.gain)

    out = Path(args.out)
    with fits.open(args.exposure) as hdul:
        target = _image_hdu(hdul, args.hdu)
        target.data = (target.data + (image - exp.image)).astype(target.data.dtype)
        names = [h.name.upper() for h in hdul]
        added_var = variance - exp.variance
        if "VARIANCE" in names:
            hdul["VARIANCE"].data = hdul["VARIANCE"].data + added_var
        elif "ERR" in names and target.name.upper() == "SCI":
            hdul["ERR"].data = np.sqrt(hdul["ERR"].data ** 2 + added_var)
        target.header["HISTORY"] = f"diffstream inject: {len(xs)} fakes (seed {args.seed})"
        hdul.writeto(out, overwrite=True)

    ra, dec = exp.wcs.pixel_to_world_values(xs, ys) if len(xs) else (xs, ys)
    cat_path = Path(args.catalog) if args.catalog else out.with_suffix(".csv")
    with cat_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "x", "y", "ra", "dec", "flux", "flux_njy", "snr", "on_host", "shape"])
        for i in range(len(xs)):
            njy = "" if exp.photo_calib is None else f"{fluxes[i] * exp.photo_calib:.6g}"
            w.writerow([i, f"{xs[i]:.3f}", f"{ys[i]:.3f}", f"{ra[i]:.8f}", f"{dec[i]:.8f}",
                        f"{fluxes[i]:.6g}", njy, f"{snrs[i]:.3f}", int(on_host[i]),
                        shapes[i]])  # fmt: skip
    print(f"injected {len(xs)} fakes ({int(on_host.sum())} on hosts) into {out}; "
          f"catalogue {cat_path}")  # fmt: skip
    return EXIT_OK
