import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffstream.jitcore.noise import diffim_scale_factors, noise_scale_factor
from diffstream.jitcore.robust import iqr_sigma

pytestmark = pytest.mark.unit


def test_diffim_scale_factors_measure_both_spreads():
    rng = np.random.default_rng(3)
    score = rng.normal(0, 1.1, (300, 300)).astype(np.float32)
    var = np.full((300, 300), 4.0, np.float32)
    diff = rng.normal(0, 2.0 * 0.9, (300, 300)).astype(np.float32)
    valid = np.ones((300, 300), bool)
    f_score, f_diff = diffim_scale_factors(score, diff, var, valid)
    assert f_score == pytest.approx(1.1, rel=0.02)
    assert f_diff == pytest.approx(0.9, rel=0.02)
    # One thread (a one-CPU worker) or two: the same numbers.
    assert diffim_scale_factors(score, diff, var, valid, workers=1) == (f_score, f_diff)


def test_diffim_scale_factors_subsample_large_images_and_ignore_invalid_pixels():
    # 2400^2 > the 2M-pixel sample, so the strided path runs; invalid pixels hold garbage.
    rng = np.random.default_rng(4)
    shape = (2400, 2400)
    score = rng.normal(0, 1.04, shape).astype(np.float32)
    diff = rng.normal(0, 3.0 * 1.02, shape).astype(np.float32)
    var = np.full(shape, 9.0, np.float32)
    valid = rng.random(shape) > 0.3
    score[~valid] = 1e6
    diff[~valid] = -1e6
    var[~valid] = np.nan
    f_score, f_diff = diffim_scale_factors(score, diff, var, valid)
    assert f_score == pytest.approx(1.04, rel=0.005)
    assert f_diff == pytest.approx(1.02, rel=0.005)
    with pytest.raises(ValueError, match="shapes differ"):
        diffim_scale_factors(score, diff, var, valid[:-1])


def test_diffim_scale_factors_keep_stated_noise_without_pixels():
    z = np.zeros((5, 5), np.float32)
    assert diffim_scale_factors(z, z, z + 1, np.zeros((5, 5), bool)) == (1.0, 1.0)


def test_noise_checks_refuse_bad_input():
    with pytest.raises(ValueError, match="needs >= 100 finite values"):
        iqr_sigma(np.zeros(10))
    with pytest.raises(ValueError, match="shapes differ"):
        noise_scale_factor(np.zeros((3, 3)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="limit must be > 1"):
        noise_scale_factor(np.zeros((3, 3)), np.ones((3, 3), bool), limit=1.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    ny=st.integers(1, 30),
    nx=st.integers(1, 30),
    r=st.integers(0, 8),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.5]),
)
def test_dilate_square_is_the_maximum_filter(seed, ny, nx, r, density):
    """source_free_mask's dilation kernel against the scipy filter it replaced."""
    from scipy import ndimage

    from diffstream.jitcore._kernels.emptysky import dilate_square

    hot = np.random.default_rng(seed).random((ny, nx)) < density
    out = np.empty((ny, nx), bool)
    any_set = dilate_square(hot, r, np.empty((ny, nx), np.int32), out)
    ref = ndimage.maximum_filter(hot.view(np.uint8), size=2 * r + 1) > 0
    np.testing.assert_array_equal(out, ref)
    assert any_set == bool(ref.any())
