"""The streak search (jitcore/streaks.py) on synthetic detection masks, and its Hough kernel
against a NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffstream.jitcore._kernels.streaks import hough_accumulate
from diffstream.jitcore.streaks import find_streaks, find_streaks_above, streak_mask


def _line(det, x0, y0, x1, y1, width=3):
    n = int(4 * math.hypot(x1 - x0, y1 - y0))
    for t in np.linspace(0, 1, n):
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        ix, iy = int(round(x)), int(round(y))
        h = width // 2
        det[max(iy - h, 0) : iy + h + 1, max(ix - h, 0) : ix + h + 1] = True


def _dots(rng, shape, n):
    det = np.zeros(shape, bool)
    ys = rng.integers(2, shape[0] - 2, n)
    xs = rng.integers(2, shape[1] - 2, n)
    for x, y in zip(xs, ys, strict=True):
        det[y - 1 : y + 2, x - 1 : x + 2] = True
    return det


def test_hough_accumulator_matches_numpy():
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 50, 300).astype(np.int64)
    ys = rng.integers(0, 40, 300).astype(np.int64)
    theta = np.linspace(0, math.pi, 37, endpoint=False)
    acc = np.zeros((theta.size, 70), np.int32)
    hough_accumulate(xs, ys, np.cos(theta), np.sin(theta), -64.0, 2.0, acc)
    want = np.zeros_like(acc)
    for k, th in enumerate(theta):
        b = np.floor((xs * np.cos(th) + ys * np.sin(th) + 64.0) / 2.0).astype(int)
        ok = (b >= 0) & (b < 70)
        np.add.at(want[k], b[ok], 1)
    np.testing.assert_array_equal(acc, want)


@pytest.mark.parametrize("seed", range(4))
def test_a_streak_in_a_crowded_field_is_found(seed):
    rng = np.random.default_rng(seed)
    det = _dots(rng, (600, 700), 2500)  # ~5% of the pixels set
    ang = rng.uniform(0, math.pi)
    cx, cy, half = 350.0, 300.0, 250.0
    ends = (cx - half * math.cos(ang), cy - half * math.sin(ang),
            cx + half * math.cos(ang), cy + half * math.sin(ang))  # fmt: skip
    _line(det, *ends)
    found = find_streaks(det)
    assert len(found) == 1
    st = found[0]
    assert abs((st["angle"] - math.degrees(ang) + 90) % 180 - 90) < 0.5
    # The ends may run on into a neighbouring dot (5% of pixels set): a few px each.
    assert abs(st["length"] - 2 * half) < 30
    mid = (0.5 * (st["x0"] + st["x1"]), 0.5 * (st["y0"] + st["y1"]))
    assert math.hypot(mid[0] - cx, mid[1] - cy) < 8
    painted = streak_mask(det.shape, found)
    on = [(int(round(cx + t * math.cos(ang))), int(round(cy + t * math.sin(ang))))
          for t in np.linspace(-half + 5, half - 5, 50)]  # fmt: skip
    assert all(painted[y, x] for x, y in on)
    # A 3 px line: the band is a few px wide, and nothing else is painted.
    assert st["width"] < 10
    assert painted.sum() < 1.2 * (st["length"] + st["width"]) * (st["width"] + 2)


@pytest.mark.parametrize("seed", range(3))
def test_no_streak_in_random_fields_or_rows_of_sources(seed):
    rng = np.random.default_rng(10 + seed)
    assert len(find_streaks(_dots(rng, (600, 600), 5000))) == 0
    # Point sources lined up every 15 px over 500 px: gaps > max_gap, not a streak.
    det = np.zeros((600, 600), bool)
    for x in range(50, 550, 15):
        det[299:302, x - 1 : x + 2] = True
    assert len(find_streaks(det)) == 0
    # A trail shorter than min_length is not a streak.
    det = np.zeros((300, 300), bool)
    _line(det, 100, 100, 160, 140)
    assert len(find_streaks(det)) == 0


def test_two_streaks():
    det = np.zeros((500, 500), bool)
    _line(det, 10, 20, 480, 300)
    _line(det, 30, 480, 400, 10)
    found = find_streaks(det)
    assert len(found) == 2
    assert sorted(np.round(found["angle"])) == sorted(
        np.round([math.degrees(math.atan2(280, 470)), math.degrees(math.atan2(-470, 370)) % 180])
    )


def test_input_checks():
    with pytest.raises(TypeError, match="bool"):
        find_streaks(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="min_length"):
        find_streaks(np.zeros((5, 5), bool), min_length=0)
    with pytest.raises(ValueError, match="max_streaks"):
        find_streaks(np.zeros((5, 5), bool), max_streaks=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_find_streaks_above_equals_find_streaks_on_the_mask(seed, dtype):
    """The pixel list of jitcore.labels.threshold_pixels gives what the boolean mask gave:
    the same pixels in the same (raster) order, so the same streaks, bit for bit."""
    from diffstream.jitcore.labels import threshold_pixels

    rng = np.random.default_rng(seed)
    shape = (500, 620)
    det = _dots(rng, shape, 1500)
    ang = rng.uniform(0, math.pi)
    _line(det, 310 - 200 * math.cos(ang), 250 - 200 * math.sin(ang),
          310 + 200 * math.cos(ang), 250 + 200 * math.sin(ang))  # fmt: skip
    # Scores: set pixels of either sign beyond 5, the rest noise below it; NaNs and invalid
    # pixels (some of them above the threshold) must drop out, as in the mask.
    score = rng.uniform(-4.9, 4.9, shape)
    score[det] = rng.choice([-1.0, 1.0], int(det.sum())) * rng.uniform(5.01, 40.0, int(det.sum()))
    score[rng.random(shape) < 0.01] = np.nan
    valid = rng.random(shape) > 0.02
    score = score.astype(dtype)
    mask = valid & np.isfinite(score) & (np.abs(score) > 5.0)
    xs, ys = threshold_pixels(score, valid, 5.0)
    want_y, want_x = np.nonzero(mask)
    np.testing.assert_array_equal(xs, want_x)
    np.testing.assert_array_equal(ys, want_y)
    got = find_streaks_above(score, valid, 5.0)
    want = find_streaks(mask)
    assert len(want) == 1
    np.testing.assert_array_equal(got, want)


def test_find_streaks_above_checks_its_inputs():
    score = np.zeros((8, 8), np.float32)
    with pytest.raises(TypeError, match="values must be a 2-D float32 or float64"):
        find_streaks_above(score.astype(np.int32), np.ones((8, 8), bool), 5.0)
    with pytest.raises(TypeError, match="valid must be a bool ndarray of shape"):
        find_streaks_above(score, np.ones((8, 7), bool), 5.0)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        find_streaks_above(score, np.ones((8, 8), bool), -1.0)
    assert len(find_streaks_above(score, np.ones((8, 8), bool), 5.0)) == 0
