"""The in-memory exposure: pixels, mask, variance, WCS, PSF, calibration, observation info.

Loading (stream.io.fitsio) fills this; the pipeline reads it; jitcore never sees it (it takes
plain arrays).  Pixel values stay in the file's units until the photometric scaling step,
which multiplies by ``photo_calib`` (nJy per count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from astropy.io.fits import Header
from astropy.wcs import WCS

from diffstream.jitcore.psf import PsfModel

__all__ = ["Exposure"]


@dataclass
class Exposure:
    image: np.ndarray  # float32 (ny, nx)
    variance: np.ndarray  # float32 (ny, nx), same units^2 as image
    mask: np.ndarray  # int32 (ny, nx)
    mask_planes: dict[str, int]  # plane name -> bit index
    wcs: WCS
    psf: PsfModel | None
    photo_calib: float | None  # nJy per count; None = uncalibrated (--allow-uncalibrated)
    calib_source: str = ""  # which keyword gave photo_calib
    midpoint_mjd_tai: float | None = None
    exposure_time: float | None = None
    band: str | None = None
    visit: int | None = None
    detector: int | None = None
    exposure_id: int | None = None
    gain: float | None = None
    saturation: float | None = None
    path: str = ""
    sha256: str = ""
    layout: str = ""  # "lsst-mef" or "plain"
    header: Header = field(default_factory=Header)
    info: dict[str, Any] = field(default_factory=dict)
    # Set by load_exposure(defer_checksum=True): the hash still running; see checksum().
    pending_sha256: Callable[[], str] | None = field(default=None, repr=False)

    def checksum(self) -> str:
        """The file's SHA-256, waiting for a deferred hash to finish (then kept)."""
        if self.pending_sha256 is not None:
            self.sha256 = self.pending_sha256()
            self.pending_sha256 = None
        return self.sha256

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    def without_pixels(self) -> Exposure:
        """This exposure with its pixel planes released (what is left: WCS, PSF, calibration,
        ids, header, info, path and the pending checksum, which it shares).

        For a step past which the pixels are no longer read (the template after the warp):
        dropping the last reference to the original frees ~200 MB at 4k.  The planes become
        read-only broadcasts of one value, which keep ``shape`` and use no memory: NaN image
        and variance, every mask bit set, so that a read that should not happen finds no data
        rather than plausible pixels.
        """
        shape = self.shape
        return replace(
            self,
            image=np.broadcast_to(np.float32(np.nan), shape),
            variance=np.broadcast_to(np.float32(np.nan), shape),
            mask=np.broadcast_to(np.int32(-1), shape),
        )

    def bitmask(self, *names: str) -> int:
        value = 0
        for name in names:
            if name in self.mask_planes:
                value |= 1 << self.mask_planes[name]
        return value
