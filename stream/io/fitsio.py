"""Load an exposure from a FITS file into :class:`diffstream.stream.io.exposure.Exposure`.

Two layouts are read:

``lsst-mef``
    HDUs named IMAGE, MASK, VARIANCE (LSST afw's Exposure/MaskedImage files), optionally
    PSF (an image stamp, odd and square).  Mask planes come from ``MP_<NAME>`` keywords
    in the MASK header, else :data:`diffstream.jitcore.masks.DEFAULT_PLANES`.
``sci-err``
    JWST/HST: a SCI image with ERR (1 sigma), WHT and/or DQ extensions
    (:func:`diffstream.stream.io.fitsread.read_sci_err`).
``plain``
    The first HDU holding a 2-D image (or the HDU named by ``hdu``: one CCD of a DECam
    MEF).  Variance is estimated from the image (sep
    background RMS^2 plus the source Poisson term max(image - background, 0) / GAIN when
    GAIN is known); the mask marks non-finite pixels NO_DATA and pixels >= SATURATE SAT.

A variance (or weight, or sigma) map and a mask may come as files of their own
(``variance_path``, ``mask_path``: :mod:`diffstream.stream.io.companions`); they replace the
estimated variance and add to the mask.  What survey headers mean (instrument, ids, band,
time scale) is :mod:`diffstream.stream.io.surveys`' job; every fallback taken there or here
(an id ignored, no calibration) logs a WARNING and is listed in ``info["fallbacks"]``.

Keywords are looked up in the image HDU's header, then the primary header (LSST writes
observation metadata to the primary); ``Exposure.header`` holds that merged view.  The WCS
comes from the image header, or the primary header when the image header has none.

Conventions decided here (document, don't guess):

* ``MJD-OBS`` is the exposure start; the midpoint is MJD-OBS + EXPTIME/2 (``MJD-AVG`` is
  used when MJD-OBS is absent).  ``TIMESYS`` names its time scale; when it is absent the
  value is taken as TAI (LSST's convention) rather than the FITS default UTC, unless the
  instrument documents UTC (DECam, ZTF), and ``info["timesys"]`` records which was
  assumed.  ZTF's ``OBSMJD`` (exposure start) stands in for a missing MJD-OBS; JWST's
  ``XPOSURE``/``EFFEXPTM`` for a missing EXPTIME.
* ``PSF_FWHM`` and ``FWHM`` are in pixels.  ``SEEING`` is in arcsec, converted with the
  WCS pixel scale at the reference pixel, unless its comment mentions pixels ("pix").
* Non-finite pixels stay NaN in ``image`` (and ``variance``) and are flagged NO_DATA; a
  file without a NO_DATA plane gets one at the lowest free bit.

Every failure is a :class:`~stream.ops.errors.BadExposure` naming the file and the reason, with
the underlying exception chained.  Reading the file and decoding its pixels is
:mod:`diffstream.stream.io.fitsread`'s job.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from diffstream.jitcore import psfmeasure
from diffstream.jitcore.background import estimate_background
from diffstream.jitcore.constants import FWHM_PER_SIGMA
from diffstream.jitcore.masks import DEFAULT_PLANES, MASK_DTYPE, bits
from diffstream.jitcore.planes import input_counts
from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.stream.io import surveys
from diffstream.stream.io.calib import photo_calib_from_header
from diffstream.stream.io.companions import read_mask_file, read_variance_file
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.io.fitsread import (
    first_image_hdu,
    is_image,
    load_pixels,
    open_fits,
    read_file,
    read_image,
    read_mef,
    read_sci_err,
)
from diffstream.stream.ops.errors import BadExposure, NotCalibrated

__all__ = ["load_exposure", "load_options", "PSF_BAD_PLANES"]

# Planes that disqualify a star's stamp for PSF measurement.
PSF_BAD_PLANES = ("BAD", "SAT", "CR", "NO_DATA", "EDGE", "INTRP", "SUSPECT")
log = logging.getLogger(__name__)
# A file this much larger than the pixel limit can hold cannot be a valid exposure of
# allowed size: 3 float64 planes per pixel, plus room for headers and tables.
_BYTES_PER_PIXEL_LIMIT = 3 * 8
_BYTES_SLACK = 64 * 2**20
_STRUCTURAL = {
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "EXTNAME",
    "BZERO",
    "BSCALE",
    "BLANK",
    "CHECKSUM",
    "DATASUM",
    "END",
    "COMMENT",
    "HISTORY",
    "",
}


def load_options(settings: Any) -> dict[str, Any]:
    """The :func:`load_exposure` keywords that come from the settings (every caller's)."""
    return {
        "allow_uncalibrated": settings.allow_uncalibrated,
        "max_pixels": settings.max_pixels,
        "max_nonfinite_fraction": settings.max_nonfinite_fraction,
        "psf_size_sigmas": settings.psf_stamp_sigmas,
    }


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _nonfinite(image: np.ndarray, variance: np.ndarray | None) -> np.ndarray:
    """Pixels whose image, or variance when there is one, is not finite."""
    nonfinite = np.isfinite(image)
    if variance is not None:
        nonfinite &= np.isfinite(variance)
    return np.logical_not(nonfinite, out=nonfinite)


def load_exposure(
    path: str | Path,
    *,
    allow_uncalibrated: bool = False,
    visit: int | None = None,
    detector: int | None = None,
    exposure_id: int | None = None,
    max_pixels: int = 64 * 2**20,
    max_nonfinite_fraction: float = 0.5,
    measure_psf: bool = True,
    psf_degree: int = 1,
    psf_size_sigmas: float = 4.0,
    defer_checksum: bool = False,
    hdu: str | int | None = None,
    variance_path: str | Path | None = None,
    variance_kind: str = "variance",
    mask_path: str | Path | None = None,
) -> Exposure:
    """Read ``path`` (plain path; resolve it against the data roots first) into an Exposure.

    ``allow_uncalibrated`` accepts a file with no calibration keyword (``photo_calib``
    None, ``calib_source`` "none"); otherwise that raises NotCalibrated.  ``visit``,
    ``detector``, ``exposure_id`` override the VISIT/DETECTOR/EXPID keywords.
    ``max_pixels`` bounds the image size, ``max_nonfinite_fraction`` the share of NaN/inf
    pixels.  ``measure_psf`` allows measuring the PSF from the stars when the file has no
    PSF HDU (``psf_degree`` is the requested polynomial degree, ``psf_size_sigmas`` the stamp
    half-size in measured sigmas); the PSF_FWHM/FWHM/SEEING
    keyword Gaussian is the last resort.  ``defer_checksum`` returns before the file's
    SHA-256 is known: ``sha256`` is then empty until :meth:`Exposure.checksum` is called.
    ``hdu`` (EXTNAME or index) picks the image HDU of a multi-extension file.
    ``variance_path`` (of ``variance_kind`` "variance", "weight" or "sigma") and
    ``mask_path`` are companion files (stream.io.companions).
    """
    spath = str(path)
    if not max_pixels > 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels}")
    if not 0.0 <= max_nonfinite_fraction <= 1.0:
        raise ValueError(f"max_nonfinite_fraction must be in [0, 1], got {max_nonfinite_fraction}")
    raw, sha256 = read_file(spath, _BYTES_PER_PIXEL_LIMIT * max_pixels + _BYTES_SLACK)
    info: dict[str, Any] = {}
    with open_fits(raw, spath) as hdul:
        names = [hdu.name.upper() for hdu in hdul]
        is_mef = "IMAGE" in names and ("MASK" in names or "VARIANCE" in names)
        mask: np.ndarray | None
        if hdu is None and is_mef:
            layout = "lsst-mef"
            image, variance, mask, planes, img_hdu = read_mef(
                hdul, names, raw, spath, max_pixels, info
            )
        elif hdu is None and _is_sci_err(hdul, names):
            layout = "sci-err"
            image, variance, mask, planes, img_hdu = read_sci_err(
                hdul, names, raw, spath, max_pixels, info
            )
        else:
            layout = "plain"
            img_hdu = _chosen_hdu(hdul, hdu, spath)
            image = read_image(img_hdu, raw, spath, max_pixels, "image")
            variance, mask, planes = None, None, dict(DEFAULT_PLANES)
            info["mask_planes_from"] = "default"
            n_images = sum(1 for h in hdul if is_image(h) and len(h.shape or ()) == 2)
            if hdu is None and n_images > 1:
                # A DECam CP file holds 60 CCDs: reading the first without being told to is a
                # guess, so it is said (the run goes on: the first image is a valid exposure).
                surveys.flag(
                    info, spath, "first_hdu_chosen",
                    f"{n_images} image HDUs and no --science-hdu/--template-hdu: read the "
                    f"first, {img_hdu.name or 'PRIMARY'!r}",
                    hdu=img_hdu.name,
                )  # fmt: skip
        info["hdu"] = next(i for i, h in enumerate(hdul) if h is img_hdu)
        primary = hdul[0].header
        header = _merged_header(img_hdu.header, primary if img_hdu is not hdul[0] else None, spath)
        wcs = _celestial_wcs([img_hdu.header, primary], spath, image.shape)
        psf_stamp = _psf_hdu_stamp(hdul, names, spath, info)

    # Cheap keyword checks first: a file refused for its header costs no PSF measurement.
    instrument = surveys.instrument_of(header)
    info["instrument"] = instrument
    gain = _optional_positive(header, "GAIN", spath)
    saturation = _optional_positive(header, "SATURATE", spath)
    photo_calib, calib_source = photo_calib_from_header(header, path=spath)
    if photo_calib is None:
        if not allow_uncalibrated:
            raise NotCalibrated(
                "no photometric calibration keyword (PHOTCALIB, MAGZP, MAGZERO, MAGZPT, "
                "FLUXMAG0, BUNIT='nJy' or BUNIT='MJy/sr' with PIXAR_SR) and "
                "allow_uncalibrated is off",
                path=spath,
                reason="not_calibrated",
            )
        surveys.flag(
            info, spath, "uncalibrated",
            "no photometric calibration keyword: fluxes stay in the file's units "
            "(allow_uncalibrated)",
        )  # fmt: skip
    midpoint, exptime = _midpoint(header, spath, info, instrument)
    band, info["filter"] = surveys.band_of(header, instrument)
    ids = surveys.header_ids(
        header,
        instrument=instrument,
        given={"visit": visit, "detector": detector, "exposure_id": exposure_id},
        path=spath,
        info=info,
    )
    visit, detector, exposure_id = ids["visit"], ids["detector"], ids["exposure_id"]
    if variance_path is not None:
        variance, digest = read_variance_file(
            str(variance_path), kind=variance_kind, shape=image.shape,
            extname=img_hdu.name or None, max_pixels=max_pixels,
        )  # fmt: skip
        info["variance_from"] = f"file ({variance_kind})"
        info.setdefault("inputs", {})["variance"] = {"path": str(variance_path), "sha256": digest}
    if mask_path is not None:
        extra, digest, rule = read_mask_file(
            str(mask_path), shape=image.shape, planes=planes, instrument=instrument,
            extname=img_hdu.name or None, max_pixels=max_pixels,
        )  # fmt: skip
        mask = extra if mask is None else mask | extra
        info["mask_from"] = f"file ({rule})"
        info.setdefault("inputs", {})["mask"] = {"path": str(mask_path), "sha256": digest}

    # These whole-image passes run while the file's hash is computed on another thread;
    # count_nonzero and a masked bitwise_or avoid the float mean and the boolean fancy
    # index (each ~3x slower on a 4k x 4k image).
    fused = (
        variance is not None and image.dtype in _FLOATS and variance.dtype in _FLOATS
        and image.shape == variance.shape
    )  # fmt: skip
    if fused:
        # Both checks in one pass (the NumPy form below: seven passes, ~8 ms a 4k file); the
        # non-finite plane is made only where it is used (a file with such pixels).
        counts = input_counts(image, variance)
        n_nonfinite, n_negative = int(counts[0]), int(counts[1])
        nonfinite = _nonfinite(image, variance) if n_nonfinite else None
    else:
        nonfinite = _nonfinite(image, variance)
        n_nonfinite = int(np.count_nonzero(nonfinite))
    frac = n_nonfinite / image.size
    info["nonfinite_fraction"] = frac
    if frac > max_nonfinite_fraction:
        raise BadExposure(
            f"{frac:.1%} of pixels are non-finite > allowed {max_nonfinite_fraction:.1%}",
            path=spath,
            reason="nonfinite",
        )
    if mask is None:
        mask = np.zeros(image.shape, dtype=MASK_DTYPE)
    if saturation is not None and layout == "plain":
        with np.errstate(invalid="ignore"):
            mask[image >= saturation] |= 1 << planes["SAT"]
    if n_nonfinite:
        planes = _ensure_plane(planes, "NO_DATA", spath)
        np.bitwise_or(mask, 1 << planes["NO_DATA"], out=mask, where=nonfinite)
    if variance is None:
        # (``nonfinite`` is always made when there is no variance plane: not fused)
        variance = _estimate_variance(
            image, _nonfinite(image, None) if nonfinite is None else nonfinite, gain, info
        )
    elif not fused or n_negative:
        neg = variance < 0  # NaN compares False; -inf is non-finite, not negative
        if neg.any():
            neg &= np.isfinite(variance)
        if neg.any():
            raise BadExposure(
                f"variance is negative in {int(neg.sum())} pixels (min {variance[neg].min():g}); "
                "variance must be >= 0",
                path=spath,
                reason="negative_variance",
            )

    psf = _choose_psf(
        psf_stamp,
        image,
        variance,
        mask,
        planes,
        saturation,
        header,
        wcs,
        spath,
        measure_psf,
        (psf_degree, psf_size_sigmas),
        info,
    )
    return Exposure(
        image=image,
        variance=np.ascontiguousarray(variance, dtype=np.float32),
        mask=mask,
        mask_planes=planes,
        wcs=wcs,
        psf=psf,
        photo_calib=photo_calib,
        calib_source=calib_source,
        midpoint_mjd_tai=midpoint,
        exposure_time=exptime,
        band=band,
        visit=visit,
        detector=detector,
        exposure_id=exposure_id,
        gain=gain,
        saturation=saturation,
        path=spath,
        sha256="" if defer_checksum else sha256(),
        layout=layout,
        header=header,
        info=info,
        pending_sha256=sha256 if defer_checksum else None,
    )


# --- reading (stream.io.fitsread) -------------------------------------------------------------


def read_bytes(path: str, limit: int) -> tuple[bytes, str]:
    """The file's (decompressed) bytes and the SHA-256 of the bytes as stored on disk.

    Kept for callers that want the digest at once (stream.io.calibrated); load_exposure uses
    :func:`diffstream.stream.io.fitsread.read_file`, which hashes while the pixels are decoded."""
    raw, sha256 = read_file(path, limit)
    return raw, sha256()


def _is_sci_err(hdul: fits.HDUList, names: list[str]) -> bool:
    """A SCI image with at least one of its noise/quality planes: a lone HDU named SCI is
    read as a plain image (tests/unit/test_fitsio.py's first-extension case)."""
    planes = ("ERR", "WHT", "DQ", "VAR_POISSON", "VAR_RNOISE")
    return "SCI" in names and is_image(hdul["SCI"]) and any(n in names for n in planes)


def _chosen_hdu(hdul: fits.HDUList, hdu: str | int | None, path: str) -> Any:
    """The image HDU named (EXTNAME, case-blind) or numbered by ``hdu``; the first 2-D image
    when None."""
    if hdu is None:
        return first_image_hdu(hdul, path)
    names = [h.name.upper() for h in hdul]
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)
    if isinstance(hdu, int):
        if not 0 <= hdu < len(hdul):
            raise BadExposure(
                f"HDU {hdu} requested, the file has {len(hdul)} HDUs ({names})",
                path=path,
                reason="missing_hdu",
            )
        chosen = hdul[hdu]
    else:
        if hdu.upper() not in names:
            raise BadExposure(
                f"HDU {hdu!r} requested, the file has {names}", path=path, reason="missing_hdu"
            )
        chosen = hdul[names.index(hdu.upper())]
    if not is_image(chosen):
        raise BadExposure(
            f"HDU {hdu!r} is a {type(chosen).__name__}, not an image", path=path, reason="no_image"
        )
    return chosen


def _ensure_plane(planes: dict[str, int], name: str, path: str) -> dict[str, int]:
    if name in planes:
        return planes
    free = sorted(set(range(31)) - set(planes.values()))
    if not free:
        raise BadExposure(f"no free mask bit for plane {name}", path=path, reason="bad_mask_planes")
    return {**planes, name: free[0]}


def _merged_header(ext: fits.Header, primary: fits.Header | None, path: str) -> fits.Header:
    """The image header plus primary cards it lacks (the extension wins on conflicts).

    A primary card astropy cannot render (e.g. a NUL in a string value) is left out with a
    WARNING: an odd card in a real survey file is no reason to refuse its pixels."""
    merged = ext.copy()
    if primary is None:
        return merged
    for card in primary.cards:
        key = card.keyword
        if key in _STRUCTURAL or key.startswith("NAXIS") or key in merged:
            continue
        try:
            image = card.image
        except (ValueError, fits.VerifyError) as exc:
            log.warning("%s: primary header card %s is unreadable, left out: %s", path, key, exc)
            continue
        merged.append(fits.Card.fromstring(image))
    return merged


# --- WCS and PSF ---------------------------------------------------------------------------


def _celestial_wcs(headers: list[fits.Header], path: str, shape: tuple[int, ...]) -> WCS:
    problems = []
    for k, header in enumerate(headers):
        if any(header is h for h in headers[:k]):
            continue  # a single-HDU file: image and primary header are the same
        try:
            with warnings.catch_warnings(record=True) as fixes:
                warnings.simplefilter("always", FITSFixedWarning)
                wcs = WCS(header)
        except Exception as exc:  # astropy raises many types for broken WCS keywords
            problems.append(f"{type(exc).__name__}: {exc}")
            continue
        if not wcs.has_celestial:
            continue
        # wcslib's cdfix replaces an all-zero CD row/column by the unit matrix, which turns a
        # broken header into a plausible-looking 1 deg/pixel WCS; refuse it instead.
        if any("cdfix" in str(w.message) for w in fixes):
            raise BadExposure(
                "WCS has a degenerate CD matrix (a row or column of zeros)",
                path=path,
                reason="bad_wcs",
            )
        if wcs.naxis != 2:
            wcs = wcs.celestial
        ny, nx = shape
        try:
            sky = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
        except Exception as exc:  # e.g. a singular CD matrix only fails when evaluated
            raise BadExposure(
                f"WCS cannot be evaluated at the image centre: {exc}", path=path, reason="bad_wcs"
            ) from exc
        if not all(np.isfinite(sky)):
            raise BadExposure(
                "WCS gives non-finite sky coordinates at the image centre",
                path=path,
                reason="bad_wcs",
            )
        return wcs
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise BadExposure(
        f"no celestial WCS in the image or primary header{detail}", path=path, reason="no_wcs"
    )


def _psf_hdu_stamp(hdul, names, path, info) -> np.ndarray | None:
    if "PSF" not in names:
        return None
    hdu = hdul["PSF"]
    if not is_image(hdu):
        # LSST stores its PSF model in a binary-table archive we do not parse.
        info["psf_hdu_ignored"] = f"PSF HDU is a {type(hdu).__name__}, not an image stamp"
        return None
    stamp = load_pixels(hdu, path, "PSF").astype(np.float64)
    if stamp.ndim != 2 or stamp.shape[0] != stamp.shape[1] or stamp.shape[0] % 2 == 0:
        raise BadExposure(
            f"PSF HDU stamp must be square with odd size, got shape {stamp.shape}",
            path=path,
            reason="bad_psf",
        )
    return stamp


def _choose_psf(
    stamp, image, variance, mask, planes, saturation, header, wcs, path, measure, shape_opts, info
) -> PsfModel:
    degree, size_sigmas = shape_opts
    shape = (int(image.shape[0]), int(image.shape[1]))
    if stamp is not None:
        try:
            return PsfModel.constant(stamp, shape, source="hdu")
        except ValueError as exc:
            raise BadExposure(f"unusable PSF HDU: {exc}", path=path, reason="bad_psf") from exc
    if measure:
        try:
            return psfmeasure.measure_psf(
                image,
                variance,
                mask,
                bad_bits=bits(planes, PSF_BAD_PLANES),
                saturation=saturation,
                degree=degree,
                size_sigmas=size_sigmas,
            )
        except ValueError as exc:
            info["psf_measure_error"] = str(exc)
    fwhm = _keyword_fwhm(header, wcs, path, info)
    if fwhm is None:
        why = info.get("psf_measure_error", "measurement disabled")
        raise BadExposure(
            f"no PSF: no PSF HDU, measurement failed ({why}), and no PSF_FWHM/FWHM/SEEING keyword",
            path=path,
            reason="no_psf",
        )
    sigma = fwhm / FWHM_PER_SIGMA
    model = PsfModel.constant(
        gaussian_psf(sigma, psfmeasure.stamp_size_for_sigma(sigma)), shape, source="keyword"
    )
    why = info.get("psf_measure_error", "measurement disabled")
    model.info = {"fwhm": fwhm, "keyword": info["psf_keyword"], "measure_error": why}
    # Never silent (issue 12): the Gaussian lacks the real PSF's wings.
    log.warning("%s: PSF from the %s keyword (Gaussian, FWHM %.2f px): %s", path,
                info["psf_keyword"], fwhm, why)  # fmt: skip
    return model


def _keyword_fwhm(header, wcs, path, info) -> float | None:
    for key in ("PSF_FWHM", "FWHM", "SEEING"):
        if key not in header:
            continue
        value = _number(header, key, path)
        if not value > 0:
            raise BadExposure(f"{key} must be > 0, got {value!r}", path=path, reason="bad_psf")
        if key == "SEEING" and "pix" not in str(header.comments[key]).lower():
            scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0  # arcsec / pixel
            value /= scale
            info["psf_keyword_scale_arcsec"] = scale
        info["psf_keyword"] = key
        return value
    return None


# --- keywords --------------------------------------------------------------------------------


def _number(header: fits.Header, key: str, path: str) -> float:
    value = header[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise BadExposure(
            f"keyword {key} must be a finite number, got {value!r}",
            path=path,
            reason="bad_keyword",
            keyword=key,
        )
    return float(value)


def _optional_positive(header: fits.Header, key: str, path: str) -> float | None:
    if key not in header:
        return None
    value = _number(header, key, path)
    if not value > 0:
        raise BadExposure(
            f"keyword {key} must be > 0, got {value!r}",
            path=path,
            reason="bad_keyword",
            keyword=key,
        )
    return value


def _midpoint(header, path, info, instrument=None) -> tuple[float | None, float | None]:
    exptime = None
    exp_key = surveys.exposure_time_keyword(header)
    if exp_key is not None:
        exptime = _number(header, exp_key, path)
        if exptime < 0:
            raise BadExposure(
                f"{exp_key} must be >= 0, got {exptime!r}",
                path=path,
                reason="bad_keyword",
                keyword=exp_key,
            )
    # The exposure start (MJD-OBS; ZTF's OBSMJD) plus half the exposure, or the midpoint.
    start_key = next((k for k in ("MJD-OBS", "OBSMJD") if k in header), None)
    if start_key is not None:
        mjd = _number(header, start_key, path) + (exptime or 0.0) / 2.0 / 86400.0
        if exptime is None:
            info["midpoint_note"] = f"EXPTIME missing: midpoint is {start_key}"
    elif "MJD-AVG" in header:
        mjd = _number(header, "MJD-AVG", path)
    else:
        return None, exptime
    documented = surveys.default_timesys(instrument)
    if "TIMESYS" in header:
        scale = str(header["TIMESYS"]).strip().lower()
        info["timesys"] = scale.upper()
    elif documented is not None:
        scale = documented.lower()
        info["timesys"] = f"{documented} ({instrument} convention)"
    else:
        scale = "tai"
        info["timesys"] = "TAI (assumed)"
    if scale != "tai":
        if scale in Time.SCALES and scale != "local":
            mjd = float(Time(mjd, format="mjd", scale=scale).tai.mjd)
        else:
            info["timesys_note"] = f"unknown TIMESYS {scale!r}: taken as TAI"
    return mjd, exptime


def _estimate_variance(image, nonfinite, gain, info) -> np.ndarray:
    bkg, rms = estimate_background(image, nonfinite)
    var = rms**2
    if gain is not None:
        with np.errstate(invalid="ignore"):
            var = var + np.maximum(image - bkg, 0.0) / gain
    var[nonfinite] = np.nan
    info["variance_estimated"] = True
    info["background_rms_median"] = float(np.median(rms))
    return var
