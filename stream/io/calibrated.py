"""prepareCalibratedExposure: apply an external PSF and add back a background.

The seed task can replace a calexp's PSF by a finalized one (doApplyFinalizedPsf) and add
the calexp background back (doAddCalexpBackground) before subtracting.  Here both come as
FITS files next to the exposure:

* PSF (``--science-psf``, ``--template-psf``): an image stamp, odd and square, in the
  exposure's pixels (normalised to unit sum here); either a plain FITS image (the first HDU
  holding a 2-D image) or an LSST-style file with a ``PSF`` image HDU.  LSST's own PSF
  archives are binary tables (a CoaddPsf or PsfEx model) that we do not parse: such a file
  is refused with a message saying so.  The result is a constant PSF
  (``PsfModel.source == "external"``): an external PSF is taken as authoritative, so the
  pipeline must not re-measure it.
* Background (``--science-background``): an image of exactly the exposure's shape, in the
  exposure's units (counts, before photometric calibration), added to the image.  The
  variance plane is left alone: a background model carries no pixel noise of its own.  A
  plain FITS image or the ``IMAGE`` HDU of an LSST-style file.

Every failure is a BadExposure naming the file and the reason.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from astropy.io import fits

from diffstream.jitcore.psf import PsfModel
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.io.fitsio import open_fits, read_bytes
from diffstream.stream.ops.errors import BadExposure

__all__ = ["apply_external", "read_psf_stamp", "read_background", "MAX_PSF_SIZE"]

MAX_PSF_SIZE = 255  # px; LSST PSF images are ~41 px, anything near this is not a PSF stamp
_PSF_BYTES = 64 * 2**20
_BYTES_SLACK = 16 * 2**20


def _image_hdus(hdul: fits.HDUList) -> list:
    return [
        hdu
        for hdu in hdul
        if isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU)
        and hdu.shape is not None
        and len(hdu.shape) == 2
        and min(hdu.shape) > 0
    ]


def _data(hdu, path: str, what: str) -> np.ndarray:
    try:
        data = np.asarray(hdu.data)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise BadExposure(f"corrupt {what} data: {exc}", path=path, reason="corrupt") from exc
    if data.dtype.kind not in "fiu":
        raise BadExposure(
            f"{what} holds dtype {data.dtype}, need real numbers", path=path, reason="bad_dtype"
        )
    return data.astype(np.float64)


def read_psf_stamp(path: str | Path) -> np.ndarray:
    """The PSF stamp of ``path`` (float64, unit sum); see the module docstring for layouts."""
    return _psf_stamp_and_sha256(path)[0]


def _psf_stamp_and_sha256(path: str | Path) -> tuple[np.ndarray, str]:
    """:func:`read_psf_stamp` and the file's SHA-256 (an input of the run: provenance)."""
    spath = str(path)
    raw, sha256 = read_bytes(spath, _PSF_BYTES)
    with open_fits(raw, spath) as hdul:
        names = [hdu.name.upper() for hdu in hdul]
        if "PSF" in names:
            hdu = hdul["PSF"]
            if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
                raise BadExposure(
                    f"PSF HDU is a {type(hdu).__name__} (an LSST PSF model archive?), "
                    "not an image stamp; give the PSF as an image",
                    path=spath,
                    reason="bad_psf",
                )
        elif "IMAGE" in names:
            raise BadExposure(
                "looks like an exposure (IMAGE HDU) but has no PSF HDU; give a PSF stamp",
                path=spath,
                reason="bad_psf",
            )
        else:
            images = _image_hdus(hdul)
            if not images:
                raise BadExposure("no 2-D image HDU to read a PSF stamp from", path=spath,
                                  reason="bad_psf")  # fmt: skip
            hdu = images[0]
        stamp = _data(hdu, spath, "PSF")
    if stamp.ndim != 2 or stamp.shape[0] != stamp.shape[1] or stamp.shape[0] % 2 == 0:
        raise BadExposure(
            f"PSF stamp must be square with an odd size, got shape {stamp.shape}",
            path=spath,
            reason="bad_psf",
        )
    if stamp.shape[0] > MAX_PSF_SIZE:
        raise BadExposure(
            f"PSF stamp is {stamp.shape[0]} px > {MAX_PSF_SIZE} px allowed",
            path=spath,
            reason="bad_psf",
        )
    if not np.all(np.isfinite(stamp)):
        raise BadExposure(
            f"PSF stamp has {int((~np.isfinite(stamp)).sum())} non-finite pixels",
            path=spath,
            reason="bad_psf",
        )
    total = float(stamp.sum())
    if not total > 0:
        raise BadExposure(
            f"PSF stamp must have a positive sum, got {total:g}", path=spath, reason="bad_psf"
        )
    return stamp / total, sha256


def read_background(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """The background image of ``path`` (float64), which must have ``shape`` (ny, nx)."""
    return _background_and_sha256(path, shape)[0]


def _background_and_sha256(path: str | Path, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    """:func:`read_background` and the file's SHA-256."""
    spath = str(path)
    limit = 8 * shape[0] * shape[1] + _BYTES_SLACK
    raw, sha256 = read_bytes(spath, limit)
    with open_fits(raw, spath) as hdul:
        names = [hdu.name.upper() for hdu in hdul]
        if "IMAGE" in names:
            hdu = hdul["IMAGE"]
        else:
            images = _image_hdus(hdul)
            if not images:
                raise BadExposure("no 2-D image HDU to read a background from", path=spath,
                                  reason="bad_background")  # fmt: skip
            hdu = images[0]
        hdu_shape = tuple(hdu.shape or ())
        if hdu_shape != tuple(shape):
            raise BadExposure(
                f"background shape {hdu_shape} differs from the exposure's {tuple(shape)}",
                path=spath,
                reason="shape_mismatch",
            )
        return _data(hdu, spath, "background"), sha256


def apply_external(
    exposure: Exposure,
    *,
    psf_path: str | Path | None = None,
    background_path: str | Path | None = None,
) -> Exposure:
    """A copy of ``exposure`` with an external PSF and/or a background added back.

    ``psf_path``: PSF stamp file (replaces ``exposure.psf`` by a constant PSF with source
    "external").  ``background_path``: image of the exposure's shape and units, added to
    the image; its pixels must be finite wherever the image is.  Neither given: the same
    exposure is returned.  ``exposure.info`` records what was applied (``psf_external``,
    ``background_added`` with the file and the mean level added, ``inputs`` the path and
    SHA-256 of each file read, for the run's provenance).  Raises BadExposure.
    """
    if psf_path is None and background_path is None:
        return exposure
    info = dict(exposure.info)
    changes: dict = {}
    inputs = dict(info.get("inputs", {}))
    if psf_path is not None:
        stamp, sha256 = _psf_stamp_and_sha256(psf_path)
        if stamp.shape[0] > min(exposure.shape):
            raise BadExposure(
                f"PSF stamp of {stamp.shape[0]} px is larger than the exposure {exposure.shape}",
                path=str(psf_path),
                reason="bad_psf",
            )
        psf = PsfModel.constant(stamp, exposure.shape, source="external")
        psf.info = {"path": str(psf_path)}
        changes["psf"] = psf
        info["psf_external"] = str(psf_path)
        inputs["psf"] = {"path": str(psf_path), "sha256": sha256}
    if background_path is not None:
        bkg, sha256 = _background_and_sha256(background_path, exposure.shape)
        finite_image = np.isfinite(exposure.image)
        holes = finite_image & ~np.isfinite(bkg)
        if holes.any():
            raise BadExposure(
                f"background is non-finite in {int(holes.sum())} pixels where the image has "
                "data; it must be finite there",
                path=str(background_path),
                reason="bad_background",
            )
        image = np.where(finite_image, exposure.image + bkg, exposure.image)
        changes["image"] = np.ascontiguousarray(image, dtype=np.float32)
        level = float(np.mean(bkg[finite_image])) if finite_image.any() else 0.0
        info["background_added"] = {"path": str(background_path), "mean": level}
        inputs["background"] = {"path": str(background_path), "sha256": sha256}
    info["inputs"] = inputs
    changes["info"] = info
    return dataclasses.replace(exposure, **changes)
