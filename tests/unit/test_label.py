"""jitcore._kernels.label: runs and 8-connected components against NumPy/SciPy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from diffstream.jitcore._kernels.label import (
    COMP_COLUMNS,
    RUN_COLUMNS,
    STAR_COLUMNS,
    STAR_WORK,
    find_runs,
    label_runs,
    star_moments,
)

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


# --- star_moments -------------------------------------------------------------------------


def star_moments_reference(image, score, invalid, thr, min_area):
    """STAR_COLUMNS rows per positive component (scipy.ndimage.label, 3x3), label order."""
    member_of, _ = ndimage.label(polarity(score, ~invalid, thr) == 1, structure=np.ones((3, 3)))
    ny, nx = image.shape
    yy, xx = np.mgrid[:ny, :nx]
    rows = []
    for k, sl in enumerate(ndimage.find_objects(member_of), start=1):
        m = member_of == k
        if m.sum() < min_area:
            continue
        v = image[m].astype(np.float64)
        x, y = xx[m].astype(np.float64), yy[m].astype(np.float64)
        w = np.where(v > 0, v, 0.0)  # barycentre and moments from positive pixels only
        tv = w.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            xm, ym = (w * x).sum() / tv, (w * y).sum() / tv
            x2 = (w * (x - xm) ** 2).sum() / tv
            y2 = (w * (y - ym) ** 2).sum() / tv
            xy = (w * (x - xm) * (y - ym)).sum() / tv
        if abs(x2 * y2 - xy * xy) < 0.00694:
            x2, y2 = x2 + 0.0833333, y2 + 0.0833333
        lam = np.linalg.eigvalsh([[x2, xy], [xy, y2]]) if tv > 0 else [np.nan, np.nan]
        theta = 0.5 * np.arctan2(2 * xy, x2 - y2) if x2 != y2 else np.pi / 4
        s = np.where(m, score.astype(np.float64), -np.inf)
        py, px = np.unravel_index(np.argmax(s), s.shape)  # ties: first in raster order
        edge = sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == ny or sl[1].stop == nx
        near_bad = (ndimage.binary_dilation(m, np.ones((3, 3), bool)) & invalid).any()
        rows.append(
            [xm, ym, x2, y2, xy, np.sqrt(lam[1]), np.sqrt(max(lam[0], 0.0)), theta, v.sum(),
             image[py, px], px, py, m.sum(), sl[1].start, sl[1].stop - 1, sl[0].start,
             sl[0].stop - 1, 2 if edge or near_bad else 0]
        )  # fmt: skip
    return np.array(rows, dtype=np.float64).reshape(-1, len(STAR_COLUMNS))


def run_star_moments(image, score, invalid, thr, min_area):
    thr = np.float32(thr)
    runs = np.empty((score.size, len(RUN_COLUMNS)), dtype=np.int64)
    peak = np.empty(score.size)
    n = find_runs(score, ~invalid, thr, runs, peak)
    parent = np.empty(n, np.int64)
    label_runs(runs, peak, n, 1, parent, np.empty(n), np.empty((n, len(COMP_COLUMNS)), np.int64))
    table = np.full((n, max(STAR_WORK, len(STAR_COLUMNS))), -7.0)
    k = star_moments(image, score, invalid, runs, n, parent, min_area, table)
    return table[:k, : len(STAR_COLUMNS)]


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([np.float32, np.float64]),
    st.integers(1, 23),
    st.integers(1, 70),
    st.sampled_from([0.5, 1.0, 2.5]),
    st.integers(1, 5),
    st.integers(0, 2**32 - 1),
)
def test_star_moments_match_reference(dtype, ny, nx, thr, min_area, seed):
    rng = np.random.default_rng(seed)
    score = random_score(rng, dtype, ny, nx, ties=bool(seed % 2))
    # Image independent of the score and sometimes negative: the positive-weight rule and
    # the peak taken at the score's maximum are both exercised.
    image = rng.normal(1.0, 1.5, (ny, nx)).astype(dtype)
    invalid = rng.random((ny, nx)) < 0.1
    got = run_star_moments(image, score, invalid, thr, min_area)
    ref = star_moments_reference(image, score, invalid, thr, min_area)
    assert got.shape == ref.shape
    # theta is an axis angle: +-pi/2 are the same axis (the sign of a zero xy decides).  It
    # jumps where x2 == y2 (sep's pi/4 convention), so rounding decides it there: skipped.
    t, ix2, iy2 = (STAR_COLUMNS.index(c) for c in ("theta", "x2", "y2"))
    defined = ~(np.abs(ref[:, ix2] - ref[:, iy2]) < 1e-9)
    for f in (np.cos, np.sin):
        a, b = f(2 * got[defined, t]), f(2 * ref[defined, t])
        np.testing.assert_allclose(a, b, atol=1e-6, equal_nan=True)
    got[:, t] = ref[:, t]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_star_moments_far_from_origin_and_negative_components():
    # A compact star at x ~ 4000: moments about the barycentre keep their digits there.
    ny, nx = 40, 4100
    yy, xx = np.mgrid[:ny, :nx]
    # Elliptical, so that theta is defined (round moments leave it to rounding).
    image = 1e4 * np.exp(-((xx - 4000.3) ** 2 / 4.5 + (yy - 20.7) ** 2 / 2.9))
    image[2:5, 10:14] = -50.0  # a negative component: ignored
    invalid = np.zeros(image.shape, bool)
    got = run_star_moments(image, image, invalid, 1.0, 5)
    ref = star_moments_reference(image, image, invalid, 1.0, 5)
    assert got.shape == (1, len(STAR_COLUMNS))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    assert got[0, STAR_COLUMNS.index("flag")] == 0
