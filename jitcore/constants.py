"""Numerical constants shared by the kernels: defined once, each with where it comes from.

Before this module the FWHM/sigma ratio was written out in five places (issue 13); a
constant that appears in two modules belongs here.
"""

from __future__ import annotations

import math

__all__ = [
    "FWHM_PER_SIGMA",
    "GAUSS_RHALF_PER_SIGMA",
    "IQR_PER_SIGMA",
    "MAD_PER_SIGMA",
]

# FWHM of a Gaussian in units of its sigma: 2 sqrt(2 ln 2) = 2.35482...
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# Half-light radius of a circular 2-D Gaussian in units of sigma: sqrt(2 ln 2) = 1.17741...
GAUSS_RHALF_PER_SIGMA = math.sqrt(2.0 * math.log(2.0))
# Interquartile range of N(0, 1): 2 Phi^-1(3/4) = 1.34898...
IQR_PER_SIGMA = 1.3489795003921634
# Median absolute deviation of N(0, 1): Phi^-1(3/4) = 0.67449...; 1 / 0.67449 = 1.4826.
MAD_PER_SIGMA = 0.6744897501960817
