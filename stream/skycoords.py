"""Pixel positions and their errors to sky coordinates (ra, dec in degrees, LSST names)."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

__all__ = ["pixel_to_sky"]


def pixel_to_sky(
    wcs: WCS, x: np.ndarray, y: np.ndarray, x_err: np.ndarray, y_err: np.ndarray, *, h: float = 0.5
) -> dict[str, np.ndarray]:
    """ra, dec and their errors/covariance through the local Jacobian of the WCS.

    The Jacobian d(ra, dec)/d(x, y) comes from central differences of ``all_pix2world`` (so
    SIP/TPV distortions count); the pixel errors are treated as independent, and the sky
    covariance is J diag(xErr^2, yErr^2) J^T.  raErr is the error of the RA coordinate itself
    (degrees of RA, as the LSST schema defines it), not of RA*cos(dec).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size == 0:
        empty = np.zeros(0)
        return {"ra": empty, "dec": empty, "raErr": empty, "decErr": empty, "ra_dec_Cov": empty}
    ra, dec = wcs.all_pix2world(x, y, 0)
    rxp, dxp = wcs.all_pix2world(x + h, y, 0)
    rxm, dxm = wcs.all_pix2world(x - h, y, 0)
    ryp, dyp = wcs.all_pix2world(x, y + h, 0)
    rym, dym = wcs.all_pix2world(x, y - h, 0)
    # Unwrap RA differences across 0/360.
    dra_dx = ((rxp - rxm + 180.0) % 360.0 - 180.0) / (2 * h)
    dra_dy = ((ryp - rym + 180.0) % 360.0 - 180.0) / (2 * h)
    ddec_dx = (dxp - dxm) / (2 * h)
    ddec_dy = (dyp - dym) / (2 * h)
    vx = np.asarray(x_err, dtype=np.float64) ** 2
    vy = np.asarray(y_err, dtype=np.float64) ** 2
    var_ra = dra_dx**2 * vx + dra_dy**2 * vy
    var_dec = ddec_dx**2 * vx + ddec_dy**2 * vy
    cov = dra_dx * ddec_dx * vx + dra_dy * ddec_dy * vy
    return {
        "ra": np.asarray(ra) % 360.0,
        "dec": np.asarray(dec),
        "raErr": np.sqrt(var_ra),
        "decErr": np.sqrt(var_dec),
        "ra_dec_Cov": cov,
    }
