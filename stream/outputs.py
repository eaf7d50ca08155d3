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
) -> Path:
    path = Path(path)
    primary = fits.PrimaryHDU()
    for key, value in (header or {}).items():
        primary.header[key[:8].upper()] = value
    wcs_header = wcs.to_header(relax=True)
    img = fits.ImageHDU(np.asarray(image, dtype=np.float32), header=wcs_header, name="IMAGE")
    img.header["BUNIT"] = bunit
    msk = fits.ImageHDU(np.asarray(mask, dtype=np.int32), header=wcs_header, name="MASK")
    for name, bit in sorted(mask_planes.items(), key=lambda kv: kv[1]):
        key = f"MP_{name}"
        # Plane names longer than FITS's 8 characters go in HIERARCH cards, as afw writes them.
        msk.header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    var = fits.ImageHDU(np.asarray(variance, dtype=np.float32), header=wcs_header, name="VARIANCE")
    var.header["BUNIT"] = f"{bunit}^2" if bunit else ""
    tmp = atomic_path(path)
    fits.HDUList([primary, img, msk, var]).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path


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
