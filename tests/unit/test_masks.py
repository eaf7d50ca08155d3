"""jitcore.masks: plane bits and remap (the identity fast path and the byte-lookup kernel)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from diffstream.jitcore.masks import (
    DEFAULT_PLANES,
    MASK_DTYPE,
    bits,
    has_bits,
    remap,
    value_range,
)

pytestmark = pytest.mark.unit


def ref_remap(mask, src, dst):
    """Slow, obviously-correct version: one shift/and/or pass per plane."""
    mask = np.asarray(mask).astype(np.int64)
    out = np.zeros(mask.shape, dtype=np.int64)
    for name, sbit in src.items():
        if name in dst:
            out |= ((mask >> sbit) & 1) << dst[name]
    return out.astype(np.uint32).view(np.int32)


def random_mask(rng, shape, planes, *, stray=0):
    mask = np.zeros(shape, dtype=np.int32)
    for bit in planes.values():
        mask[rng.random(shape) < 0.2] |= np.int32(1 << bit)
    if stray:  # as the int32 with those 32 bits (bit 31 is the sign)
        mask[rng.random(shape) < 0.05] |= np.array([stray]).astype(np.uint32).view(np.int32)[0]
    return mask


# A permutation that moves planes across bytes, drops two (INTRP, SUSPECT), uses bit 30,
# and has a plane (EXTRA) that the source lacks.
SHUFFLED = {
    "BAD": 9, "SAT": 0, "CR": 30, "EDGE": 17, "DETECTED": 5, "DETECTED_NEGATIVE": 24,
    "NO_DATA": 3, "EXTRA": 12,
}  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 65)])
@pytest.mark.parametrize("stray", [0, 1 << 20, -(2**31)])
def test_remap_matches_reference(shape, stray):
    rng = np.random.default_rng(shape[1])
    mask = random_mask(rng, shape, DEFAULT_PLANES, stray=stray)
    got = remap(mask, DEFAULT_PLANES, SHUFFLED)
    assert got.dtype == MASK_DTYPE and got.shape == shape
    assert_array_equal(got, ref_remap(mask, DEFAULT_PLANES, SHUFFLED))
    back = remap(got, SHUFFLED, DEFAULT_PLANES)
    kept = bits(DEFAULT_PLANES, [n for n in DEFAULT_PLANES if n in SHUFFLED])
    assert_array_equal(back, mask & kept)


def test_identity_returns_the_input_itself():
    rng = np.random.default_rng(1)
    mask = random_mask(rng, (50, 40), DEFAULT_PLANES)
    # Same bits, another dict (and extra planes in dst are fine: nothing moves).
    dst = {**DEFAULT_PLANES, "EXTRA": 20}
    assert remap(mask, DEFAULT_PLANES, dst) is mask
    # No planes at all: every bit is unnamed, so all are dropped.
    assert not remap(mask, {}, {}).any()


def test_identity_with_stray_bits_drops_them_in_a_copy():
    rng = np.random.default_rng(2)
    mask = random_mask(rng, (30, 30), DEFAULT_PLANES, stray=(1 << 20) | (1 << 31))
    before = mask.copy()
    got = remap(mask, DEFAULT_PLANES, dict(DEFAULT_PLANES))
    assert got is not mask
    assert_array_equal(mask, before)  # the input is never written
    assert_array_equal(got, before & bits(DEFAULT_PLANES, list(DEFAULT_PLANES)))


def test_dropping_a_plane_is_not_the_identity():
    mask = np.full((4, 4), 1 << DEFAULT_PLANES["SUSPECT"], dtype=np.int32)
    dst = {k: v for k, v in DEFAULT_PLANES.items() if k != "SUSPECT"}
    got = remap(mask, DEFAULT_PLANES, dst)
    assert got is not mask and not got.any()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.uint32])
def test_other_integer_dtypes_and_layouts(dtype):
    rng = np.random.default_rng(3)
    low = {k: v for k, v in DEFAULT_PLANES.items() if v < 8}  # fits every dtype here
    mask = random_mask(rng, (20, 24), low).astype(dtype)
    got = remap(mask, low, {k: 7 - v for k, v in low.items()})
    assert got.dtype == MASK_DTYPE
    assert_array_equal(got, ref_remap(mask, low, {k: 7 - v for k, v in low.items()}))
    # Non-contiguous views work too, identity included.
    view = mask.astype(np.int32)[::2, ::3]
    assert_array_equal(remap(view, low, low), view)


def test_remap_validation():
    mask = np.zeros((3, 3), dtype=np.int32)
    with pytest.raises(TypeError, match="mask must have an integer dtype, got float64"):
        remap(mask.astype(float), DEFAULT_PLANES, DEFAULT_PLANES)
    with pytest.raises(ValueError, match=r"src plane 'X' bit must be in 0..30, got 31"):
        remap(mask, {"X": 31}, DEFAULT_PLANES)
    with pytest.raises(ValueError, match=r"dst plane 'Y' bit must be in 0..30, got -1"):
        remap(mask, DEFAULT_PLANES, {"Y": -1})
    with pytest.raises(TypeError, match=r"src plane 'Z' must map to an int bit, got True"):
        remap(mask, {"Z": True}, DEFAULT_PLANES)
    with pytest.raises(ValueError, match=r"mask values must fit int32 bit planes, got range"):
        remap(np.full((2, 2), 2**40, dtype=np.int64), DEFAULT_PLANES, DEFAULT_PLANES)
    with pytest.raises(ValueError, match=r"mask values must fit int32 bit planes, got range"):
        remap(np.full((2, 2), -1, dtype=np.int64), DEFAULT_PLANES, DEFAULT_PLANES)


planes_st = st.dictionaries(
    st.sampled_from(["A", "B", "C", "D", "E", "F"]), st.integers(0, 30), max_size=6
).filter(lambda d: len(set(d.values())) == len(d))


@settings(max_examples=40, deadline=None)
@given(src=planes_st, dst=planes_st, seed=st.integers(0, 2**32 - 1))
def test_remap_hypothesis(src, dst, seed):
    rng = np.random.default_rng(seed)
    mask = rng.integers(-(2**31), 2**31, size=(5, 7), dtype=np.int64).astype(np.int32)
    got = remap(mask, src, dst)
    assert_array_equal(got, ref_remap(mask, src, dst))


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.int64])
def test_has_bits_matches_numpy(dtype):
    rng = np.random.default_rng(4)
    mask = rng.integers(0, 512, (37, 29)).astype(dtype)
    for value in (0, 1, 0b1001, 1 << 8, 1 << 12):
        hit, n = has_bits(mask, value)
        assert_array_equal(hit, (mask & value) != 0)
        assert n == int(((mask & value) != 0).sum())
    with pytest.raises(TypeError, match="mask must have an integer dtype, got float64"):
        has_bits(np.zeros((2, 2)), 1)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64])
def test_value_range_matches_numpy(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, (37, 53), dtype=dtype, endpoint=True)
    for window in (a, a[3:9, 40:], a[::2, ::3], a[5:6, 7:8]):  # views: any layout
        assert value_range(window) == (int(window.min()), int(window.max()))
    with pytest.raises(TypeError, match="2-D integer array"):
        value_range(a.astype(float))
    with pytest.raises(ValueError, match="must not be empty"):
        value_range(a[:0])
