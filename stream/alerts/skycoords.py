"""Pixel quantities to sky quantities, in the units the LSST alert schema documents.

* raErr is the error of RA*cos(Dec) in degrees, ra_dec_Cov the covariance of
  (RA*cos(Dec), Dec) in deg^2 (schema docs of lsst.v11_1.diaSource).
* ixx/iyy/ixy (and the PSF's) are in arcsec^2, in the local tangent plane with x along
  RA*cos(Dec) (east) and y along Dec (north).

Both go through the local Jacobian of the WCS, J = d(xi, eta)/d(x, y), from central
differences of ``all_pix2world`` so that SIP/TPV distortions count.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

__all__ = ["local_jacobians", "pixel_to_sky", "sky_errors", "sky_offset", "moments_to_sky"]


def local_jacobians(
    wcs: WCS, x: np.ndarray, y: np.ndarray, *, h: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ra, dec, J) with J of shape (n, 2, 2) in degrees of (RA*cos(Dec), Dec) per pixel."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ra, dec = wcs.all_pix2world(x, y, 0)
    rxp, dxp = wcs.all_pix2world(x + h, y, 0)
    rxm, dxm = wcs.all_pix2world(x - h, y, 0)
    ryp, dyp = wcs.all_pix2world(x, y + h, 0)
    rym, dym = wcs.all_pix2world(x, y - h, 0)
    cosd = np.cos(np.deg2rad(dec))
    # Unwrap RA differences across 0/360.
    j = np.empty((x.size, 2, 2))
    j[:, 0, 0] = ((rxp - rxm + 180.0) % 360.0 - 180.0) / (2 * h) * cosd
    j[:, 0, 1] = ((ryp - rym + 180.0) % 360.0 - 180.0) / (2 * h) * cosd
    j[:, 1, 0] = (dxp - dxm) / (2 * h)
    j[:, 1, 1] = (dyp - dym) / (2 * h)
    return np.asarray(ra) % 360.0, np.asarray(dec), j


def pixel_to_sky(
    wcs: WCS, x: np.ndarray, y: np.ndarray, x_err: np.ndarray, y_err: np.ndarray
) -> dict[str, np.ndarray]:
    """ra, dec (deg) and raErr, decErr, ra_dec_Cov from independent pixel errors."""
    if np.asarray(x).size == 0:
        empty = np.zeros(0)
        return {"ra": empty, "dec": empty, "raErr": empty, "decErr": empty, "ra_dec_Cov": empty}
    return sky_errors(*local_jacobians(wcs, x, y), x_err, y_err)


def sky_errors(
    ra: np.ndarray, dec: np.ndarray, j: np.ndarray, x_err: np.ndarray, y_err: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`pixel_to_sky` from :func:`local_jacobians`' (ra, dec, J), for a caller that
    needs J too (one set of WCS evaluations, not two)."""
    cov_pix = np.zeros((j.shape[0], 2, 2))
    cov_pix[:, 0, 0] = np.asarray(x_err, dtype=np.float64) ** 2
    cov_pix[:, 1, 1] = np.asarray(y_err, dtype=np.float64) ** 2
    cov = j @ cov_pix @ np.transpose(j, (0, 2, 1))
    return {
        "ra": ra,
        "dec": dec,
        "raErr": np.sqrt(cov[:, 0, 0]),
        "decErr": np.sqrt(cov[:, 1, 1]),
        "ra_dec_Cov": cov[:, 0, 1],
    }


def sky_offset(j: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(length in arcsec, bearing in degrees east of north, in (-180, 180]) of pixel offsets
    (dx, dy) through the Jacobians ``j`` of :func:`local_jacobians`."""
    east = j[:, 0, 0] * dx + j[:, 0, 1] * dy
    north = j[:, 1, 0] * dx + j[:, 1, 1] * dy
    return 3600.0 * np.hypot(east, north), np.degrees(np.arctan2(east, north))


def moments_to_sky(
    wcs: WCS, x: np.ndarray, y: np.ndarray, ixx: np.ndarray, iyy: np.ndarray, ixy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second moments from px^2 to arcsec^2 in the (east, north) tangent plane."""
    if np.asarray(x).size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    _, _, j = local_jacobians(wcs, x, y)
    j = j * 3600.0
    m = np.empty((j.shape[0], 2, 2))
    m[:, 0, 0] = ixx
    m[:, 1, 1] = iyy
    m[:, 0, 1] = m[:, 1, 0] = ixy
    s = j @ m @ np.transpose(j, (0, 2, 1))
    return s[:, 0, 0], s[:, 1, 1], s[:, 0, 1]
