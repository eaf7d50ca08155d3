"""Faithful small survey files for the tests (no JWST or ZTF file is supplied with the repo).

Built from the published formats, not copied from any file:

* JWST level-3 ``i2d`` (jwst pipeline's ImageModel as written by ``resample``; JWST
  "Science Data Products" documentation, file naming ``jw<ppppp>-o<ooo>_t<tt>_nircam_
  clear-<filter>_i2d.fits``): an empty primary HDU with the observation keywords
  (TELESCOP='JWST', INSTRUME='NIRCAM', DETECTOR='MULTIPLE' for a mosaic of several
  detectors, FILTER, PUPIL, TIMESYS='UTC', EXPSTART/EXPMID/EXPEND in MJD, PROGRAM,
  VISIT, VISIT_ID as strings), then SCI (float32, BUNIT='MJy/sr', PIXAR_SR, PIXAR_A2,
  PHOTMJSR, MJD-AVG, XPOSURE, a TAN WCS), ERR (1-sigma, MJy/sr), CON (int32 context cube),
  WHT (float32 weight), VAR_POISSON, VAR_RNOISE, VAR_FLAT (MJy/sr squared) and a HDRTAB
  binary table.  The ASDF extension (the exact GWCS) is left out: we read the FITS WCS.
  Pixels outside every input exposure are NaN in SCI/ERR with WHT = 0, as resample writes.
* ZTF ``sciimg`` + ``mskimg`` (ZTF Science Data System explanatory supplement):
  INSTRUME='ZTF/MOSAIC', FILTER='ZTF_r', FILTERID, CCDID, QID, RCID, EXPID, OBSMJD
  (exposure start, UTC), EXPTIME, GAIN, SATURATE, MAGZP; the mask is int16 bits.

The pixels come from the seeded simulator (stream.sim), converted to the survey's units, so a
test knows the truth: a JWST pixel of ``c`` nJy is ``c / (1e15 PIXAR_SR)`` MJy/sr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs.utils import proj_plane_pixel_scales

from diffstream.stream.sim.model import SimImage

# NIRCam short-wavelength i2d pixel: 0.031 arcsec -> 2.26e-14 sr (PIXAR_SR), 9.61e-4 arcsec^2.
PIXAR_SR = (0.031 / 206264.806) ** 2
PIXAR_A2 = 0.031**2
NJY_PER_MJYSR = 1e15 * PIXAR_SR


def write_jwst_i2d(
    sim: SimImage, path: Path, *, filter_name: str = "F200W", no_data_rows: int = 6
) -> Path:
    """``sim`` as a NIRCam i2d file (see the module docstring); ``no_data_rows`` rows at the
    bottom are outside every exposure (NaN, WHT = 0)."""
    to_mjysr = sim.photo_calib / NJY_PER_MJYSR  # counts -> MJy/sr
    sci = (sim.image.astype(np.float64) * to_mjysr).astype(">f4")
    err = (np.sqrt(sim.variance.astype(np.float64)) * to_mjysr).astype(">f4")
    var_total = err.astype(np.float64) ** 2
    wht = np.full(sim.shape, sim.exptime, dtype=">f4")
    if no_data_rows:
        for plane in (sci, err):
            plane[:no_data_rows] = np.nan
        wht[:no_data_rows] = 0.0
    mjd_start = sim.mjd_obs
    mjd_end = sim.mjd_obs + sim.exptime / 86400.0
    primary = fits.PrimaryHDU()
    h = primary.header
    for key, value in {
        "TELESCOP": "JWST",
        "INSTRUME": "NIRCAM",
        "DETECTOR": "MULTIPLE",
        "MODULE": "MULTIPLE",
        "CHANNEL": "SHORT",
        "FILTER": filter_name,
        "PUPIL": "CLEAR",
        "PROGRAM": "01234",
        "OBSERVTN": "001",
        "VISIT": "001",
        "VISIT_ID": "01234001001",
        "EXP_TYPE": "NRC_IMAGE",
        "TIMESYS": "UTC",
        "DATE-OBS": "2023-01-01",
        "EXPSTART": mjd_start,
        "EXPMID": (mjd_start + mjd_end) / 2,
        "EXPEND": mjd_end,
        "EFFEXPTM": sim.exptime,
        "DURATION": sim.exptime,
        "CAL_VER": "1.12.5",
        "CRDS_CTX": "jwst_1100.pmap",
    }.items():
        h[key] = value
    sci_h = sim.wcs.to_header(relax=True)
    for key, value in {
        "EXTNAME": "SCI",
        "BUNIT": "MJy/sr",
        "PIXAR_SR": PIXAR_SR,
        "PIXAR_A2": PIXAR_A2,
        "PHOTMJSR": 0.23,
        "PHOTUJA2": 5.4,
        "MJD-BEG": mjd_start,
        "MJD-AVG": (mjd_start + mjd_end) / 2,
        "MJD-END": mjd_end,
        "XPOSURE": sim.exptime,
        "TELAPSE": sim.exptime,
    }.items():
        sci_h[key] = value
    hdus = [
        primary,
        fits.ImageHDU(sci, header=sci_h),
        fits.ImageHDU(err, header=fits.Header([("EXTNAME", "ERR"), ("BUNIT", "MJy/sr")])),
        fits.ImageHDU(
            (wht > 0).astype(">i4")[None, :, :], header=fits.Header([("EXTNAME", "CON")])
        ),
        fits.ImageHDU(wht, header=fits.Header([("EXTNAME", "WHT")])),
    ]
    # Poisson / read-noise / flat shares of the total variance (a plausible split).
    for name, share in (("VAR_POISSON", 0.7), ("VAR_RNOISE", 0.25), ("VAR_FLAT", 0.05)):
        hdus.append(
            fits.ImageHDU(
                (var_total * share).astype(">f4"),
                header=fits.Header([("EXTNAME", name), ("BUNIT", "(MJy/sr)**2")]),
            )
        )
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="FILENAME", format="40A", array=["jw01234001001_02101_00001_nrca1"])]
    )
    table.header["EXTNAME"] = "HDRTAB"
    hdus.append(table)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


# ZTF mskimg bits used by the tests (the full table: stream.io.companions.ZTF_MASK_BITS).
ZTF_SOURCE_BIT = 1 << 1
ZTF_SATURATED_BIT = 1 << 8


def write_ztf_refimg(sim: SimImage, path: Path) -> Path:
    """``sim`` as a ZTF reference image (a coadd: MAGZP, no EXPID or OBSMJD, no SEEING)."""
    h = sim.wcs.to_header(relax=True)
    for key, value in {
        "ORIGIN": "Zwicky Transient Facility",
        "INSTRUME": "ZTF/MOSAIC",
        "FILTER": f"ZTF_{sim.band}",
        "FIELDID": 700,
        "CCDID": 5,
        "QID": 2,
        "NFRAMES": 15,
        "GAIN": sim.gain,
        "MAGZP": sim.magzp,
    }.items():
        h[key] = value
    fits.PrimaryHDU(sim.image.astype(">f4"), header=h).writeto(path, overwrite=True)
    return path


def write_ztf_sciimg(sim: SimImage, path: Path, *, expid: int = 123456789) -> Path:
    """``sim`` as a ZTF science image (single HDU, counts, MAGZP, OBSMJD, SEEING)."""
    h = sim.wcs.to_header(relax=True)
    scale = float(np.mean(proj_plane_pixel_scales(sim.wcs))) * 3600.0  # arcsec / px
    cy, cx = (sim.shape[0] - 1) / 2.0, (sim.shape[1] - 1) / 2.0
    seeing = float(sim.psf_sigma_map(cx, cy)) * 2.3548 * scale
    for key, value in {
        "ORIGIN": "Zwicky Transient Facility",
        "TELESCOP": "P48",
        "INSTRUME": "ZTF/MOSAIC",
        "FILTER": f"ZTF_{sim.band}",
        "FILTERID": {"g": 1, "r": 2, "i": 3}[sim.band],
        "CCDID": 5,
        "QID": 2,
        "RCID": 17,
        "EXPID": expid,
        "FIELDID": 700,
        "OBSMJD": sim.mjd_obs,
        "EXPTIME": sim.exptime,
        "GAIN": sim.gain,
        "SATURATE": float(sim.saturation - sim.sky_max),
        "MAGZP": sim.magzp,
        "SEEING": (seeing, "[arcsec] FWHM of the PSF"),
    }.items():
        h[key] = value
    fits.PrimaryHDU(sim.image.astype(">f4"), header=h).writeto(path, overwrite=True)
    return path
