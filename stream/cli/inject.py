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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffstream.stream.ops.errors import EXIT_BAD_INPUT, EXIT_OK, BadExposure, DiffstreamError

__all__ = ["Injected", "cmd_inject", "inject_file", "register"]


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


@dataclass
class Injected:
    """What :func:`inject_file` put where (file units; ``flux_njy`` None when uncalibrated)."""

    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    flux: np.ndarray
    flux_njy: np.ndarray | None
    snr: np.ndarray
    on_host: np.ndarray
    shape: list[str]
    fwhm: float

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "x", "y", "ra", "dec", "flux", "flux_njy", "snr", "on_host",
                        "shape"])  # fmt: skip
            for i in range(len(self.x)):
                njy = "" if self.flux_njy is None else f"{self.flux_njy[i]:.6g}"
                w.writerow([i, f"{self.x[i]:.3f}", f"{self.y[i]:.3f}", f"{self.ra[i]:.8f}",
                            f"{self.dec[i]:.8f}", f"{self.flux[i]:.6g}", njy,
                            f"{self.snr[i]:.3f}", int(self.on_host[i]), self.shape[i]])  # fmt: skip


def inject_file(
    src: str | Path,
    dst: str | Path,
    *,
    positions: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray] | None = None,
    n_host: int = 0,
    n_sky: int = 0,
    snr: tuple[float, float] | None = None,
    flux: tuple[float, float] | None = None,
    from_stars: bool = False,
    seed: int = 0,
    hdu: str | None = None,
    allow_uncalibrated: bool = False,
) -> Injected:
    """Fakes into the exposure ``src``, written to ``dst`` (the same file with the sources
    added to its image HDU); see the module docstring.  ``positions``: (x, y, flux or None,
    snr) arrays.  Raises BadExposure for an unusable file, ValueError when ``from_stars``
    finds no star to use."""
    from astropy.io import fits

    from diffstream.stream.io.fitsio import load_exposure
    from diffstream.stream.sim import inject as inj

    exp = load_exposure(str(src), allow_uncalibrated=allow_uncalibrated, exposure_id=0, hdu=hdu)
    if exp.psf is None:
        raise BadExposure("no PSF to shape the fakes", path=str(src), reason="no_psf")
    rng = np.random.default_rng(seed)
    ny, nx = exp.shape
    fwhm = float(exp.psf.fwhm_at((nx - 1) / 2.0, (ny - 1) / 2.0))
    bad = (exp.mask != 0) | ~np.isfinite(exp.image) | ~(exp.variance > 0)
    sc = inj.scene(exp.image, exp.variance, bad, fwhm=fwhm)

    fluxes: np.ndarray | None
    if positions is not None:
        xs, ys, fluxes, snrs = positions
        on_host = np.zeros(len(xs), bool)
    else:
        xs, ys, on_host = inj.choose_positions(sc, n_host=n_host, n_sky=n_sky, rng=rng)
        lo, hi = flux or snr or (10.0, 30.0)
        draw = rng.uniform(lo, hi, len(xs))
        fluxes, snrs = (draw, np.full(len(xs), np.nan)) if flux else (None, draw)

    size = int(2 * np.ceil(3.0 * fwhm) + 1)
    if from_stars:
        stamps = inj.star_stamps(sc, size=size, saturation=exp.saturation)
        if not stamps:
            raise ValueError(f"{src}: no bright isolated unsaturated star for star-stamp fakes")
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

    with fits.open(src) as hdul:
        target = hdul[exp.info["hdu"]]  # the HDU the loader read the image from
        target.data = (target.data + (image - exp.image)).astype(target.data.dtype)
        names = [h.name.upper() for h in hdul]
        added_var = variance - exp.variance
        if "VARIANCE" in names:
            hdul["VARIANCE"].data = hdul["VARIANCE"].data + added_var
        elif "ERR" in names and target.name.upper() == "SCI":
            hdul["ERR"].data = np.sqrt(hdul["ERR"].data ** 2 + added_var)
        target.header["HISTORY"] = f"diffstream inject: {len(xs)} fakes (seed {seed})"
        hdul.writeto(dst, overwrite=True)

    ra, dec = exp.wcs.pixel_to_world_values(xs, ys) if len(xs) else (xs, ys)
    njy = None if exp.photo_calib is None else fluxes * exp.photo_calib
    return Injected(np.asarray(xs), np.asarray(ys), np.asarray(ra), np.asarray(dec), fluxes,
                    njy, np.asarray(snrs), on_host, shapes, fwhm)  # fmt: skip


def cmd_inject(args: argparse.Namespace) -> int:
    positions = None
    if args.positions:
        try:
            positions = _read_positions(args.positions)
        except (OSError, ValueError, KeyError) as exc:
            print(f"diffstream: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    out = Path(args.out)
    try:
        fakes = inject_file(
            args.exposure, out, positions=positions, n_host=args.n_host, n_sky=args.n_sky,
            snr=args.snr, flux=args.flux, from_stars=args.from_stars, seed=args.seed,
            hdu=args.hdu, allow_uncalibrated=args.allow_uncalibrated,
        )  # fmt: skip
    except DiffstreamError as exc:
        print(f"diffstream: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"diffstream: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cat_path = Path(args.catalog) if args.catalog else out.with_suffix(".csv")
    fakes.write_csv(cat_path)
    print(f"injected {len(fakes.x)} fakes ({int(fakes.on_host.sum())} on hosts) into {out}; "
          f"catalogue {cat_path}")  # fmt: skip
    return EXIT_OK
