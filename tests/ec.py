"""Euler-characteristic expectation of noise excursions of a smooth Gaussian field (Adler).

Shared by the detection tests (tests/unit/test_detect.py: analytic smoothness of a Gaussian
matched filter) and the correlated-noise science test (tests/science/test_corrnoise_science.py:
the score's measured smoothness).  An analytic expectation, not the code's own output.
"""

from __future__ import annotations

import numpy as np


def ec_count(area: float, lam: float, u: float) -> float:
    """Expected excursions above u plus below -u of a unit-variance 2-d field over ``area``
    pixels: 2 area lam u exp(-u^2/2) / (2 pi)^(3/2), lam the variance of its derivative
    (sqrt(det) of the second-spectral-moment matrix when the axes differ)."""
    return 2.0 * area * lam * u * np.exp(-u * u / 2.0) / (2.0 * np.pi) ** 1.5


def smoothness(field: np.ndarray, valid: np.ndarray) -> float:
    """lam measured from the field's lag-1 correlation on each axis, -2 ln rho(1), and
    combined as sqrt(lam_x lam_y).  Exact for a Gaussian autocorrelation exp(-lam d^2 / 2)
    (a Gaussian PSF's matched filter); independent of the field's normalisation."""
    f = np.asarray(field, dtype=np.float64)
    lams = []
    for axis in (0, 1):
        n = f.shape[axis]
        a, b = np.take(f, range(n - 1), axis=axis), np.take(f, range(1, n), axis=axis)
        ok = np.take(valid, range(n - 1), axis=axis) & np.take(valid, range(1, n), axis=axis)
        a, b = a[ok] - f[valid].mean(), b[ok] - f[valid].mean()
        rho = (a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean())
        lams.append(-2.0 * np.log(rho))
    return float(np.sqrt(lams[0] * lams[1]))
