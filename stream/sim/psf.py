"""The simulator's own PSF profiles: pixel-integrated Gaussian and Moffat stamps.

Own code, not diffstream.jitcore.psf (issue 13): the truth of a science test must not come
from the code under test, or an error there would cancel out of the comparison.

* Gaussian: integrated over each pixel exactly (differences of error functions), so narrow
  PSFs (sigma ~ 1 px) keep their width.
* Moffat, I(r) ~ (1 + (r/alpha)^2)^-beta, FWHM = 2 alpha sqrt(2^(1/beta) - 1): the wings
  real seeing has and a Gaussian lacks (beta 2.5-4.5 for atmospheric seeing).  Integrated by
  averaging an ``OVERSAMPLE`` x ``OVERSAMPLE`` grid of point samples per pixel (the Moffat has
  no closed-form pixel integral); 5 x 5 keeps the second moments within 0.2% of a 15 x 15
  integration at FWHM 2.4 px (tests/unit/test_sim_psf.py).

Both stamps are odd-sized, centred on the middle pixel plus (dx, dy), and have unit sum
(what falls outside the stamp is dropped: the stamp *is* the truth the images are made of).
:class:`PsfProfile` says which profile a simulated image uses and how beta varies over it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

__all__ = ["PROFILES", "PsfProfile", "gaussian_stamp", "moffat_stamp", "moffat_alpha"]

PROFILES = ("gaussian", "moffat")
OVERSAMPLE = 5
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _check(size: int, ellipticity: float) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"stamp size must be odd and >= 1, got {size}")
    if not 0.0 <= abs(ellipticity) < 1.0:
        raise ValueError(f"ellipticity must be in (-1, 1), got {ellipticity}")


def gaussian_stamp(
    sigma: float, size: int, *, dx: float = 0.0, dy: float = 0.0, ellipticity: float = 0.0
) -> np.ndarray:
    """Pixel-integrated Gaussian of ``sigma`` px (axes sigma (1 +- ellipticity)), unit sum."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")
    _check(size, ellipticity)
    half = size // 2
    edges = np.arange(-half - 0.5, half + 1.0)
    ax = np.diff(erf((edges - dx) / (math.sqrt(2.0) * sigma * (1.0 + ellipticity))))
    ay = np.diff(erf((edges - dy) / (math.sqrt(2.0) * sigma * (1.0 - ellipticity))))
    stamp = np.outer(ay, ax)
    return stamp / stamp.sum()


def moffat_alpha(fwhm: float, beta: float) -> float:
    """The Moffat core radius alpha giving ``fwhm`` at index ``beta``."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_stamp(
    fwhm: float,
    beta: float,
    size: int,
    *,
    dx: float = 0.0,
    dy: float = 0.0,
    ellipticity: float = 0.0,
) -> np.ndarray:
    """Pixel-averaged Moffat of ``fwhm`` px and index ``beta`` (> 1), unit sum."""
    if not (math.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be finite and > 0, got {fwhm}")
    if not (math.isfinite(beta) and beta > 1.0):
        raise ValueError(f"beta must be finite and > 1, got {beta}")
    _check(size, ellipticity)
    half = size // 2
    alpha = moffat_alpha(fwhm, beta)
    # Sub-pixel sample offsets within a pixel: centres of an OVERSAMPLE grid.
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    u = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel() - dx
    v = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel() - dy
    ru = (u / (alpha * (1.0 + ellipticity))) ** 2
    rv = (v / (alpha * (1.0 - ellipticity))) ** 2
    fine = (1.0 + rv[:, None] + ru[None, :]) ** (-beta)
    stamp = fine.reshape(size, OVERSAMPLE, size, OVERSAMPLE).mean(axis=(1, 3))
    return stamp / stamp.sum()


@dataclass(frozen=True)
class PsfProfile:
    """Which profile an image's PSF has, and how its shape (beyond width) varies.

    The width comes from the image's sigma map (for a Moffat, FWHM = 2.3548 sigma).  For a
    Moffat, ``beta`` varies linearly by ``beta_gradient`` (absolute, side to side) along
    ``angle`` over ``shape``: a change of the wings, not only of the width, which no
    polynomial-in-position model of one family captures exactly.  Frozen (pickles).
    """

    kind: str = "gaussian"
    beta: float = 3.0
    beta_gradient: float = 0.0
    angle: float = 0.0
    shape: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if self.kind not in PROFILES:
            raise ValueError(f"PSF profile must be one of {PROFILES}, got {self.kind!r}")
        lo = self.beta - 0.5 * abs(self.beta_gradient)
        if self.kind == "moffat" and not lo > 1.0:
            raise ValueError(
                f"moffat beta must stay > 1 over the field, got {self.beta} +- "
                f"{0.5 * abs(self.beta_gradient)}"
            )

    def beta_at(self, x: float, y: float) -> float:
        ny, nx = self.shape
        u = x / max(nx - 1, 1) - 0.5
        v = y / max(ny - 1, 1) - 0.5
        return self.beta + self.beta_gradient * (
            math.cos(self.angle) * u + math.sin(self.angle) * v
        )

    def half_size(self, sigma: float, *, ellipticity: float = 0.0, nsigma: float = 5.0) -> int:
        """Stamp half-size: +-nsigma for a Gaussian; a Moffat's wings need more (1.6x: the
        flux beyond 8 sigma ~ 3.4 FWHM is ~1% at beta 3)."""
        scale = 1.0 if self.kind == "gaussian" else 1.6
        return int(math.ceil(scale * nsigma * sigma * (1.0 + abs(ellipticity))))

    def stamp(
        self,
        sigma: float,
        size: int,
        *,
        x: float,
        y: float,
        dx: float = 0.0,
        dy: float = 0.0,
        ellipticity: float = 0.0,
    ) -> np.ndarray:
        """The unit-sum stamp at image position (x, y) for width ``sigma``."""
        if self.kind == "gaussian":
            return gaussian_stamp(sigma, size, dx=dx, dy=dy, ellipticity=ellipticity)
        return moffat_stamp(
            FWHM_PER_SIGMA * sigma, self.beta_at(x, y), size, dx=dx, dy=dy,
            ellipticity=ellipticity,
        )  # fmt: skip
