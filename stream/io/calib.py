"""Photometric calibration from FITS header keywords: nJy per count.

Pipelines write the zero point in several ways; we take the first one found, in this order
(the order is the contract: a file carrying two conventions is read the same way every time):

=============  ==========================================  ===========================
keyword        meaning                                      nJy per count
=============  ==========================================  ===========================
``PHOTCALIB``  nJy per count, directly (LSST PhotoCalib)    value
``MAGZP``      AB magnitude of a 1-count source             10**((31.4 - zp) / 2.5)
``MAGZERO``    same as MAGZP (older spelling; DECam CP)     10**((31.4 - zp) / 2.5)
``MAGZPT``     same as MAGZP (DECam CP's other spelling)    10**((31.4 - zp) / 2.5)
``FLUXMAG0``   counts of a magnitude-0 (AB) source          3631e9 / FLUXMAG0
``BUNIT``      'nJy': pixels are already calibrated         1.0
``BUNIT``      'MJy/sr' with ``PIXAR_SR`` (JWST, sr/pixel)  1e15 * PIXAR_SR
=============  ==========================================  ===========================

31.4 is the AB magnitude of 1 nJy (AB zero point 3631 Jy = 3631e9 nJy; 2.5 log10(3631e9) =
31.40).  MAGZPT is read as a zero point of the pixel unit (the total counts of the
exposure), like MAGZERO: a per-second zero point would need EXPTIME and is not assumed.
JWST surface brightness: 1 MJy/sr over a pixel of PIXAR_SR steradians is 1e6 Jy x PIXAR_SR
= 1e15 PIXAR_SR nJy (ERR is in the same unit, so the variance scales with it).

A keyword present with a non-numeric, non-finite or non-positive value is a broken
file, not a missing calibration: it raises BadExposure rather than silently falling through
to the next keyword.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from diffstream.stream.ops.errors import BadExposure

__all__ = ["AB_MAG_OF_1_NJY", "photo_calib_from_header"]

AB_MAG_OF_1_NJY = 31.4
_AB_ZERO_NJY = 3631e9
_NJY_PER_MJY = 1e15


def _number(header: Mapping[str, Any], key: str, path: str | None) -> float:
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadExposure(
            f"calibration keyword {key} must be a number, got {value!r}", path=path, keyword=key
        )
    value = float(value)
    if not math.isfinite(value):
        raise BadExposure(
            f"calibration keyword {key} must be finite, got {value!r}", path=path, keyword=key
        )
    return value


def _positive(value: float, key: str, path: str | None) -> float:
    if not value > 0:
        raise BadExposure(
            f"calibration keyword {key} must be > 0, got {value!r}", path=path, keyword=key
        )
    return value


def photo_calib_from_header(
    header: Mapping[str, Any], *, path: str | None = None
) -> tuple[float | None, str]:
    """Return ``(nJy per count, keyword used)``, or ``(None, "none")`` when none is present.

    ``path`` only names the file in error messages.  Raises
    :class:`~stream.ops.errors.BadExposure` when the first keyword found has an unusable value.
    """
    if "PHOTCALIB" in header:
        return _positive(_number(header, "PHOTCALIB", path), "PHOTCALIB", path), "PHOTCALIB"
    for key in ("MAGZP", "MAGZERO", "MAGZPT"):
        if key in header:
            zp = _number(header, key, path)
            try:
                calib = 10.0 ** ((AB_MAG_OF_1_NJY - zp) / 2.5)
            except OverflowError:  # zp far below any real zero point
                calib = math.inf
            if not (math.isfinite(calib) and calib > 0):  # |zp| absurdly large
                raise BadExposure(
                    f"calibration keyword {key}={zp!r} gives nJy/count={calib!r}, "
                    "which must be finite and > 0",
                    path=path,
                    keyword=key,
                )
            return calib, key
    if "FLUXMAG0" in header:
        flux0 = _positive(_number(header, "FLUXMAG0", path), "FLUXMAG0", path)
        return _AB_ZERO_NJY / flux0, "FLUXMAG0"
    bunit = header.get("BUNIT")
    unit = bunit.strip().lower().replace(" ", "") if isinstance(bunit, str) else ""
    if unit == "njy":
        return 1.0, "BUNIT"
    if unit in ("mjy/sr", "mjysr-1", "mjy.sr-1") and "PIXAR_SR" in header:
        pixar = _positive(_number(header, "PIXAR_SR", path), "PIXAR_SR", path)
        return _NJY_PER_MJY * pixar, "BUNIT*PIXAR_SR"
    return None, "none"
