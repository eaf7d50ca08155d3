"""jitcore/_kernels/quantiles.py against np.percentile: the same numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffstream.jitcore._kernels.quantiles import masked_tile_quartiles, quartiles
from diffstream.jitcore.constants import IQR_PER_SIGMA
from diffstream.jitcore.robust import iqr_sigma

pytestmark = pytest.mark.unit


def _reference(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64).ravel()
    return np.percentile(v[np.isfinite(v)], [25.0, 75.0])


def _kernel(values: np.ndarray) -> tuple[int, np.ndarray]:
    q = np.full(2, np.nan)
    n = quartiles(values, np.empty_like(values), np.empty(values.size + 2, values.dtype), q)
    return int(n), q


def _samples(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Samples that exercise each path: the band search (n >= 4096), its fall-backs (ties,
    a subsample unlike the whole: sorted or two-humped data), non-finite values skipped."""
    holes = rng.normal(size=n)
    holes[rng.random(n) < 0.1] = np.nan
    holes[rng.random(n) < 0.01] = np.inf
    holes[rng.random(n) < 0.01] = -np.inf
    return {
        "normal": rng.normal(3.0, 2.0, n),
        "ties": rng.integers(0, 4, n).astype(np.float64),
        "sorted_cauchy": np.sort(rng.standard_cauchy(n)),
        "two_humps": np.concatenate([rng.normal(size=n // 2), 50 + rng.normal(size=n - n // 2)]),
        "non_finite": holes,
        "smooth": np.cumsum(rng.normal(size=n)),  # neighbours correlated, like a score
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 5, 101, 4095, 4096, 4099, 16384, 250_001])
def test_quartiles_equal_numpy_percentile(n, dtype):
    rng = np.random.default_rng(n)
    for name, sample in _samples(rng, n).items():
        values = sample.astype(dtype)
        ref_n = int(np.isfinite(values).sum())
        n_finite, q = _kernel(values)
        assert n_finite == ref_n, name
        if ref_n:
            np.testing.assert_array_equal(q, _reference(values), err_msg=name)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
             min_size=1, max_size=9000),
    st.sampled_from([np.float32, np.float64]),
)  # fmt: skip
def test_quartiles_hypothesis(values, dtype):
    v = np.array(values, dtype=dtype)
    n_finite, q = _kernel(v)
    assert n_finite == int(np.isfinite(v).sum())
    if n_finite:
        np.testing.assert_array_equal(q, _reference(v))


def test_iqr_sigma_is_numpys_definition():
    rng = np.random.default_rng(5)
    for v in (rng.normal(size=300_000).astype(np.float32), rng.normal(size=(300, 400)),
              rng.integers(-50, 50, 20_000)):  # fmt: skip
        q25, q75 = _reference(np.asarray(v))
        assert iqr_sigma(v) == float((q75 - q25) / IQR_PER_SIGMA)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_tile_quartiles_match_per_tile_percentiles(dtype):
    rng = np.random.default_rng(11)
    full = rng.normal(size=(301, 263)).astype(dtype)
    full[rng.random(full.shape) < 0.01] = np.nan
    s = full[::2, ::2]  # strided, as empty_sky_scale passes it
    free = rng.random(s.shape) < 0.8
    free[:40, :40] = False  # a tile with too few free pixels
    t = 64
    nty, ntx = -(-s.shape[0] // t), -(-s.shape[1] // t)
    need = np.full((nty, ntx), 100.0)
    q25, q75 = np.full((nty, ntx), -1.0), np.full((nty, ntx), -1.0)
    counts = np.zeros((nty, ntx), np.int64)
    m = t * t
    masked_tile_quartiles(s, free, t, need, np.empty(m, dtype), np.empty(m, dtype),
                          np.empty(m + 2, dtype), q25, q75, counts)  # fmt: skip
    for i in range(nty):
        for j in range(ntx):
            win = (slice(i * t, (i + 1) * t), slice(j * t, (j + 1) * t))
            vals = s[win][free[win]]
            vals = vals[np.isfinite(vals)]
            assert counts[i, j] == vals.size
            if vals.size >= 100:
                np.testing.assert_array_equal([q25[i, j], q75[i, j]], _reference(vals))
            else:
                assert q25[i, j] == -1.0 and q75[i, j] == -1.0
    assert (counts < 100).any() and (counts >= 100).any()
