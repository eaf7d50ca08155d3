"""Satellite streaks (issue 15): a simulated streak across the CCD is found and masked as
STREAK; sources on it get pixelFlags_streak(Center), point sources away from it do not, and
pairs with no streak get no STREAK pixel at all.

Seeded 512 x 512 pairs through the whole ``subtract`` pipeline; the streak (stream/sim/trails.py
add_streak) runs from edge to edge with its ridge 3 x the per-pixel background noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from tests.science.truth import match_truth

pytestmark = [pytest.mark.science, pytest.mark.slow]

CASES = {5: (-20.0, 60.0, 540.0, 400.0), 7: (100.0, -30.0, 380.0, 560.0)}


def _distance(x, y, ends):
    x0, y0, x1, y1 = ends
    dx, dy = x1 - x0, y1 - y0
    return np.abs(-(np.asarray(x) - x0) * dy + (np.asarray(y) - y0) * dx) / math.hypot(dx, dy)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for seed, ends in [*CASES.items(), (6, None)]:
        pair = simulate_pair(seed=seed, shape=(512, 512), n_transients=40, n_variables=0,
                             streaks=(ends,) if ends else ())  # fmt: skip
        sci, tmpl = write_pair(pair, tmp_path_factory.mktemp(f"streak-{seed}"))
        result = subtract_files(str(sci), str(tmpl), settings=Settings(), exposure_id=seed)
        out[seed] = (pair, result, ends)
    return out


def test_streak_is_found_and_masked(runs):
    for seed, ends in CASES.items():
        _, result, _ = runs[seed]
        found = result.metadata.get("streaks", step=result.metadata.name)
        assert len(found) == 1, found
        st = found[0]
        want = math.degrees(math.atan2(ends[3] - ends[1], ends[2] - ends[0])) % 180
        got = math.degrees(math.atan2(st["y1"] - st["y0"], st["x1"] - st["x0"])) % 180
        assert abs((got - want + 90) % 180 - 90) < 0.5
        assert _distance([st["x0"], st["x1"]], [st["y0"], st["y1"]], ends).max() < 2.0
        bit = 1 << result.mask_planes["STREAK"]
        ny, nx = result.mask.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        on = (result.mask & bit) != 0
        # Every pixel within 1 px of the streak's ridge is masked where the difference is
        # valid (a few px of border are not), none beyond 10 px.
        ridge = (_distance(xx, yy, ends) < 1.0) & result.zogy.valid
        assert on[ridge].mean() >= 0.99, on[ridge].mean()
        assert not on[_distance(xx, yy, ends) > 10.0].any()


def test_sources_on_the_streak_are_flagged_and_others_not(runs):
    flagged_on, flagged_off = [], []
    for seed, ends in CASES.items():
        pair, result, _ = runs[seed]
        ds = result.dia_sources
        d = _distance([s["x"] for s in ds], [s["y"] for s in ds], ends)
        flagged_on += [
            s["pixelFlags_streakCenter"] for s, di in zip(ds, d, strict=True) if di < 1.5
        ]
        hit = match_truth(result, pair.truth)
        far = _distance(pair.truth["x"], pair.truth["y"], ends) > 20.0
        flagged_off += [ds[h]["pixelFlags_streak"] for h, f in zip(hit, far, strict=True)
                        if h >= 0 and f]  # fmt: skip
    assert len(flagged_on) >= 2 and all(flagged_on)
    assert len(flagged_off) >= 50 and not any(flagged_off)


def test_no_streak_no_mask(runs):
    _, result, _ = runs[6]
    assert result.metadata.get("streaks", step=result.metadata.name) == []
    assert not ((result.mask & (1 << result.mask_planes["STREAK"])) != 0).any()
    assert not any(s["pixelFlags_streak"] for s in result.dia_sources)
