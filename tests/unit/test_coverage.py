"""diffstream.jitcore.coverage.template_coverage: fraction of science pixels the template covers."""

from __future__ import annotations

import numpy as np
import pytest

from diffstream.jitcore.coverage import template_coverage

pytestmark = pytest.mark.unit

NO_DATA = 1 << 8
SCI_NO_DATA = 1 << 2  # the science exposure may order its planes differently
OTHER = (1 << 0) | (1 << 3)


def test_full_half_zero_overlap():
    mask = np.full((40, 50), OTHER, dtype=np.int32)  # other bits do not count
    assert template_coverage(mask, no_data_bit=NO_DATA) == 1.0
    mask[:, 25:] |= NO_DATA
    assert template_coverage(mask, no_data_bit=NO_DATA) == 0.5
    mask[:] |= NO_DATA
    assert template_coverage(mask, no_data_bit=NO_DATA) == 0.0


def test_odd_fraction_matches_count():
    rng = np.random.default_rng(3)
    mask = np.where(rng.random((37, 23)) < 0.3, NO_DATA, 0).astype(np.int32)
    want = np.count_nonzero(mask == 0) / mask.size
    assert template_coverage(mask, no_data_bit=NO_DATA) == pytest.approx(want, abs=0)


def test_science_no_data_pixels_are_not_counted():
    warped = np.zeros((10, 10), dtype=np.int32)
    warped[:, 5:] = NO_DATA  # template covers the left half
    science = np.zeros((10, 10), dtype=np.int32)
    science[:, :3] = SCI_NO_DATA  # science has no data in the left 3 columns
    # Of the 70 science pixels with data, 20 (columns 3-4) have template.
    got = template_coverage(
        warped, no_data_bit=NO_DATA, science_mask=science, science_no_data_bit=SCI_NO_DATA
    )
    assert got == pytest.approx(20 / 70, abs=0)
    # A NO_DATA bit of the template layout in the science mask means nothing there.
    other = np.full((10, 10), NO_DATA, dtype=np.int32)
    got = template_coverage(
        warped, no_data_bit=NO_DATA, science_mask=other, science_no_data_bit=SCI_NO_DATA
    )
    assert got == 0.5


def test_science_without_data_gives_zero():
    warped = np.zeros((4, 4), dtype=np.int32)
    science = np.full((4, 4), SCI_NO_DATA, dtype=np.int32)
    got = template_coverage(
        warped, no_data_bit=NO_DATA, science_mask=science, science_no_data_bit=SCI_NO_DATA
    )
    assert got == 0.0


def test_validation():
    mask = np.zeros((4, 5), dtype=np.int32)
    with pytest.raises(TypeError, match="warped_mask must have an integer dtype, got float64"):
        template_coverage(mask.astype(float), no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match=r"warped_mask must be a non-empty 2-D array.*\(5,\)"):
        template_coverage(mask[0], no_data_bit=NO_DATA)
    with pytest.raises(ValueError, match=r"warped_mask must be a non-empty 2-D array.*\(0, 5\)"):
        template_coverage(mask[:0], no_data_bit=NO_DATA)
    with pytest.raises(TypeError, match="no_data_bit must be an int bit value, got str"):
        template_coverage(mask, no_data_bit="NO_DATA")
    with pytest.raises(ValueError, match="no_data_bit must be a single bit value.*got 6"):
        template_coverage(mask, no_data_bit=6)
    with pytest.raises(ValueError, match="no_data_bit must be a single bit value.*got 0"):
        template_coverage(mask, no_data_bit=0)
    with pytest.raises(ValueError, match="science_no_data_bit given without science_mask"):
        template_coverage(mask, no_data_bit=NO_DATA, science_no_data_bit=SCI_NO_DATA)
    with pytest.raises(ValueError, match="science_mask given without science_no_data_bit"):
        template_coverage(mask, no_data_bit=NO_DATA, science_mask=mask)
    with pytest.raises(TypeError, match="science_mask must have an integer dtype, got bool"):
        template_coverage(
            mask, no_data_bit=NO_DATA, science_mask=mask.astype(bool), science_no_data_bit=4
        )
    with pytest.raises(ValueError, match=r"science_mask shape \(4, 4\) != warped_mask shape"):
        template_coverage(
            mask, no_data_bit=NO_DATA, science_mask=mask[:, :4], science_no_data_bit=4
        )
    with pytest.raises(ValueError, match="science_no_data_bit must be a single bit.*got -4"):
        template_coverage(mask, no_data_bit=NO_DATA, science_mask=mask, science_no_data_bit=-4)


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.int64])
def test_matches_numpy_counts_for_random_masks(dtype):
    """The one-pass kernel (int32 masks) and the NumPy path (others) against the definition."""
    rng = np.random.default_rng(9)
    tmask = rng.integers(0, 1 << 10, (53, 47)).astype(dtype)
    smask = rng.integers(0, 1 << 10, (53, 47)).astype(dtype)
    tbit, sbit = 1 << 8, 1 << 3
    good = (smask & sbit) == 0
    expected = np.count_nonzero(good & ((tmask & tbit) == 0)) / np.count_nonzero(good)
    got = template_coverage(tmask, no_data_bit=tbit, science_mask=smask, science_no_data_bit=sbit)
    assert got == expected
