"""Dipoles from misregistered stars: the fitted offset matches the truth, within the errors.

Seeded scenes of isolated stars whose template copies are moved by a fraction of a pixel in
random directions, subtracted with ZOGY (both seeing orders), then detect -> measure ->
fit_dipoles, as the pipeline does.  All stars are bright enough to be detected whatever the
noise (S/N of the lobes > 10): selecting on the noise would bias the fitted lengths upward
(a faint dipole is detected when the noise makes it look longer).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffstream.jitcore.detect import detect
from diffstream.jitcore.dipole import fit_dipoles, merge_dipoles
from diffstream.jitcore.measure import measure
from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.jitcore.zogy import zogy

pytestmark = pytest.mark.science

SHAPE = (256, 256)
K = 21
SEEDS = range(6)


def _add(img, x, y, flux, sigma):
    h = K // 2
    ix, iy = math.floor(x + 0.5), math.floor(y + 0.5)
    img[iy - h : iy + h + 1, ix - h : ix + h + 1] += flux * gaussian_psf(
        sigma, K, dx=x - ix, dy=y - iy
    )


def _scene(seed, sig_s, sig_t, offset):
    """ZOGY products and the truth of 25 stars misregistered by ``offset`` px."""
    rng = np.random.default_rng(seed)
    grid = np.array([(x, y) for y in np.linspace(25, 230, 5) for x in np.linspace(25, 230, 5)])
    pos = grid + rng.uniform(-3, 3, grid.shape)
    flux = np.exp(rng.uniform(math.log(3e4), math.log(1e5), len(pos)))
    ang = rng.uniform(0, 2 * math.pi, len(pos))
    sci, tpl = np.zeros(SHAPE), np.zeros(SHAPE)
    for (x, y), f, a in zip(pos, flux, ang, strict=True):
        _add(sci, x, y, f, sig_s)
        _add(tpl, x + offset * math.cos(a), y + offset * math.sin(a), f, sig_t)
    svar, tvar = 30.0**2 + sci, 15.0**2 + tpl  # sky + the stars' own photon noise
    sci += rng.normal(size=SHAPE) * np.sqrt(svar)
    tpl += rng.normal(size=SHAPE) * np.sqrt(tvar)
    sci, tpl, svar, tvar = (a.astype(np.float32) for a in (sci, tpl, svar, tvar))
    psf_s = PsfModel.constant(gaussian_psf(sig_s, K), SHAPE)
    psf_t = PsfModel.constant(gaussian_psf(sig_t, K), SHAPE)
    z = zogy(sci, svar, tpl, tvar, np.zeros(SHAPE, bool), psf_s, psf_t, tile_size=256)
    # Truth: the dipole centroid (midway between the star's two positions), flux, length
    # and angle of the vector from the negative (template) to the positive (science) lobe.
    mid = pos + 0.5 * offset * np.column_stack([np.cos(ang), np.sin(ang)])
    truth = np.column_stack([mid, flux, np.full(len(pos), offset), np.degrees(ang + math.pi)])
    return z, (sci, svar, psf_s, tpl, tvar, psf_t), truth


def _fit(seed, sig_s, sig_t, offset, joint):
    z, (sci, svar, psf_s, tpl, tvar, psf_t), truth = _scene(seed, sig_s, sig_t, offset)
    found = detect(z.score, z.valid, threshold=5.0)
    psf_d_at = lambda x, y: z.tile_at(x, y).psf_d  # noqa: E731
    rows = measure(found, difference=z.difference, difference_variance=z.difference_variance,
                   psf_d_at=psf_d_at, science=sci, science_variance=svar,
                   psf_science_at=psf_s.at, template=tpl, template_variance=tvar,
                   psf_template_at=psf_t.at)  # fmt: skip
    planes = {}
    if joint:
        planes = dict(science=sci, science_variance=svar, psf_science_at=psf_s.at,
                      template=tpl, template_variance=tvar, psf_template_at=psf_t.at)  # fmt: skip
    dip = fit_dipoles(found, rows, z.difference, z.difference_variance, psf_d_at, **planes)
    return rows, dip, truth


def _pooled(sig_s, sig_t, offset, joint):
    out = []
    for seed in SEEDS:
        rows, dip, truth = _fit(seed, sig_s, sig_t, offset, joint)
        pos = dip[dip["dipoleLobe"] > 0]
        # One mutual pair per star; at most one other detection per scene (a residual lobe
        # of the brightest stars, 1e5 nJy on 900 nJy of sky noise per pixel).
        assert len(pos) == len(truth) and 2 * len(truth) <= len(dip) <= 2 * len(truth) + 1
        merged, _, _ = merge_dipoles(rows, dip)
        assert len(merged) == len(dip) - pos["isDipole"].sum()  # one row per dipole
        d = np.hypot(pos["dipoleX"][:, None] - truth[:, 0], pos["dipoleY"][:, None] - truth[:, 1])
        k = d.argmin(axis=1)
        assert np.all(d.min(axis=1) < 0.5) and len(set(k)) == len(truth)
        t = truth[k]
        d_angle = (pos["dipoleAngle"] - t[:, 4] + 180.0) % 360.0 - 180.0
        out.append(np.column_stack([
            pos["dipoleLength"] - t[:, 3], pos["dipoleLengthErr"], d_angle, pos["dipoleAngleErr"],
            pos["dipoleMeanFlux"] - t[:, 2], pos["dipoleMeanFluxErr"], pos["isDipole"],
        ]))  # fmt: skip
    return np.concatenate(out)


def _within_errors(resid, err, *, pull_std=(0.75, 1.3)):
    n = resid.size
    assert abs(resid.mean()) < 5 * resid.std() / math.sqrt(n), (resid.mean(), resid.std())
    pull = resid / err
    assert pull_std[0] < pull.std() < pull_std[1], pull.std()


@pytest.mark.parametrize(
    ("sig_s", "sig_t"), [(1.3, 1.0), (1.0, 1.3)], ids=["sharper-template", "sharper-science"]
)
def test_subpixel_misregistration_gives_the_true_offset(sig_s, sig_t):
    """0.3 px: the joint fit (difference + science + template) recovers length and angle."""
    res = _pooled(sig_s, sig_t, 0.3, joint=True)
    assert res[:, 6].all()  # every one classified as a dipole
    _within_errors(res[:, 0], res[:, 1])  # dipoleLength (px)
    _within_errors(res[:, 2], res[:, 3])  # dipoleAngle (deg)
    _within_errors(res[:, 4], res[:, 5])  # dipoleMeanFlux = the star's flux
    # The errors are small enough for this to mean something: 0.3 px to better than 5%.
    assert np.median(res[:, 1]) < 0.015 and np.median(res[:, 3]) < 3.0


def test_difference_alone_recovers_a_wider_offset():
    """1.5 px: far enough from the flux-length degeneracy for D alone (detect-only).

    D alone carries one known systematic: a PSF stamp moved by sub-pixel interpolation is
    not the PSF at that position when the PSF is near critical sampling, and the small
    difference of two overlapping lobes amplifies it.  Noise-free 1.5 px dipoles of
    pixel-integrated Gaussians come out 6% short at sigma 1.0 px, 3% at 1.3 and 0.8% at 1.8
    (exact when the data are made with the interpolated stamps themselves), here ~0.4 of a
    statistical error per star.  The joint fit is free of it (its length comes from the
    science and template centroids, which the interpolation keeps exactly).
    """
    res = _pooled(1.3, 1.0, 1.5, joint=False)
    assert res[:, 6].all()
    length, err = res[:, 0], res[:, 1]
    assert abs(length.mean()) < 0.03 * 1.5  # within 3% of the truth
    assert 0.75 < (length / err).std() < 1.3
    _within_errors(res[:, 2], res[:, 3], pull_std=(0.75, 1.3))  # the angle is unbiased


# --- dipoles with one lobe below the detection threshold (issue 15) -------------------------


def _faint_scene(seed, offset, flux_range, *, moved=True, sig_s=1.3, sig_t=1.0, on_score=False):
    """25 stars moved by ``offset`` px (or, with ``moved=False``, new point sources with no
    template counterpart) faint enough that a dipole's lobes straddle the 5 sigma threshold;
    the pipeline's detect -> measure -> fit_dipoles (joint fit) on the ZOGY difference."""
    rng = np.random.default_rng(1000 + seed)
    grid = np.array([(x, y) for y in np.linspace(25, 230, 5) for x in np.linspace(25, 230, 5)])
    pos = grid + rng.uniform(-3, 3, grid.shape)
    flux = np.exp(rng.uniform(math.log(flux_range[0]), math.log(flux_range[1]), len(pos)))
    ang = rng.uniform(0, 2 * math.pi, len(pos))
    sci, tpl = np.zeros(SHAPE), np.zeros(SHAPE)
    for (x, y), f, a in zip(pos, flux, ang, strict=True):
        _add(sci, x, y, f, sig_s)
        if moved:
            _add(tpl, x + offset * math.cos(a), y + offset * math.sin(a), f, sig_t)
    svar, tvar = 30.0**2 + sci, 15.0**2 + tpl
    sci += rng.normal(size=SHAPE) * np.sqrt(svar)
    tpl += rng.normal(size=SHAPE) * np.sqrt(tvar)
    sci, tpl, svar, tvar = (a.astype(np.float32) for a in (sci, tpl, svar, tvar))
    psf_s = PsfModel.constant(gaussian_psf(sig_s, K), SHAPE)
    psf_t = PsfModel.constant(gaussian_psf(sig_t, K), SHAPE)
    z = zogy(sci, svar, tpl, tvar, np.zeros(SHAPE, bool), psf_s, psf_t, tile_size=256)
    found = detect(z.score, z.valid, threshold=5.0)
    psf_d_at = lambda x, y: z.tile_at(x, y).psf_d  # noqa: E731
    planes = dict(science=sci, science_variance=svar, psf_science_at=psf_s.at,
                  template=tpl, template_variance=tvar, psf_template_at=psf_t.at)  # fmt: skip
    rows = measure(found, difference=z.difference, difference_variance=z.difference_variance,
                   psf_d_at=psf_d_at, **planes)  # fmt: skip
    score = {"score": z.score} if on_score else {}
    dip = fit_dipoles(found, rows, z.difference, z.difference_variance, psf_d_at, **planes,
                      **score)  # fmt: skip
    near = np.hypot(found["x"][:, None] - pos[:, 0], found["y"][:, None] - pos[:, 1]).min(axis=1)
    return found, dip, near < 4.0


@pytest.mark.parametrize("on_score", [False, True], ids=["matched-filter", "score"])
@pytest.mark.parametrize(("offset", "flux_range"), [(0.5, (2e3, 1.2e4)), (1.0, (2e3, 6e3))])
def test_dipoles_with_an_undetected_lobe_are_flagged(offset, flux_range, on_score):
    """Misregistered stars of which only one lobe is detected (a single-sign detection, no
    opposite-sign source within the pairing radius) are dipoles all the same.

    Before the hidden-lobe search none of them was fitted (isDipole False for all).  Now:
    >= 60% are classified (the rest: the opposite lobe's matched filter fell below 3 sigma,
    or the dipole S/N below LSST's 5 sqrt 2, both honest non-detections, measured at
    72-95% on seeds 0-3), >= 95% of those whose fit converged with S/N >= 5 sqrt 2 (the
    flux-ratio and separation criteria hold for true dipoles), and their lengths are the
    truth's (median within 20%)."""
    singles, lengths = [], []
    for seed in range(6):
        found, dip, star = _faint_scene(seed, offset, flux_range, on_score=on_score)
        single = star & (found["adjacent_opposite"] < 0)
        singles.append(dip[single])
    s = np.concatenate(singles)
    assert len(s) >= 25, len(s)
    assert np.all(s["dipolePartner"] == -1)
    assert s["isDipole"].mean() >= 0.60, s["isDipole"].mean()
    strong = s["dipoleFitAttempted"] & (s["dipoleFitCode"] == 0) & (s["dipoleSnr"] >= 5 * 2**0.5)
    assert strong.sum() >= 15 and s["isDipole"][strong].mean() >= 0.95
    lengths = s["dipoleLength"][s["isDipole"]]
    assert abs(np.median(lengths) / offset - 1.0) < 0.20, np.median(lengths)
    merged, _, index = merge_dipoles(np.zeros(len(s), dtype=[("x", "f8")]), s)
    assert len(merged) == len(s)  # a single-lobe dipole keeps its one row


@pytest.mark.parametrize("on_score", [False, True], ids=["matched-filter", "score"])
def test_point_sources_are_not_single_lobe_dipoles(on_score):
    """New point sources at S/N 5-20 (no template counterpart): the hidden-lobe search finds
    a noise dip of 3 sigma near a few percent of them at most, and none is classified."""
    dips = []
    for seed in range(6):
        found, dip, star = _faint_scene(seed, 0.0, (2e3, 8e3), moved=False, on_score=on_score)
        dips.append(dip[star])
    d = np.concatenate(dips)
    assert len(d) >= 100
    assert d["isDipole"].sum() == 0
    assert d["dipoleFitAttempted"].mean() <= 0.05
