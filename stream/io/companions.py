"""Variance and mask planes that surveys publish as files of their own.

DECam's Community Pipeline writes an image (``ooi``), an inverse-variance weight map
(``oow``) and a data-quality mask (``ood``); ZTF a ``sciimg`` with a bit mask ``mskimg``;
many archives a plain image with a noise map.  ``diffstream subtract --science-variance /
--template-variance FILE --variance-kind KIND --science-mask / --template-mask FILE`` passes
them to :func:`diffstream.stream.io.fitsio.load_exposure`, which calls the readers here.

* Variance kinds: ``variance`` (as is), ``weight`` (inverse variance: 1/w; w <= 0 is a pixel
  with no data, variance +inf, so the loader flags it NO_DATA), ``sigma`` (1-sigma noise:
  s^2).  The kind is said by the caller, never guessed: a weight read as a variance would
  be wrong by orders of magnitude without any visible symptom.
* Masks: ZTF ``mskimg`` bits map to our planes (:data:`ZTF_MASK_BITS`, from the ZTF Science
  Data System's explanatory supplement); bit 1 (a detected source) and bit 11 (a PSF-catalog
  source) are not defects and are ignored.  Any other mask file (DECam ``ood``, a survey we
  do not know): every nonzero pixel is BAD.  The plain rule loses nothing: a pixel a survey
  flags for any reason is kept out of the subtraction.

The companion must have the image's shape; it is read from the HDU with the image's
EXTNAME when it has one (a DECam MEF's CCD), else its first 2-D image.  Each file's path and
SHA-256 go into ``info["inputs"]`` (provenance).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from diffstream.jitcore.masks import MASK_DTYPE
from diffstream.stream.io.fitsread import (
    first_image_hdu,
    is_image,
    load_pixels,
    open_fits,
    read_file,
    read_image,
)
from diffstream.stream.ops.errors import BadExposure

__all__ = ["VARIANCE_KINDS", "ZTF_MASK_BITS", "read_variance_file", "read_mask_file"]

VarianceKind = Literal["variance", "weight", "sigma"]
VARIANCE_KINDS: tuple[str, ...] = ("variance", "weight", "sigma")
# ZTF mskimg bit -> plane.  Bits 1 (source detected) and 11 (PSF-catalog source) are
# deliberately absent: masking them would mask every star and every transient.
ZTF_MASK_BITS: dict[int, str] = {
    0: "BAD",  # aircraft/satellite track
    2: "BAD",  # low responsivity
    3: "BAD",  # high responsivity
    4: "BAD",  # noisy
    5: "SUSPECT",  # optical ghost
    6: "SAT",  # CCD bleed
    7: "CR",  # pixel spike (possible radiation hit)
    8: "SAT",  # saturated
    9: "BAD",  # dead (unresponsive)
    10: "NO_DATA",  # NaN
    12: "SUSPECT",  # halo
}
_BYTES_PER_PIXEL = 8
_SLACK = 64 * 2**20


def _companion_pixels(
    path: str, *, shape: tuple[int, int], extname: str | None, max_pixels: int, what: str
) -> tuple[np.ndarray, str]:
    """The chosen HDU's pixels (int64 for a mask, float32 otherwise) and the SHA-256."""
    raw, sha256 = read_file(path, _BYTES_PER_PIXEL * max_pixels + _SLACK)
    with open_fits(raw, path) as hdul:
        names = [h.name.upper() for h in hdul]
        if extname and extname.upper() in names and is_image(hdul[extname.upper()]):
            hdu = hdul[extname.upper()]
        else:
            hdu = first_image_hdu(hdul, path)
        got = tuple(hdu.shape or ())
        if got != shape:
            raise BadExposure(
                f"{what} file has shape {got}, the image has {shape}",
                path=path,
                reason="shape_mismatch",
            )
        if what == "mask":
            data = load_pixels(hdu, path, "mask")
            if data.dtype.kind not in "iub":
                raise BadExposure(
                    f"mask file must hold integers, got dtype {data.dtype}",
                    path=path,
                    reason="bad_dtype",
                )
            return np.array(data, dtype=np.int64), sha256()
        return read_image(hdu, raw, path, max_pixels, what), sha256()


def read_variance_file(
    path: str,
    *,
    kind: str,
    shape: tuple[int, int],
    extname: str | None = None,
    max_pixels: int = 64 * 2**20,
) -> tuple[np.ndarray, str]:
    """The variance plane (float32, the image's units^2) and the file's SHA-256."""
    if kind not in VARIANCE_KINDS:
        raise ValueError(f"variance kind must be one of {VARIANCE_KINDS}, got {kind!r}")
    plane, sha256 = _companion_pixels(
        path, shape=shape, extname=extname, max_pixels=max_pixels, what="variance"
    )
    finite = np.isfinite(plane)
    if kind == "weight":
        # w <= 0: no exposure covered the pixel (DECam oow, SWarp weights): variance +inf,
        # which the loader flags NO_DATA.  1/w of a positive weight is the variance.
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.where(finite & (plane > 0), 1.0 / plane, np.inf).astype(np.float32)
        var[~finite] = np.nan
        return var, sha256
    neg = finite & (plane < 0)
    if neg.any():
        raise BadExposure(
            f"{kind} file is negative in {int(neg.sum())} pixels (min {plane[neg].min():g}); "
            f"a {kind} must be >= 0",
            path=path,
            reason="negative_variance",
        )
    if kind == "sigma":
        return np.square(plane, dtype=np.float32), sha256
    return np.ascontiguousarray(plane, dtype=np.float32), sha256


def read_mask_file(
    path: str,
    *,
    shape: tuple[int, int],
    planes: dict[str, int],
    instrument: str | None,
    extname: str | None = None,
    max_pixels: int = 64 * 2**20,
) -> tuple[np.ndarray, str, str]:
    """The mask in our plane layout (int32), the file's SHA-256 and the rule used
    ("ztf-bits" or "nonzero-bad")."""
    data, sha256 = _companion_pixels(
        path, shape=shape, extname=extname, max_pixels=max_pixels, what="mask"
    )
    mask = np.zeros(shape, dtype=MASK_DTYPE)
    if instrument == "ZTF":
        for bit, name in ZTF_MASK_BITS.items():
            mask[(data & (1 << bit)) != 0] |= 1 << planes[name]
        return mask, sha256, "ztf-bits"
    mask[data != 0] |= 1 << planes["BAD"]
    return mask, sha256, "nonzero-bad"
