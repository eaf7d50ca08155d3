"""Writing the products of a subtraction: FITS planes and metadata.json.

``difference.fits`` and ``score.fits`` are LSST-style exposures (IMAGE, MASK, VARIANCE HDUs,
``MP_<NAME>`` keywords) on the science pixel grid with the science WCS, so any tool that reads
our inputs reads our outputs.  Writes go to a temporary name and are renamed into place, so a
crash never leaves a half-written product behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = ["write_planes", "write_json", "atomic_path"]


def atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_planes(
    path: str | Path,
    *,
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    mask_planes: dict[str, int],
    wcs: WCS,
    header: dict[str, Any] | None = None,
    bunit: str = "nJy",
    psf: np.ndarray | None = None,
) -> Path:
    """IMAGE, MASK (with its MP_ plane cards) and VARIANCE HDUs, plus a ``PSF`` stamp HDU when
    ``psf`` is given (as the LSST layout reads it back), written atomically."""
    path = Path(path)
    shape = np.shape(image)
    if len(shape) != 2 or np.shape(variance) != shape or np.shape(mask) != shape:
        msg = (
            f"image {shape}, variance {np.shape(variance)} and mask {np.shape(mask)} "
            "must be 2-D arrays of one shape"
        )
        raise ValueError(msg)
    primary = fits.PrimaryHDU()
    for key, value in (header or {}).items():
        primary.header[key[:8].upper()] = value
    wcs_header = wcs.to_header(relax=True)
    img = fits.ImageHDU(_shape_only(shape, np.float32), header=wcs_header, name="IMAGE")
    img.header["BUNIT"] = bunit
    msk = fits.ImageHDU(_shape_only(shape, np.int32), header=wcs_header, name="MASK")
    for name, bit in sorted(mask_planes.items(), key=lambda kv: kv[1]):
        key = f"MP_{name}"
        # Plane names longer than FITS's 8 characters go in HIERARCH cards, as afw writes them.
        msk.header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    var = fits.ImageHDU(_shape_only(shape, np.float32), header=wcs_header, name="VARIANCE")
    var.header["BUNIT"] = f"{bunit}^2" if bunit else ""
    tmp = atomic_path(path)
    try:
        with tmp.open("wb") as fh:
            fh.write(_header_bytes(primary))
            for hdu, data in ((img, image), (msk, mask), (var, variance)):
                fh.write(_header_bytes(hdu))
                _write_data(fh, data, hdu.data.dtype)
            if psf is not None:
                # The PSF of these pixels, so that the file stands on its own (e.g. for
                # ``diffstream detect difference.fits``).
                stamp = np.ascontiguousarray(psf, dtype=np.float32)
                fh.write(_header_bytes(fits.ImageHDU(stamp, name="PSF")))
                _write_data(fh, stamp, np.dtype(np.float32))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


# astropy's HDUList.writeto byte-swaps each plane in place, writes it, and swaps it back (two
# passes over the data besides the write); here astropy builds the headers from a zero-stride
# stand-in of the right shape and dtype, and the pixels are cast into big-endian chunks as they
# are written (one pass).  tests/unit/test_outputs.py checks the bytes against astropy's.
_CHUNK_BYTES = 4 * 2**20


def _shape_only(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that takes no memory (for headers)."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def _header_bytes(hdu: Any) -> bytes:
    header = hdu.header.tostring(sep="", endcard=True, padding=True)
    return header.encode("ascii")


def _write_data(fh: Any, data: np.ndarray, dtype: np.dtype) -> None:
    """``data`` as big-endian ``dtype`` (cast as ``astype`` does), padded to FITS blocks."""
    data = np.asarray(data)
    big = np.dtype(dtype).newbyteorder(">")
    ny, nx = data.shape
    rows = max(1, _CHUNK_BYTES // max(1, nx * big.itemsize))
    chunk = np.empty((min(rows, ny), nx), dtype=big)
    for start in range(0, ny, rows):
        part = data[start : start + rows]
        out = chunk[: len(part)]
        np.copyto(out, part, casting="unsafe")
        fh.write(out.data.cast("B"))
    fh.write(bytes(-(ny * nx * big.itemsize) % 2880))


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")
    os.replace(tmp, path)
    return path


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
