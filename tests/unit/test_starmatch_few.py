"""match_stars with the 3-4 stars of a small cut-out: a flux ratio, no offset scatter."""

from __future__ import annotations

import numpy as np
import pytest

from diffstream.jitcore.psf import gaussian_psf
from diffstream.jitcore.starmatch import match_stars

pytestmark = pytest.mark.unit


def _pair(n_stars: int, ratio: float, seed: int = 5):
    rng = np.random.default_rng(seed)
    shape = (200, 200)
    sci = rng.normal(0.0, 5.0, shape)
    tmp = rng.normal(0.0, 5.0, shape)
    stamp = gaussian_psf(1.8, 21)
    for k in range(n_stars):
        x, y = 40 + 40 * k, 60 + 25 * (k % 2)
        f = 1e5 * (1 + k)
        sci[y - 10 : y + 11, x - 10 : x + 11] += f * stamp
        tmp[y - 10 : y + 11, x - 10 : x + 11] += ratio * f * stamp
    var = np.full(shape, 25.0)
    return sci, var, tmp, var, np.zeros(shape, bool)


@pytest.mark.parametrize("n", [3, 4])
def test_three_or_four_stars_give_the_flux_ratio(n):
    m = match_stars(*_pair(n, 1.08))
    assert m.n_matched == n
    assert m.flux_ratio == pytest.approx(1.08, rel=0.005)
    assert m.sigma_x == 0.0 and m.sigma_y == 0.0  # too few for a scatter


def test_two_stars_give_no_ratio():
    m = match_stars(*_pair(2, 1.08))
    assert m.n_matched == 2 and m.flux_ratio == 1.0
