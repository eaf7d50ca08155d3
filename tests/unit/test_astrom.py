"""fitAstrometry: jitcore.astrom (fit, stars, matching), stream.pipeline.astrometry.refit_mapping
on a
template whose WCS is wrong, and the warp taking the refitted mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffstream.jitcore.astrom import (
    PolyTransform,
    fit_transform,
    match_positions,
    n_terms,
    star_centroids,
)
from diffstream.jitcore.background import estimate_background
from diffstream.jitcore.detect import detect
from diffstream.jitcore.masks import UNUSABLE_PLANES, bits
from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.jitcore.zogy import zogy
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.pipeline.astrometry import refit_mapping
from diffstream.stream.pipeline.warping import warp_template, wcs_mapping
from diffstream.stream.sim.simulate import simulate_pair

pytestmark = pytest.mark.unit


# --- fit_transform -----------------------------------------------------------------------


def _poly(order, rng):
    """A random polynomial transform close to the identity, as a callable."""
    coeffs = np.zeros((2, n_terms(order)))
    coeffs[0, 0], coeffs[1, 0] = rng.uniform(-3, 3, 2)
    coeffs[0, 1], coeffs[1, 2] = 300.0 + rng.uniform(-1, 1, 2)  # scale 300 px per unit u
    coeffs[0, 2], coeffs[1, 1] = rng.uniform(-2, 2, 2)
    if order > 1:
        coeffs[:, 3:] = rng.uniform(-0.5, 0.5, (2, n_terms(order) - 3))
    return PolyTransform(order, coeffs, (250.0, 260.0), 300.0)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_fit_transform_recovers_noise_free_polynomials(order):
    rng = np.random.default_rng(order)
    truth = _poly(order, rng)
    src = rng.uniform(0, 500, (40, 2))
    dst = np.column_stack(truth(src[:, 0], src[:, 1]))
    fit, rms, n_used = fit_transform(src, dst, order=order)
    assert n_used == 40 and rms < 1e-8
    grid = rng.uniform(-50, 550, (100, 2))
    np.testing.assert_allclose(
        np.column_stack(fit(grid[:, 0], grid[:, 1])),
        np.column_stack(truth(grid[:, 0], grid[:, 1])),
        atol=1e-7,
    )


def test_affine_is_a_rotation_scale_shift():
    rng = np.random.default_rng(0)
    th = math.radians(0.7)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) * 1.001
    src = rng.uniform(0, 2000, (30, 2))
    dst = src @ rot.T + [3.2, -1.1]
    fit, _, _ = fit_transform(src, dst, order=1)
    x, y = fit(np.array([0.0, 1000.0]), np.array([0.0, 500.0]))
    want = np.array([[0.0, 0.0], [1000.0, 500.0]]) @ rot.T + [3.2, -1.1]
    np.testing.assert_allclose(np.column_stack([x, y]), want, atol=1e-8)


def test_clipping_rejects_outliers_and_rms_is_the_noise():
    rng = np.random.default_rng(5)
    src = rng.uniform(0, 1000, (200, 2))
    sigma = 0.05
    dst = src + [0.4, -0.3] + rng.normal(size=src.shape) * sigma
    dst[:6] += rng.choice([-1, 1], (6, 2)) * rng.uniform(2, 5, (6, 2))  # mismatches
    fit, rms, n_used = fit_transform(src, dst, order=1, clip=3.0, iterations=5)
    assert 188 <= n_used <= 194  # the 6 outliers, plus at most ~1% of the Gaussian tail
    # 2-D RMS of Gaussian residuals is sqrt(2) sigma (clipping trims it by ~1%).
    assert rms == pytest.approx(math.sqrt(2) * sigma, rel=0.12)
    x, y = fit(np.array([500.0]), np.array([500.0]))
    assert abs(x[0] - 500.4) < 0.02 and abs(y[0] - 499.7) < 0.02
    # Without clipping the outliers pull the fit and inflate the RMS.
    _, rms0, n0 = fit_transform(src, dst, order=1, iterations=0)
    assert n0 == 200 and rms0 > 3 * rms


def test_weights_favour_precise_points():
    rng = np.random.default_rng(9)
    src = rng.uniform(0, 1000, (60, 2))
    err = np.where(np.arange(60) < 30, 0.01, 0.5)
    dst = src + rng.normal(size=src.shape) * err[:, None]
    w_fit, _, _ = fit_transform(src, dst, order=1, weights=1 / err**2, iterations=0)
    u_fit, _, _ = fit_transform(src, dst, order=1, iterations=0)
    grid = rng.uniform(0, 1000, (50, 2))

    def error(f):
        return np.hypot(*(np.array(f(grid[:, 0], grid[:, 1])) - grid.T)).max()

    assert error(w_fit) < 0.5 * error(u_fit)


def test_fit_transform_checks():
    src = np.random.default_rng(0).uniform(0, 100, (10, 2))
    with pytest.raises(ValueError, match=r"src_xy must have shape \(n, 2\)"):
        fit_transform(src[:, 0], src)
    with pytest.raises(TypeError, match="dst_xy must be real numbers"):
        fit_transform(src, src.astype(complex))
    with pytest.raises(ValueError, match="src_xy must be finite, got 1 bad values"):
        bad = src.copy()
        bad[0, 0] = np.nan
        fit_transform(bad, src)
    with pytest.raises(ValueError, match="src_xy has 10 points but dst_xy has 9"):
        fit_transform(src, src[:9])
    for order in (0, 4, True, 1.0):
        with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
            fit_transform(src, src, order=order)
    for clip in (0.0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="clip must be a finite number > 0"):
            fit_transform(src, src, clip=clip)
    for iterations in (-1, 1.5, False):
        with pytest.raises(ValueError, match="iterations must be an integer >= 0"):
            fit_transform(src, src, iterations=iterations)
    with pytest.raises(ValueError, match="order 3 needs at least 12 matched points, got 10"):
        fit_transform(src, src, order=3)
    with pytest.raises(ValueError, match=r"weights must have shape \(10,\)"):
        fit_transform(src, src, weights=np.ones(9))
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        fit_transform(src, src, weights=np.zeros(10))
    line = np.column_stack([np.arange(10.0), 2 * np.arange(10.0)])
    with pytest.raises(ValueError, match=r"do not determine an order-1 polynomial \(rank 2 < 3"):
        fit_transform(line, line)


# --- stars and matching --------------------------------------------------------------------


def test_star_centroids_positions():
    rng = np.random.default_rng(4)
    shape, sigma, k = (200, 220), 1.4, 15
    truth = rng.uniform(15, 185, (25, 2))
    img = rng.normal(size=shape) * 10.0
    for x, y in truth:
        ix, iy = round(x), round(y)
        img[iy - 7 : iy + 8, ix - 7 : ix + 8] += 20000 * gaussian_psf(
            sigma, k, dx=x - ix, dy=y - iy
        )
    bad = np.zeros(shape, bool)
    x, y, flux, snr = star_centroids(img, np.full(shape, 100.0), bad, fwhm=2.3548 * sigma)
    assert x.size >= 15  # blends (sep flags) are dropped
    d = np.hypot(x[:, None] - truth[:, 0], y[:, None] - truth[:, 1]).min(axis=1)
    assert np.all(d < 0.05)
    assert np.all(snr > 100) and np.all(np.diff(flux) <= 0)  # brightest first
    with pytest.raises(ValueError, match=r"variance shape \(3, 3\) != image shape"):
        star_centroids(img, np.ones((3, 3)), bad)
    with pytest.raises(ValueError, match="image must be 2-D"):
        star_centroids(img[0], img[0], bad[0])
    with pytest.raises(ValueError, match="fwhm must be a finite number > 0"):
        star_centroids(img, img, bad, fwhm=0.0)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        star_centroids(img, img, bad, threshold=-1.0)


def test_match_positions_one_to_one():
    a = np.array([[0.0, 0.0], [10.0, 0.0], [10.3, 0.0], [50.0, 50.0]])
    b = np.array([[0.1, 0.0], [10.1, 0.0], [80.0, 80.0]])
    ia, ib = match_positions(a, b, radius=1.0)
    # a[1] and a[2] both claim b[1]: ambiguous, dropped; a[3] has no neighbour.
    np.testing.assert_array_equal(ia, [0])
    np.testing.assert_array_equal(ib, [0])
    ia, ib = match_positions(a, np.zeros((0, 2)), radius=1.0)
    assert ia.size == ib.size == 0
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        match_positions(a, b, radius=0.0)


# --- refit_mapping on a template with a wrong WCS ------------------------------------------


def _exposure(sim, wcs=None) -> Exposure:
    return Exposure(
        image=sim.image, variance=sim.variance, mask=sim.mask,
        mask_planes=dict(sim.mask_planes), wcs=wcs if wcs is not None else sim.wcs,
        psf=PsfModel.constant(sim.psf_centre, sim.shape), photo_calib=sim.photo_calib,
    )  # fmt: skip


def _wrong(wcs, shift=(0.5, 0.5), rotation_deg=0.02):
    """The WCS off by a shift (px: 0.71 here) and a rotation about the reference pixel."""
    w = wcs.deepcopy()
    w.wcs.crpix = w.wcs.crpix + np.asarray(shift)
    th = math.radians(rotation_deg)
    w.wcs.cd = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ w.wcs.cd
    w.wcs.set()
    return w


@pytest.fixture(scope="module")
def misregistered():
    pair = simulate_pair(seed=1, shape=(512, 512), n_stars=300, psf_gradient=0.0,
                         transients=False)  # fmt: skip
    sci = _exposure(pair.science)
    good = _exposure(pair.template)
    bad = _exposure(pair.template, _wrong(pair.template.wcs))
    return sci, good, bad


def _mapping_error(mapping, truth, shape, step=16):
    yy, xx = np.mgrid[0 : shape[0] : step, 0 : shape[1] : step].astype(float)
    a, b = np.array(mapping(xx, yy)), np.array(truth(xx, yy))
    return np.hypot(*(a - b))


def test_refit_recovers_the_true_mapping(misregistered):
    sci, good, bad = misregistered
    truth = wcs_mapping(sci.wcs, good.wcs)
    before = _mapping_error(wcs_mapping(sci.wcs, bad.wcs), truth, sci.shape)
    assert before.mean() > 0.6  # the wrong WCS is off by 0.6-0.8 px
    mapping, info = refit_mapping(sci, bad, order=1)
    assert info["applied"] and info["order"] == 1
    assert info["nMatched"] >= 30 and info["nUsed"] >= 0.9 * info["nMatched"]
    err = _mapping_error(mapping, truth, sci.shape)
    assert np.sqrt(np.mean(err**2)) < 0.05 and err.max() < 0.1
    # The stars' own scatter about the fit (both centroids' noise) is what remains.
    assert info["residualRmsBefore"] > 0.6
    assert info["residualRmsAfter"] < 0.15
    assert info["offsetMedian"][0] == pytest.approx(-0.5, abs=0.1)
    # A correct WCS needs (and gets) no correction.
    mapping2, info2 = refit_mapping(sci, good, order=2)
    assert info2["applied"] and info2["residualRmsBefore"] < 0.15
    assert np.sqrt(np.mean(_mapping_error(mapping2, truth, sci.shape) ** 2)) < 0.05


def _mutual_pairs(sci: Exposure, template: Exposure, mapping) -> int:
    """ZOGY on the science and the template warped with ``mapping``: dipole pairs found."""
    t_img, t_var, t_mask, _ = warp_template(template, sci, mapping=mapping)
    s_img = sci.image * sci.photo_calib
    s_var = sci.variance * sci.photo_calib**2
    t_img, t_var = t_img * template.photo_calib, t_var * template.photo_calib**2
    unusable = bits(sci.mask_planes, list(UNUSABLE_PLANES))
    bad = (((sci.mask | t_mask) & unusable) != 0) | ~np.isfinite(t_img) | ~np.isfinite(t_var)
    s_img = np.where(bad, 0, s_img - estimate_background(s_img, bad)[0]).astype(np.float32)
    t_img = np.where(bad, 0, t_img - estimate_background(t_img, bad)[0]).astype(np.float32)
    s_var = np.where(bad, np.nan, s_var).astype(np.float32)
    t_var = np.where(bad, np.nan, t_var).astype(np.float32)
    z = zogy(s_img, s_var, t_img, t_var, bad, sci.psf, template.psf, tile_size=512)
    found = detect(z.score, z.valid, threshold=5.0)
    adj = found["adjacent_opposite"]
    pos = np.flatnonzero((found["sign"] > 0) & (adj >= 0))
    return int((adj[adj[pos]] == pos).sum())


def test_zogy_dipoles_vanish_after_refit(misregistered):
    sci, _, bad = misregistered
    n_wrong = _mutual_pairs(sci, bad, wcs_mapping(sci.wcs, bad.wcs))
    mapping, info = refit_mapping(sci, bad)
    n_refit = _mutual_pairs(sci, bad, mapping)
    assert info["applied"]
    assert n_wrong >= 20  # every bright star leaves a dipole at 0.7 px
    assert n_refit <= 1


def test_too_few_stars_falls_back_to_the_wcs(misregistered):
    sci, _, bad = misregistered
    mapping, info = refit_mapping(sci, bad, threshold=1e6)
    assert not info["applied"] and info["nScience"] == 0
    assert info["reason"] == "0 stars matched within 5.0 px < required 5"
    x, y = np.array([10.0, 300.0]), np.array([20.0, 400.0])
    np.testing.assert_array_equal(mapping(x, y), wcs_mapping(sci.wcs, bad.wcs)(x, y))
    _, info3 = refit_mapping(sci, bad, order=3, threshold=200.0)
    assert not info3["applied"] and "< required 12" in info3["reason"]


def test_refit_checks(misregistered):
    sci, good, _ = misregistered
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        refit_mapping(sci, good, order=4)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        refit_mapping(sci, good, threshold=0.0)
    with pytest.raises(ValueError, match="search_radius must be a finite number > 0"):
        refit_mapping(sci, good, search_radius=math.nan)
    with pytest.raises(ValueError, match=r"match_radius \(6.0\) must be <= search_radius"):
        refit_mapping(sci, good, match_radius=6.0)
    with pytest.raises(ValueError, match="max_stars must be an integer >= 1"):
        refit_mapping(sci, good, max_stars=0)
    from astropy.wcs import WCS

    linear = WCS(naxis=2)
    nowcs = Exposure(**{**good.__dict__, "wcs": linear})
    with pytest.raises(BadExposure, match="cannot refit astrometry: template_wcs must be"):
        refit_mapping(sci, nowcs)
    blank = Exposure(**{**good.__dict__, "mask": np.full(good.shape, 1 << 8, np.int32)})
    with pytest.raises(BadExposure, match="no usable pixel to find stars in"):
        refit_mapping(sci, blank)


# --- warp_template(mapping=...) ------------------------------------------------------------


def test_warp_template_takes_a_mapping(misregistered):
    sci, good, bad = misregistered
    default = warp_template(bad, sci)
    given = warp_template(bad, sci, mapping=wcs_mapping(sci.wcs, bad.wcs))
    for a, b in zip(default, given, strict=True):
        np.testing.assert_array_equal(a, b)
    shifted = warp_template(good, sci, mapping=lambda x, y: wcs_mapping(sci.wcs, good.wcs)(x, y))
    np.testing.assert_array_equal(shifted[0], warp_template(good, sci)[0])
    with pytest.raises(TypeError, match="mapping must be callable"):
        warp_template(good, sci, mapping=np.zeros(3))
