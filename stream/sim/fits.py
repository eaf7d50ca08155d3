"""FITS and CSV writers of the simulator's exposures, pairs and truth tables.

:func:`write_exposure` writes a :class:`~diffstream.stream.sim.model.SimImage` as LSST-like
multi-extension FITS or a plain single-HDU image, :func:`write_pair` a science/template pair
(and its truth), :func:`write_truth_csv` a structured array.  Apart from :mod:`stream.sim.simulate`
because writing files is a concern of its own, separate from drawing the scene; the simulator's
API module re-exports every name.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from diffstream.stream.sim import render
from diffstream.stream.sim.model import AB_NJY, SimImage, SimPair

__all__ = ["CALIB_KEYWORDS", "LAYOUTS", "write_exposure", "write_pair", "write_truth_csv"]

LAYOUTS = ("lsst-mef", "plain")
CALIB_KEYWORDS = ("auto", "PHOTCALIB", "MAGZP", "FLUXMAG0", "none")


def _calib_cards(sim: SimImage, keyword: str) -> dict[str, tuple]:
    if keyword == "PHOTCALIB":
        return {"PHOTCALIB": (sim.photo_calib, "nJy per count")}
    if keyword == "MAGZP":
        return {"MAGZP": (sim.magzp, "AB mag of 1 count")}
    if keyword == "FLUXMAG0":
        return {"FLUXMAG0": (AB_NJY / sim.photo_calib, "counts of an AB mag 0 source")}
    return {}


def _put(header: fits.Header, cards: dict[str, tuple]) -> None:
    """Set cards; names over 8 characters as HIERARCH (as LSST writes MP_DETECTED_NEGATIVE)."""
    for key, (value, comment) in cards.items():
        name = f"HIERARCH {key}" if len(key) > 8 else key
        header[name] = (value, comment)


def write_exposure(
    sim: SimImage,
    path,
    *,
    layout: str = "lsst-mef",
    calib_keyword: str = "auto",
    include_psf: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write ``sim`` to ``path`` and return the path.

    ``layout='lsst-mef'``: an empty primary HDU with the observation keywords, then IMAGE (with
    the WCS), MASK (with ``MP_<NAME>`` = bit for every plane), VARIANCE and, with
    ``include_psf``, PSF (the unit-sum stamp at the image centre).  ``layout='plain'``: one
    HDU with the image (NaN on BAD pixels), the WCS and the keywords; SATURATE is then the level
    in the image as written (raw level minus the largest sky when the sky was subtracted).
    ``calib_keyword``: ``'auto'`` (PHOTCALIB for lsst-mef, MAGZP for plain), one of
    ``PHOTCALIB`` (nJy/count), ``MAGZP`` (AB mag of 1 count), ``FLUXMAG0`` (counts of mag 0), or
    ``'none'`` for an uncalibrated file.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if calib_keyword not in CALIB_KEYWORDS:
        raise ValueError(f"calib_keyword must be one of {CALIB_KEYWORDS}, got {calib_keyword!r}")
    if calib_keyword == "auto":
        calib_keyword = "PHOTCALIB" if layout == "lsst-mef" else "MAGZP"
    path = Path(path)
    cy, cx = (sim.shape[0] - 1) / 2, (sim.shape[1] - 1) / 2
    saturate = sim.saturation
    if layout == "plain" and sim.sky_subtracted:
        saturate = sim.saturation - sim.sky_max
    cards: dict[str, tuple] = {
        "DATE-OBS": (Time(sim.mjd_obs, format="mjd", scale="tai").isot, "start, TAI"),
        "MJD-OBS": (sim.mjd_obs, "MJD (TAI) at the start of the exposure"),
        "MJD-AVG": (sim.mjd_mid, "MJD (TAI) at the exposure midpoint"),
        "TIMESYS": ("TAI", ""),
        "EXPTIME": (sim.exptime, "s"),
        "FILTER": (sim.band, "band"),
        "BAND": (sim.band, ""),
        "VISIT": (sim.visit, ""),
        "DETECTOR": (sim.detector, ""),
        "GAIN": (sim.gain, "e-/count"),
        "RDNOISE": (sim.read_noise, "e-"),
        "SATURATE": (saturate, "counts"),
        "SKYLEVEL": (sim.sky, "counts at the image centre"),
        "SKYSUB": (sim.sky_subtracted, "sky subtracted from the image"),
        "PSF_FWHM": (
            float(render.FWHM_PER_SIGMA * sim.psf_sigma_map(cx, cy)),
            "px, Gaussian FWHM at the image centre",
        ),
        "BUNIT": ("count", ""),
        **_calib_cards(sim, calib_keyword),
    }
    wcs_header = sim.wcs.to_header(relax=True)
    if layout == "plain":
        image = sim.image.copy()
        image[(sim.mask & (1 << sim.mask_planes["BAD"])) != 0] = np.nan
        hdu = fits.PrimaryHDU(image)
        hdu.header.update(wcs_header)
        _put(hdu.header, cards)
        hdu.writeto(path, overwrite=overwrite)
        return path

    primary = fits.PrimaryHDU()
    _put(primary.header, cards)
    hdus = [primary]
    for name, data in (("IMAGE", sim.image), ("MASK", sim.mask), ("VARIANCE", sim.variance)):
        hdu = fits.ImageHDU(data, name=name)
        hdu.header.update(wcs_header)
        hdu.header["EXTTYPE"] = name
        if name == "MASK":
            for plane, bit in sim.mask_planes.items():
                _put(hdu.header, {f"MP_{plane}": (bit, "mask plane bit")})
        hdus.append(hdu)
    if include_psf:
        psf = fits.ImageHDU(sim.psf_centre.astype(np.float64), name="PSF")
        psf.header["EXTTYPE"] = "PSF"
        psf.header["PSFX"] = (cx, "0-based pixel x of the stamp")
        psf.header["PSFY"] = (cy, "0-based pixel y of the stamp")
        hdus.append(psf)
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)
    return path


def write_truth_csv(truth: np.ndarray, path) -> Path:
    """Write a structured array (truth or stars) as CSV with a header row."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(truth.dtype.names or ())
        for row in truth:
            writer.writerow([repr(v.item()) if isinstance(v, np.floating) else v for v in row])
    return path


def write_pair(
    pair: SimPair, outdir, *, layout: str = "lsst-mef", truth_csv: bool = True
) -> tuple[Path, Path]:
    """Write ``science.fits`` and ``template.fits`` (and ``truth.csv``) into ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    sci = write_exposure(pair.science, outdir / "science.fits", layout=layout)
    tmp = write_exposure(pair.template, outdir / "template.fits", layout=layout)
    if truth_csv:
        write_truth_csv(pair.truth, outdir / "truth.csv")
    return sci, tmp
