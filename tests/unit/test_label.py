"""jitcore._kernels.label: runs and 8-connected components against NumPy/SciPy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from jitcore._kernels.label import COMP_COLUMNS, RUN_COLUMNS, find_runs, label_runs

pytestmark = pytest.mark.unit


# --- references --------------------------------------------------------------------------


def polarity(score, valid, thr):
    """+1 / -1 / 0 per pixel: the footprint rule, written with whole-array NumPy."""
    f = score.astype(np.float32)  # sep's float32 comparison
    good = valid & np.isfinite(score)
    return np.where(good & (f > thr), 1, 0) + np.where(good & (f < -thr), -1, 0)


def runs_reference(score, valid, thr):
    """(y, x0, x1, sign, peak_x) and peak value of every maximal same-sign run, raster order."""
    sgn = polarity(score, valid, thr)
    rows, peaks = [], []
    ny, nx = score.shape
    for y in range(ny):
        x0 = 0
        while x0 < nx:
            x1 = x0  # the maximal stretch of equal polarity starting at x0
            while x1 + 1 < nx and sgn[y, x1 + 1] == sgn[y, x0]:
                x1 += 1
            if sgn[y, x0] != 0:
                val = sgn[y, x0] * score[y, x0 : x1 + 1].astype(np.float64)
                rows.append((y, x0, x1, sgn[y, x0], x0 + int(np.argmax(val))))  # first max
                peaks.append(val.max())
            x0 = x1 + 1
    return np.array(rows, dtype=np.int64).reshape(-1, 5), np.array(peaks)


def components_reference(score, valid, thr, min_area):
    """Rows of COMP_COLUMNS from scipy.ndimage.label with the full 3x3 structure."""
    sgn = polarity(score, valid, thr)
    out = []
    for s in (1, -1):
        lab, n = ndimage.label(sgn == s, structure=np.ones((3, 3)))
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            member = lab == k
            npix = int(member.sum())
            if npix < min_area:
                continue
            val = np.where(member, s * score.astype(np.float64), -np.inf)
            py, px = np.unravel_index(np.argmax(val), val.shape)  # ties: first in raster order
            out.append((px, py, s, npix, sl[1].start, sl[1].stop - 1, sl[0].start, sl[0].stop - 1))
    return sorted(out)


def run_kernels(score, valid, thr, min_area, cap=None):
    thr = np.float32(thr)
    cap = score.size if cap is None else cap
    runs = np.full((cap, len(RUN_COLUMNS)), -7, dtype=np.int64)
    peak = np.full(cap, np.nan)
    n = find_runs(score, valid, thr, runs, peak)
    comp = np.full((n, len(COMP_COLUMNS)), -7, dtype=np.int64)
    k = label_runs(runs, peak, n, min_area, np.empty(n, np.int64), np.empty(n), comp)
    return n, runs, peak, comp[:k]


def random_score(rng, dtype, ny, nx, ties):
    score = rng.normal(0.0, 2.0, (ny, nx))
    if ties:  # integer values: many equal peaks, to pin the raster-order tie rule
        score = np.round(score)
    score = score.astype(dtype)
    bad = rng.random((ny, nx))
    score[bad < 0.03] = np.nan
    score[(bad >= 0.03) & (bad < 0.05)] = np.inf
    score[(bad >= 0.05) & (bad < 0.07)] = -np.inf
    return score


# --- kernels vs references ---------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([np.float32, np.float64]),
    st.integers(1, 23),
    st.integers(1, 70),  # > one 32-pixel block of the row scan
    st.sampled_from([0.5, 1.0, 2.5]),
    st.integers(1, 4),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_kernels_match_references(dtype, ny, nx, thr, min_area, ties, seed):
    rng = np.random.default_rng(seed)
    score = random_score(rng, dtype, ny, nx, ties)
    valid = rng.random((ny, nx)) > 0.1
    n, runs, peak, comp = run_kernels(score, valid, thr, min_area)
    ref_runs, ref_peak = runs_reference(score, valid, thr)
    assert n == len(ref_runs)
    np.testing.assert_array_equal(runs[:n], ref_runs)
    np.testing.assert_array_equal(peak[:n], ref_peak)
    assert sorted(map(tuple, comp.tolist())) == components_reference(score, valid, thr, min_area)


def test_components_come_in_raster_order_of_first_pixel():
    score = np.zeros((6, 8), np.float32)
    score[3, 0] = 9.0  # starts on a later row than the next one
    score[1, 6] = -9.0
    score[2, 5] = -8.0  # diagonal to (1, 6)
    score[1, 2] = 7.0
    _, _, _, comp = run_kernels(score, np.ones(score.shape, bool), 5.0, 1)
    np.testing.assert_array_equal(
        comp, [[2, 1, 1, 1, 2, 2, 1, 1], [6, 1, -1, 2, 5, 6, 1, 2], [0, 3, 1, 1, 0, 0, 3, 3]]
    )


def test_peak_ties_keep_first_pixel_in_raster_order():
    # A U whose arms tie at the top: the left arm's top pixel comes first in raster order
    # even though the arms join only on the last row.
    score = np.zeros((7, 7))
    score[1:6, 1] = 8.0
    score[1:6, 5] = 8.0
    score[5, 1:6] = 6.0
    _, _, _, comp = run_kernels(score, np.ones(score.shape, bool), 5.0, 1)
    np.testing.assert_array_equal(comp, [[1, 1, 1, 13, 1, 5, 1, 5]])


def test_float32_threshold_comparison_for_float64_scores():
    thr = 5.0
    score = np.zeros((1, 5))
    score[0, 0] = thr + 1e-12  # float32(s) == 5.0: not above, as in sep
    score[0, 2] = np.nextafter(np.float32(thr), np.float32(np.inf))  # the next float32 is
    score[0, 4] = -(thr + 1e-12)
    _, _, _, comp = run_kernels(score, np.ones(score.shape, bool), thr, 1)
    np.testing.assert_array_equal(comp[:, :2], [[2, 0]])


def test_short_run_table_reports_exact_count_and_writes_nothing_past_it():
    rng = np.random.default_rng(3)
    score = rng.normal(0.0, 3.0, (20, 40)).astype(np.float32)
    valid = np.ones(score.shape, bool)
    ref_runs, ref_peak = runs_reference(score, valid, 1.0)
    for cap in (0, 1, 7, len(ref_runs) - 1):
        n, runs, peak, _ = run_kernels(score, valid, 1.0, 1, cap=cap)
        assert n == len(ref_runs)
        np.testing.assert_array_equal(runs, ref_runs[:cap])
        np.testing.assert_array_equal(peak, ref_peak[:cap])


def test_no_runs_all_invalid_and_all_nan():
    score = np.full((9, 33), 9.0)
    for valid, s in (
        (np.zeros(score.shape, bool), score),
        (np.ones(score.shape, bool), np.full(score.shape, np.nan)),
        (np.ones(score.shape, bool), np.zeros(score.shape)),
    ):
        n, _, _, comp = run_kernels(s, valid, 5.0, 1)
        assert n == 0 and comp.shape == (0, len(COMP_COLUMNS))
