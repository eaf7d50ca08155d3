"""Trailed sources (issue 15): simulated fast movers are recovered, point sources are not trailed.

Seeded pairs with ``n_trails`` fast movers (stream/sim/trails.py: length 5-40 px, random angle,
ZOGY S/N 20-60, rendered as a sum of the simulator's own point sources, not by the pipeline's
analytic model) and point-source transients at S/N 20-60, through the whole ``subtract``
pipeline.  The truth in the alert's units comes from the truth's end points through the WCS
(astropy's separation and position angle), not from the code's Jacobian conversion.

Statistics that can fail:
* trails: length within 10% and bearing within 5 degrees in >= 90% of them (the issue's
  bounds), and the median length error under 3% (a bias check that is tighter than the
  per-trail bound);
* point sources: "length consistent with 0".  Near L = 0 the model is even in L, so the
  Gaussian statistic is q / sigma_q with q = L^2, which equals L / (2 trailLengthErr);
  >= 90% of point sources must have it below 3 (pure noise: 99.9%; the rest is PSF_D's
  departure from a circular Gaussian, which a trail of ~1 px absorbs at S/N 60), while
  >= 95% of the trails have it above 3.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from tests.science.truth import match_truth

pytestmark = [pytest.mark.science, pytest.mark.slow]

SEEDS = (11, 12)


def _truth_on_sky(wcs, tr):
    """(length arcsec, bearing deg in [0, 180)) of a truth trail from its end points."""
    th = np.radians(tr["angle_deg"])
    half = 0.5 * tr["length_px"]
    ends = np.array([[tr["x"] - half * np.cos(th), tr["y"] - half * np.sin(th)],
                     [tr["x"] + half * np.cos(th), tr["y"] + half * np.sin(th)]])  # fmt: skip
    ra, dec = wcs.all_pix2world(ends[:, 0], ends[:, 1], 0)
    a, b = SkyCoord(ra[0], dec[0], unit="deg"), SkyCoord(ra[1], dec[1], unit="deg")
    return a.separation(b).arcsec, a.position_angle(b).deg % 180.0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Per truth trail: (true length ", true bearing, diaSource); per point source: diaSource."""
    trails, points = [], []
    for seed in SEEDS:
        pair = simulate_pair(seed=seed, shape=(512, 512), n_transients=30, n_variables=0,
                             snr_range=(20.0, 60.0), n_trails=15)  # fmt: skip
        sci, tmpl = write_pair(pair, tmp_path_factory.mktemp(f"trails-{seed}"))
        result = subtract_files(str(sci), str(tmpl), settings=Settings(), exposure_id=seed)
        ds = result.dia_sources
        wcs = pair.science.wcs
        hit = match_truth(result, pair.truth)
        points += [ds[h] for h in hit.tolist() if h >= 0]
        # A trail's diaSource: the one whose fitted trail centre is nearest the truth's (a
        # faint trail may be detected in pieces; each piece fits the whole trail).
        fit = [s for s in ds if s["trailRa"] is not None]
        xy = np.array(wcs.all_world2pix([s["trailRa"] for s in fit], [s["trailDec"] for s in fit],
                                        0)).T  # fmt: skip
        for tr in pair.trails:
            d = np.hypot(xy[:, 0] - tr["x"], xy[:, 1] - tr["y"])
            k = int(np.argmin(d))
            length, bearing = _truth_on_sky(wcs, tr)
            trails.append((length, bearing, fit[k] if d[k] < 3.0 else None))
    return trails, points


def test_simulated_trails_are_recovered(fitted):
    trails, _ = fitted
    assert len(trails) == 15 * len(SEEDS)
    found = [(lt, bt, s) for lt, bt, s in trails if s is not None and not s["trail_flag"]]
    assert len(found) >= 0.95 * len(trails)
    rel = np.array([s["trailLength"] / lt - 1.0 for lt, _, s in found])
    dang = np.array([(s["trailAngle"] - bt + 90.0) % 180.0 - 90.0 for _, bt, s in found])
    good = (np.abs(rel) < 0.10) & (np.abs(dang) < 5.0)
    # Over every truth trail: one not found counts as a failure.
    assert good.sum() >= 0.90 * len(trails), (np.round(rel, 3), np.round(dang, 2))
    assert abs(np.median(rel)) < 0.03, np.median(rel)
    q = np.array([s["trailLength"] / (2 * s["trailLengthErr"]) for _, _, s in found])
    assert np.mean(q > 3.0) >= 0.95


def test_point_sources_have_length_consistent_with_zero(fitted):
    _, points = fitted
    assert len(points) >= 50
    assert all(s["trailNdata"] > 0 for s in points)
    ok = [s for s in points if not s["trail_flag"]]
    assert len(ok) >= 0.95 * len(points)
    q = np.array([
        0.0 if s["trailLengthErr"] is None or not np.isfinite(s["trailLengthErr"])
        else s["trailLength"] / (2 * s["trailLengthErr"]) for s in ok
    ])  # fmt: skip
    assert np.mean(q < 3.0) >= 0.90, np.sort(q)[-10:]
