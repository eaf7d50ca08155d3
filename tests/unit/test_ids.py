"""diffstream.jitcore.ids: LSST-layout diaSource ids, unique, stable, checked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffstream.jitcore.ids import ID_BITS, IdFactory, decode

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def exposures(draw):
    bits = draw(st.integers(1, ID_BITS - 1))
    exposure_id = draw(st.integers(0, (1 << bits) - 1))
    return exposure_id, bits


def test_layout_matches_afw_make_source():
    # afw: (expId << reserved) | sequence with reserved = 64 - 1 - maxBits, sequence from 1.
    f = IdFactory(exposure_id=0b1011, exposure_bits=4)
    assert f.counter_bits == 59
    assert f() == (0b1011 << 59) | 1
    assert f() == (0b1011 << 59) | 2
    assert f.issued == 2


@SETTINGS
@given(exposures(), st.integers(0, 50))
def test_ids_positive_int64_unique_and_round_trip(exp, n):
    exposure_id, bits = exp
    factory = IdFactory(exposure_id, bits)
    n = min(n, factory.max_counter)
    ids = factory.make_ids(n)
    assert ids.dtype == np.int64 and ids.shape == (n,)
    assert np.all(ids > 0)
    assert np.unique(ids).size == n
    for k, value in enumerate(ids, start=1):
        assert decode(int(value), bits) == (exposure_id, k)
        assert factory.decode(value) == (exposure_id, k)


@SETTINGS
@given(exposures(), st.integers(1, 20), st.integers(1, 20))
def test_stable_across_reruns_and_calls(exp, n1, n2):
    exposure_id, bits = exp
    a = IdFactory(exposure_id, bits)
    max_n = a.max_counter
    n1, n2 = min(n1, max_n), min(n2, max_n - min(n1, max_n))
    first = np.concatenate([a.make_ids(n1), a.make_ids(n2)])
    b = IdFactory(exposure_id, bits)
    again = np.array([b() for _ in range(n1 + n2)], dtype=np.int64)
    np.testing.assert_array_equal(first, again)


@SETTINGS
@given(st.integers(1, ID_BITS - 1), st.data())
def test_distinct_exposures_never_collide(bits, data):
    top = (1 << bits) - 1
    e1 = data.draw(st.integers(0, top))
    e2 = data.draw(st.integers(0, top).filter(lambda e: e != e1))
    n = min(5, (1 << (ID_BITS - bits)) - 1)
    ids1 = IdFactory(e1, bits).make_ids(n)
    ids2 = IdFactory(e2, bits).make_ids(n)
    assert not set(ids1.tolist()) & set(ids2.tolist())


def test_largest_id_is_int64_max():
    f = IdFactory((1 << 40) - 1, 40)
    f._last = f.max_counter - 1  # skip ahead instead of issuing 2**23 ids
    assert f() == np.iinfo(np.int64).max


def test_counter_overflow_raises_and_issues_nothing():
    f = IdFactory(3, 61)  # 2 counter bits: counters 1..3
    assert f.make_ids(3).tolist() == [(3 << 2) | 1, (3 << 2) | 2, (3 << 2) | 3]
    with pytest.raises(OverflowError, match=r"1 more ids after 3 exceed the 2-bit counter"):
        f()
    g = IdFactory(3, 61)
    with pytest.raises(OverflowError, match=r"4 more ids after 0"):
        g.make_ids(4)
    assert g.issued == 0
    assert g.make_ids(0).shape == (0,)


def test_exposure_id_must_fit_its_bits():
    with pytest.raises(ValueError, match=r"exposure_id 256 does not fit in exposure_bits=8"):
        IdFactory(256, 8)
    with pytest.raises(ValueError, match=r"exposure_id -1 does not fit in exposure_bits=8"):
        IdFactory(-1, 8)


@pytest.mark.parametrize("bits", [0, 63, 64])
def test_exposure_bits_range(bits):
    with pytest.raises(ValueError, match=rf"exposure_bits must be in 1..62.*got {bits}"):
        IdFactory(0, bits)


def test_integer_types():
    assert IdFactory(np.int64(5), np.int32(10))() == (5 << 53) | 1
    with pytest.raises(TypeError, match="exposure_id must be an integer, got float"):
        IdFactory(5.0, 10)
    with pytest.raises(TypeError, match="exposure_bits must be an integer, got bool"):
        IdFactory(1, True)
    with pytest.raises(TypeError, match="n must be an integer"):
        IdFactory(1, 10).make_ids(2.5)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        IdFactory(1, 10).make_ids(-1)


def test_decode_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"source_id must be in 1..2\*\*63-1, got 0"):
        decode(0, 10)
    with pytest.raises(ValueError, match="source_id must be in"):
        decode(1 << 63, 10)
    with pytest.raises(TypeError, match="source_id must be an integer"):
        decode("12", 10)
