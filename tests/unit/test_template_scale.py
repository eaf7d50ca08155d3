"""The template flux scale F_r of an uncalibrated pair: from its stars, or given
(Settings.template_flux_ratio), and what the metadata says of it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from diffstream.jitcore.psf import gaussian_psf
from diffstream.jitcore.starmatch import match_stars
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.psfs import template_scale
from diffstream.stream.provenance.taskmeta import TaskMetadata

pytestmark = pytest.mark.unit

RATIO = 1.08


def _stars(brighten: tuple[float, ...], seed: int = 11):
    """Four stars, the template ``RATIO`` times as bright; the science's star k further
    brightened by ``brighten[k]`` of its flux (a source on it)."""
    rng = np.random.default_rng(seed)
    shape = (200, 200)
    sci = rng.normal(0.0, 5.0, shape)
    tmp = rng.normal(0.0, 5.0, shape)
    stamp = gaussian_psf(1.8, 21)
    for k, extra in enumerate(brighten):
        x, y = 40 + 40 * k, 60 + 25 * (k % 2)
        f = 1e5 * (1 + k)
        sci[y - 10 : y + 11, x - 10 : x + 11] += (1.0 + extra) * f * stamp
        tmp[y - 10 : y + 11, x - 10 : x + 11] += RATIO * f * stamp
    var = np.full(shape, 25.0)
    return match_stars(sci, var, tmp, var, np.zeros(shape, bool))


def _scale(stars, settings, calibrated=False):
    calib = 1.0 if calibrated else None
    exp = SimpleNamespace(photo_calib=calib)
    meta = TaskMetadata()
    f_r = template_scale(exp, exp, stars, settings=settings, meta=meta)
    return f_r, meta.get("photoScale", step=meta.name)


def test_sources_on_most_stars_move_the_measured_scale_not_a_given_one():
    clean = _stars((0.0, 0.0, 0.0, 0.0))
    f_clean, note = _scale(clean, Settings(allow_uncalibrated=True))
    assert note["source"] == "stars" and f_clean == pytest.approx(RATIO, rel=0.005)
    # Sources of 5-10% of the flux on three of the four stars (as the DECam fakes put them).
    lit = _stars((0.10, 0.05, 0.08, 0.0))
    f_lit, _ = _scale(lit, Settings(allow_uncalibrated=True))
    assert f_lit < 0.96 * RATIO  # the median of four ratios follows the three
    given = Settings(allow_uncalibrated=True, template_flux_ratio=f_clean)
    f_given, note = _scale(lit, given)
    assert f_given == f_clean
    assert note["source"] == "given" and note["fRStars"] == pytest.approx(f_lit)


def test_a_given_scale_on_a_calibrated_pair_is_ignored_with_a_warning(caplog):
    stars = _stars((0.0, 0.0, 0.0, 0.0))
    with caplog.at_level(logging.WARNING):
        f_r, note = _scale(stars, Settings(template_flux_ratio=1.3), calibrated=True)
    assert f_r == 1.0 and note["source"] == "ignored"
    assert "template_flux_ratio" in caplog.text


def test_the_given_scale_is_a_science_setting():
    a = Settings().science_config()
    assert a["template_flux_ratio"] is None
    assert Settings(template_flux_ratio=1.1).science_config() != a
    with pytest.raises(ValueError):
        Settings(template_flux_ratio=0.0)
