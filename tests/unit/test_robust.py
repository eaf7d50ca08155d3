"""jitcore.robust: each estimator against its definition and against Gaussian draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffstream.jitcore.robust import iqr_sigma, mad_sigma, median_iqr, median_noise

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("sigma", [0.5, 3.0])
def test_sigma_consistent_for_gaussian_data(sigma):
    v = np.random.default_rng(2).normal(7.0, sigma, 200_000)
    # Standard errors at n = 2e5: ~0.25% (MAD), ~0.26% (IQR); 5 sigma bounds.
    assert mad_sigma(v) == pytest.approx(sigma, rel=0.013)
    assert iqr_sigma(v) == pytest.approx(sigma, rel=0.013)
    med, s = median_iqr(v)
    assert med == pytest.approx(7.0, abs=5 * 1.2533 * sigma / math.sqrt(v.size))
    assert s == pytest.approx(iqr_sigma(v))


def test_definitions_on_small_samples():
    v = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, |v - 3| = 2 1 0 1 97 -> MAD 1
    assert mad_sigma(v) == pytest.approx(1.482602218505602)
    assert math.isnan(mad_sigma(np.zeros(0)))
    with pytest.raises(ValueError, match=r"iqr_sigma needs >= 100 finite values, got 5"):
        iqr_sigma(v)
    assert iqr_sigma(v, min_count=5) == pytest.approx((4.0 - 2.0) / 1.3489795003921634)


def test_median_noise_is_sqrt_of_the_median_variance():
    var = np.full((64, 64), 4.0)
    good = np.ones(var.shape, bool)
    var[:8] = 1e6  # a minority of hot pixels does not move a median
    assert median_noise(var, good) == 2.0
    assert math.isnan(median_noise(var, np.zeros_like(good)))
