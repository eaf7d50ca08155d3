"""Spatial PSF variation as a few physical modes (width and ellipticity) of one mean stamp.

Why not a free polynomial per pixel (PSFEx style): with the ~20-40 bright stars a single CCD
gives, every pixel's gradient coefficient carries its own noise, and the model's width at a
corner sums that noise weighted by r^2 -- the corner FWHM came out 10-20% wrong on the
project's simulations (benchmarks in the PR note), and the subtraction residuals of bright
stars followed.  Seeing varies across a detector mostly in *width* and *ellipticity*, so the
model here is

    P(x, y) = P0 + a(x, y) B_size + b(x, y) B_e1 + c(x, y) B_e2

with P0 the stack of all stars, B_size = -(2 P0 + x dP0/dx + y dP0/dy) the derivative of a
flux-preserving dilation, B_e1 = x dP0/dx - y dP0/dy and B_e2 = y dP0/dx + x dP0/dy the
shears; each star gives three scalars (a linear least-squares projection) and each scalar
field is a sigma-clipped polynomial in (u, v).  Three robust scalars per star instead of
~200 noisy pixels: the corner FWHM error drops to a few per cent with 20 stars
(tests/unit/test_psfmeasure.py::test_degree1_follows_width_gradient).
"""

from __future__ import annotations

import numpy as np

from diffstream.jitcore.constants import IQR_PER_SIGMA

__all__ = ["mode_stamps", "fit_mode_model"]


def mode_stamps(p0: np.ndarray) -> np.ndarray:
    """(3, k, k): size, e1 and e2 modes of the unit-sum stamp ``p0`` (each sums to ~0)."""
    k = p0.shape[0]
    half = k // 2
    c = np.arange(-half, half + 1, dtype=np.float64)
    y, x = np.meshgrid(c, c, indexing="ij")
    dy, dx = np.gradient(p0)
    size = -(2.0 * p0 + x * dx + y * dy)
    e1 = x * dx - y * dy
    e2 = y * dx + x * dy
    return np.stack([size, e1, e2])


def _terms(x: np.ndarray, y: np.ndarray, degree: int, shape: tuple[int, int]) -> np.ndarray:
    ny, nx = shape
    u = 2.0 * np.asarray(x) / max(nx - 1, 1) - 1.0
    v = 2.0 * np.asarray(y) / max(ny - 1, 1) - 1.0
    cols = []
    for total in range(degree + 1):
        for j in range(total + 1):
            cols.append(u ** (total - j) * v**j)
    return np.stack(cols, axis=1)


def _clipped_polyfit(t: np.ndarray, values: np.ndarray, w: np.ndarray, clip: float = 3.0):
    """Weighted LSQ of values on terms t with iterative clipping; returns (coef, kept)."""
    keep = np.isfinite(values)
    coef = np.zeros(t.shape[1])
    for _ in range(5):
        if keep.sum() < t.shape[1]:
            break
        tw = t[keep] * w[keep, None]
        coef, *_ = np.linalg.lstsq(tw, values[keep] * w[keep], rcond=None)
        resid = values - t @ coef
        q75, q25 = np.percentile(resid[keep], [75, 25])
        s = max((q75 - q25) / IQR_PER_SIGMA, 1e-12)
        new = np.isfinite(values) & (np.abs(resid) <= clip * s)
        if np.array_equal(new, keep):
            break
        keep = new
    return coef, keep


def fit_mode_model(
    data: np.ndarray,
    nvar: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    p0: np.ndarray,
    *,
    degree: int,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Basis stamps (nterms, k, k) of the PsfModel layout, per-star mode amplitudes, kept mask.

    ``data`` (nstars, k*k) are registered unit-sum stamps, ``nvar`` their variances (same
    normalisation), ``weights`` per-star weights for the polynomial fits, ``p0`` the stack.
    """
    k = p0.shape[0]
    modes = mode_stamps(p0).reshape(3, -1)  # (3, npix)
    # Pixel weights: inverse variance with a floor so that bright cores do not dominate
    # through registration error (the same 2% model floor the stacker uses).
    floor = (0.02 * p0.ravel()) ** 2
    amps = np.full((len(data), 3), np.nan)
    for i in range(len(data)):
        wpix = 1.0 / np.maximum(nvar[i] + floor, 1e-30)
        r = data[i] - p0.ravel()
        a = (modes * wpix) @ modes.T
        b = (modes * wpix) @ r
        try:
            amps[i] = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            continue
    t = _terms(x, y, degree, shape)
    nterms = t.shape[1]
    coefs = np.zeros((3, nterms))
    kept = np.isfinite(amps[:, 0])
    sw = np.sqrt(np.maximum(weights, 0.0))
    for m in range(3):
        coefs[m], keep_m = _clipped_polyfit(t, amps[:, m], sw)
        kept &= keep_m
    basis = np.einsum("mt,mp->tp", coefs, modes).reshape(nterms, k, k)
    basis[0] += p0
    return basis, amps, kept
