"""The widened simulator (issue 12): defects in both images, sources on defects, Sersic
hosts, Moffat PSFs, resampled template noise; each option against an expectation of its own."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.stream.sim.galaxies import sersic_stamp
from diffstream.stream.sim.simulate import simulate_pair

pytestmark = pytest.mark.unit

BAD = 1 << DEFAULT_PLANES["BAD"]
CR = 1 << DEFAULT_PLANES["CR"]
SMALL = {"shape": (256, 256), "n_stars": 60, "n_transients": 20, "n_variables": 6,
         "n_saturated": 1}  # fmt: skip


def test_template_defects_are_flagged_in_the_template():
    pair = simulate_pair(seed=3, **SMALL, n_bad_columns_template=2, n_cosmic_rays_template=8)
    tmask = pair.template.mask
    for x, y0, y1 in pair.params["bad_columns_template"]:
        assert np.all(tmask[y0:y1, x] & BAD)
    assert 8 <= int(np.count_nonzero(tmask & CR)) <= 24  # 8 hits of 1-3 px
    plain = simulate_pair(seed=3, **SMALL)
    assert not np.any(plain.template.mask & (BAD | CR))
    # The defects are the only difference (their own random streams).
    assert_array_equal(plain.truth, pair.truth)
    ok = (tmask & (BAD | CR)) == 0
    assert_array_equal(plain.template.image[ok], pair.template.image[ok])


def test_avoid_defects_false_lets_sources_sit_on_bad_columns():
    kw = dict(SMALL, n_transients=60, n_bad_columns=6, min_separation_px=8.0)
    near = []
    for avoid in (True, False):
        pair = simulate_pair(seed=4, **kw, avoid_defects=avoid)
        cols = np.array(pair.params["bad_columns"], dtype=np.float64)  # (x, y0, y1)
        x, y = pair.truth["x"][:, None], pair.truth["y"][:, None]
        on = (np.abs(x - cols[None, :, 0]) < 3) & (y >= cols[None, :, 1])
        near.append(int(on.any(axis=1).sum()))
    assert near[0] == 0
    assert near[1] >= 2, f"premise: some of 86 sources land within 3 px of 6 columns, {near}"


def test_sersic_stamp_half_light_radius():
    """Half the light inside the r_e ellipse (r_e wide enough for pixels not to matter, the
    stamp big enough to hold nearly all the light: not so for n = 4, whose light beyond
    18 r_e is several per cent, so n <= 2 here)."""
    for n in (0.5, 1.0, 2.0):
        r_e, q, th = 8.0, 0.6, 0.4
        s = sersic_stamp(n, r_e, q, th, 301)
        y, x = np.mgrid[-150:151, -150:151]
        major = x * math.cos(th) + y * math.sin(th)
        minor = -x * math.sin(th) + y * math.cos(th)
        inside = np.hypot(major, minor / q) <= r_e
        assert s[inside].sum() == pytest.approx(0.5, abs=0.02)


def test_hosted_transients_have_hosts_and_lower_snr():
    kw = dict(SMALL, n_transients=20, n_hosted=8)
    pair = simulate_pair(seed=5, **kw)
    bare = simulate_pair(seed=5, **SMALL)
    hosted = pair.truth["host_flux_njy"] > 0
    assert int(hosted.sum()) == 8 and np.all(pair.truth["kind"][hosted] == "transient")
    # Same draws otherwise: the hosts only add light and noise.
    assert_array_equal(pair.truth["flux_diff_njy"], bare.truth["flux_diff_njy"])
    assert np.all(pair.truth["snr_expected"][hosted] < bare.truth["snr_expected"][hosted])
    assert_array_equal(pair.truth["snr_expected"][~hosted], bare.truth["snr_expected"][~hosted])
    # The host's light is in both images (template: no transient flux for a transient).
    t = pair.template
    for row in pair.truth[hosted]:
        ix, iy = int(round(row["x_template"])), int(round(row["y_template"]))
        box = t.image[iy - 4 : iy + 5, ix - 4 : ix + 5].astype(np.float64)
        noise = math.sqrt(float(t.variance[iy - 4 : iy + 5, ix - 4 : ix + 5].sum()))
        assert box.sum() > 3 * noise, "host not visible in the template"


def test_moffat_pairs_have_wings():
    g = simulate_pair(seed=6, **SMALL)
    m = simulate_pair(seed=6, **SMALL, psf_profile="moffat", moffat_beta=2.5)
    for p in (m.science.psf_centre, g.science.psf_centre):
        assert p.sum() == pytest.approx(1.0)
    assert m.science.psf_centre.shape[0] > g.science.psf_centre.shape[0]
    h = m.science.psf_centre.shape[0] // 2
    r = np.hypot(*np.mgrid[-h : h + 1, -h : h + 1])
    hg = g.science.psf_centre.shape[0] // 2
    rg = np.hypot(*np.mgrid[-hg : hg + 1, -hg : hg + 1])
    assert m.science.psf_centre[r > 6].sum() > 10 * g.science.psf_centre[rg > 6].sum()
    assert m.science.psf_profile.kind == "moffat"


def test_resampled_template_noise_is_correlated():
    """Per-pixel scatter falls by ((1-f)^2 + f^2)^2 (and the variance plane says so), while
    sums over 8 x 8 boxes keep nearly the unresampled noise: the correlation a matched filter
    sees and the variance plane does not show."""
    kw = dict(SMALL, n_stars=0, n_transients=0, n_variables=0, n_saturated=0,
              n_cosmic_rays=0, n_bad_columns=0, transients=False)  # fmt: skip
    f = 0.5
    plain = simulate_pair(seed=7, **kw)
    res = simulate_pair(seed=7, **kw, resampled_template_noise=f)
    a = plain.template.image[8:-8, 8:-8].astype(np.float64)
    b = res.template.image[8:-8, 8:-8].astype(np.float64)
    factor = ((1 - f) ** 2 + f**2) ** 2
    assert b.var() / a.var() == pytest.approx(factor, rel=0.05)
    assert float(np.median(res.template.variance / plain.template.variance)) == pytest.approx(
        factor, rel=1e-6
    )
    ny, nx = (s // 8 * 8 for s in a.shape)

    def boxes(im):
        return im[:ny, :nx].reshape(ny // 8, 8, nx // 8, 8).sum(axis=(1, 3))

    assert boxes(b).var() / boxes(a).var() > 0.75  # vs 0.25 were the noise white


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resampled_template_noise": 0.6}, r"resampled_template_noise must be in \[0, 0.5\]"),
        ({"n_hosted": 99}, r"n_hosted must be <= n_transients \(20\), got 99"),
        ({"psf_profile": "airy"}, "psf_profile must be one of"),
        ({"n_bad_columns_template": -1}, "n_bad_columns_template must be an int >= 0"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_pair(seed=1, **SMALL, **kwargs)
