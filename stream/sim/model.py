"""The simulator's data model: instrument constants and the simulated image and pair.

:class:`Instrument` (detector and site constants), :class:`SimImage` (one exposure as it would
be written) and :class:`SimPair` (science, template and truth).  Apart from
:mod:`stream.sim.simulate` (which builds them) so that :mod:`stream.sim.fits` (which writes
them) can use them without an import cycle; :mod:`stream.sim.simulate` re-exports every name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS

from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.stream.sim.psf import PsfProfile

__all__ = ["AB_NJY", "Instrument", "SimImage", "SimPair"]

AB_NJY = 10 ** (31.4 / 2.5)  # nJy of an AB magnitude 0 source: m = 31.4 - 2.5 log10(f / nJy)


@dataclass(frozen=True)
class Instrument:
    """Detector and site constants of the simulated survey (LSST-like r band defaults)."""

    pixel_scale_arcsec: float = 0.2
    gain: float = 1.6  # e- per count (science)
    read_noise: float = 6.0  # e- per pixel per exposure
    full_well: float = 90_000.0  # e- per pixel per exposure
    zero_point: float = 28.3  # AB mag giving 1 e-/s
    sky_rate: float = 50.0  # sky e-/s/pixel
    exptime: float = 30.0  # s, science exposure
    template_gain: float = 2.5  # e- per template count: a coadd's own unit, so calibs differ

    @property
    def njy_per_e_s(self) -> float:
        """nJy of a source giving 1 e-/s."""
        return AB_NJY * 10 ** (-0.4 * self.zero_point)


@dataclass
class SimImage:
    """One simulated exposure, as it would be written (see :func:`write_exposure`)."""

    image: np.ndarray  # float32 (ny, nx), counts (sky removed when sky_subtracted)
    variance: np.ndarray  # float32, counts^2: expected (sky + sources)/gain + (rn/gain)^2
    mask: np.ndarray  # int32, bits from mask_planes
    wcs: WCS
    psf_sigma_map: Callable  # (x, y) in this image's pixels -> Gaussian sigma in px (truth)
    psf_centre: np.ndarray  # float64 unit-sum odd stamp at the image centre
    photo_calib: float  # nJy per count
    gain: float  # e- per count
    read_noise: float  # e- per pixel (total, for the template coadd)
    sky: float  # counts per pixel at the image centre
    saturation: float  # counts (raw, before sky subtraction)
    mjd_obs: float  # MJD (TAI) at the start of the exposure
    exptime: float  # s (template: total of the coadd)
    band: str
    visit: int
    detector: int
    sky_subtracted: bool = True
    sky_max: float = 0.0  # counts, the largest sky level in the image (for plain SATURATE)
    psf_ellipticity: float = 0.0
    mask_planes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PLANES))
    psf_profile: PsfProfile = field(default_factory=PsfProfile)  # with psf_sigma_map: the truth

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def mjd_mid(self) -> float:
        """Exposure midpoint (the alert's midpointMjdTai)."""
        return self.mjd_obs + 0.5 * self.exptime / 86400.0

    @property
    def magzp(self) -> float:
        """AB magnitude of a source of 1 count: m = MAGZP - 2.5 log10(counts)."""
        return 31.4 - 2.5 * math.log10(self.photo_calib)


@dataclass
class SimPair:
    science: SimImage
    template: SimImage
    truth: np.ndarray  # TRUTH_DTYPE, one row per injected difference source
    stars: np.ndarray  # STAR_DTYPE, the static stars
    params: dict = field(default_factory=dict)
    # stream.sim.trails.TRAIL_TRUTH_DTYPE, the fast movers (science only; empty when none);
    # None only for pairs made elsewhere
    trails: np.ndarray | None = None
