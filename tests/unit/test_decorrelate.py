"""Decorrelation of PSF-matched differences (diffstream.jitcore.decorrelate) and variance scaling.

The filter loop against a NumPy reference; the filter against the published formula; white
noise and correct variance planes on pure noise (both directions) and on an AL star field;
the PSF of the decorrelated difference; tiling; input checks.  Also the template-variance
scale of diffstream.jitcore.noise (the seed's doScaleTemplateVariance).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import signal

from diffstream.jitcore._kernels.decorrelate import decorrelation_filter
from diffstream.jitcore.alardlupton import al_subtract
from diffstream.jitcore.decorrelate import (
    DECORRELATION_EPSILON,
    decorrelate,
    decorrelation_spectrum,
    tile_products,
)
from diffstream.jitcore.noise import source_free_mask, variance_scale_factor
from diffstream.jitcore.psf import PsfModel, gaussian_psf

pytestmark = pytest.mark.unit

DTYPES = {np.float32: np.complex64, np.float64: np.complex128}
DELTA = np.ones((1, 1))


def ref_filter(ah, bh, vs, vt, num, eps):
    return np.sqrt(num / (vs * np.abs(ah) ** 2 + vt * np.abs(bh) ** 2 + eps * num))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_filter_matches_reference(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    ctype = DTYPES[dtype]
    ah = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(ctype)
    bh = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(ctype)
    ah.flat[0] = bh.flat[0] = 0  # both kernels vanish: eps bounds the filter
    out = np.empty(shape, dtype)
    decorrelation_filter(ah, bh, 2.0, 0.5, 3.0, 1e-3, out)
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    assert_allclose(out, ref_filter(ah, bh, 2.0, 0.5, 3.0, 1e-3), rtol=rtol)
    assert out.flat[0] == pytest.approx(1e-3**-0.5, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.complex64, np.complex128]),
    parts=st.booleans(),
)
def test_tile_products_match_reference(shape, seed, dtype, parts):
    """The fused pass (decorrelation_products) against the NumPy expressions it replaced."""
    rng = np.random.default_rng(seed)

    def spectrum():
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)

    spec = np.stack([spectrum() for _ in range(4 if parts else 3)])
    phi, pdc, ka2, kb2, kas2, kbs2, kas = (spectrum() for _ in range(7))
    got = tile_products(spec, (phi, pdc, ka2, kb2, kas2, kbs2, kas if parts else None))
    d = spec[0] * phi
    want = [d, d * pdc, spec[1] * ka2 + spec[2] * kb2, spec[1] * kas2 + spec[2] * kbs2]
    if parts:
        want.append(spec[3] * kas)
    assert got.shape == (len(want), *shape) and got.dtype == dtype
    # Rounding-level: the same products in the same precision (NumPy's SIMD loops may
    # round the complex products differently in the last bit).
    tol = 1e-6 if dtype == np.complex64 else 1e-14
    for g, w in zip(got, want, strict=True):
        assert_allclose(g, w, rtol=tol, atol=tol * 10)


def test_tile_products_checks_its_inputs():
    spec = np.zeros((3, 4, 3), np.complex64)
    ks = [np.zeros((4, 3), np.complex64) for _ in range(6)]
    with pytest.raises(ValueError, match="come together"):
        tile_products(spec, (*ks, np.zeros((4, 3), np.complex64)))
    with pytest.raises(ValueError, match="kernel spectrum"):
        tile_products(spec, (*ks[:5], np.zeros((4, 3), np.complex128), None))
    with pytest.raises(ValueError, match="spec must be"):
        tile_products(spec[:2], (*ks, None))


def test_spectrum_is_the_published_correction_for_a_convolved_template():
    """phi^ = sqrt((s^2 + t^2 ksum^2) / (s^2 + t^2 |kappa^|^2)) (DMTN-021; LSST's
    DecorrelateALKernelTask.computeDiffimCorrection), up to the eps term."""
    kappa = 1.3 * gaussian_psf(1.4, 15)
    vs, vt, shape = 100.0, 30.0, (64, 48)
    phi = decorrelation_spectrum(DELTA, kappa, vs, vt, shape)
    frame = np.zeros(shape)
    h = 7
    frame[np.ix_(np.arange(-h, h + 1) % 64, np.arange(-h, h + 1) % 48)] = kappa
    kh = np.fft.rfft2(frame)
    num = vs + vt * kappa.sum() ** 2
    want = np.sqrt(num / (vs + vt * np.abs(kh) ** 2 + DECORRELATION_EPSILON * num))
    assert_allclose(phi, want, rtol=1e-12)
    assert phi[0, 0] == pytest.approx(1.0, abs=1e-3)  # fluxes are kept (to eps)
    assert phi.max() <= np.sqrt(1 + vt * kappa.sum() ** 2 / vs) + 1e-12


def noise_pair(seed, shape, kappa, *, vs=100.0, vt=30.0, convolve="template"):
    """Pure-noise difference D = A (x) S - B (x) T and its kernels; science sky doubles in x."""
    rng = np.random.default_rng(seed)
    var_s = vs * (1.0 + np.linspace(0.0, 1.0, shape[1]))[None, :] * np.ones(shape)
    var_t = np.full(shape, vt)
    s = rng.normal(size=shape) * np.sqrt(var_s)
    t = rng.normal(size=shape) * np.sqrt(var_t)
    ksum = kappa.sum()
    if convolve == "template":
        d = s - signal.fftconvolve(t, kappa, mode="same")
        a, b = DELTA, kappa
    else:
        d = (signal.fftconvolve(s, kappa, mode="same") - t) / ksum
        a, b = kappa / ksum, DELTA / ksum
    return d, var_s, var_t, a, b


@pytest.mark.parametrize("convolve", ["template", "science"])
def test_pure_noise_difference_is_white_with_the_stated_variance(convolve):
    shape = (192, 224)
    kappa = 1.1 * gaussian_psf(1.6, 21)
    psf = gaussian_psf(1.5, 21)
    d, vs, vt, a, b = noise_pair(3, shape, kappa, convolve=convolve)
    good = np.ones(shape, bool)
    z = decorrelate(d, vs, vt, good, lambda x, y: (a, b, psf), tile_size=64)
    v = z.valid
    pull = z.difference[v] / np.sqrt(z.difference_variance[v])
    assert abs(pull.std() - 1.0) < 0.05  # pixel noise std within 5% of the variance plane
    assert abs(pull.mean()) < 5.0 / np.sqrt(pull.size)
    r = np.where(v, z.difference / np.sqrt(np.where(v, z.difference_variance, 1.0)), np.nan)
    lag1 = np.nanmean(r[:, 1:] * r[:, :-1]), np.nanmean(r[1:] * r[:-1])
    assert max(abs(c) for c in lag1) < 0.03  # white: neighbours uncorrelated
    if convolve == "science":
        # Without decorrelation the convolved science noise makes neighbours correlated
        # (0.13 here): the whiteness check above can fail.
        raw = d / d.std()
        assert np.mean(raw[:, 1:] * raw[:, :-1]) > 0.1
    assert abs(z.score[v].std() - 1.0) < 0.05
    for tile in z.tiles:
        assert tile.psf_d.sum() == pytest.approx(1.0, abs=1e-12)
        assert tile.f_s == pytest.approx(tile.f_d**2 * (tile.psf_d**2).sum())


def test_star_field_al_difference_noise_matches_its_variance_plane():
    shape = (256, 256)
    rng = np.random.default_rng(12)
    ps = PsfModel.constant(gaussian_psf(2.0, 25), shape)
    pt = PsfModel.constant(gaussian_psf(1.3, 25), shape)
    s, t = np.zeros(shape), np.zeros(shape)
    for _ in range(90):
        x, y = rng.integers(16, 240, 2)
        f = 10 ** rng.uniform(3.0, 5.3)
        s[y - 12 : y + 13, x - 12 : x + 13] += f * ps.at(x, y)
        t[y - 12 : y + 13, x - 12 : x + 13] += f * pt.at(x, y)
    vs, vt = 100.0 + s, 20.0 + 0.2 * t
    s = s + rng.normal(size=shape) * np.sqrt(vs)
    t = t + rng.normal(size=shape) * np.sqrt(vt)
    z, _ = al_subtract(s, vs, t, vt, np.zeros(shape, bool), ps, pt)
    v = z.valid
    pull = z.difference[v] / np.sqrt(z.difference_variance[v])
    assert abs(pull.std() - 1.0) < 0.05
    # The variance plane follows the stars' own noise: pulls on star pixels are unit too.
    stars = v & (s > 30 * np.sqrt(100.0))
    assert stars.sum() > 200
    pull_s = z.difference[stars] / np.sqrt(z.difference_variance[stars])
    assert abs(pull_s.std() - 1.0) < 0.1
    assert np.median(z.difference_variance[stars]) > 3 * np.median(z.difference_variance[v])


def test_point_source_has_the_flux_and_the_psf_of_the_decorrelated_difference():
    shape = (128, 128)
    kappa = gaussian_psf(1.4, 21)
    psf = gaussian_psf(1.5, 21)
    d, vs, vt, a, b = noise_pair(4, shape, kappa, vs=1.0, vt=0.5)
    f = 5000.0
    d[64 - 10 : 64 + 11, 60 - 10 : 60 + 11] += f * psf
    z = decorrelate(d, vs, vt, np.ones(shape, bool), lambda x, y: (a, b, psf), tile_size=128)
    tile = z.tile_at(60, 64)
    h = tile.psf_d.shape[0] // 2
    cut = z.difference[64 - h : 64 + h + 1, 60 - h : 60 + h + 1]
    assert_allclose(cut / f, tile.psf_d, atol=0.02 * tile.psf_d.max())
    err = float(np.sqrt(z.flux_variance[64, 60]))
    assert z.flux[64, 60] == pytest.approx(f, abs=4 * err)
    assert z.score[64, 60] == pytest.approx(f / err, rel=0.05)
    assert np.argmax(z.score) == np.ravel_multi_index((64, 60), shape)


def test_tiles_join_without_seams():
    shape = (160, 160)
    kappa = gaussian_psf(1.4, 21)
    psf = gaussian_psf(1.5, 21)
    d, vs, vt, a, b = noise_pair(5, shape, kappa)
    good = np.ones(shape, bool)
    one = decorrelate(d, vs, vt, good, lambda x, y: (a, b, psf), tile_size=160)
    many = decorrelate(d, vs, vt, good, lambda x, y: (a, b, psf), tile_size=48, workers=2)
    v = one.valid & many.valid
    # Tiles measure their own sky variance (science sky varies in x), so the filters differ
    # slightly from tile to tile; the score is normalised by its own propagated variance.
    assert np.abs(one.score[v] - many.score[v]).max() < 0.05
    assert len(many.tiles) == 16


def test_bad_pixels_are_invalid_within_the_kernel_footprint():
    shape = (96, 96)
    kappa = gaussian_psf(1.4, 21)
    psf = gaussian_psf(1.5, 21)
    d, vs, vt, a, b = noise_pair(6, shape, kappa)
    good = np.ones(shape, bool)
    good[40:44, 50] = False
    d[40:44, 50] = 1e9  # would ring everywhere if used
    z = decorrelate(d, vs, vt, good, lambda x, y: (a, b, psf), tile_size=96)
    r = z.tiles[0].mask_radius
    assert 1 <= r <= z.tiles[0].outer[1] - z.tiles[0].core[1]
    assert not z.valid[40, 50] and not z.valid[40 - r, 50] and z.valid[40 - r - 1, 50]
    assert np.abs(z.score[z.valid]).max() < 6
    assert np.all(np.isnan(z.difference_variance[~z.valid]))


def test_psf_error_fraction_raises_the_score_variance_at_residuals():
    shape = (96, 96)
    kappa = gaussian_psf(1.4, 21)
    psf = gaussian_psf(1.5, 21)
    rng = np.random.default_rng(7)
    s = rng.normal(size=shape) * 10.0
    s[38:59, 38:59] += 1e6 * psf  # a bright star ...
    t = rng.normal(size=shape) * 5.0
    t[38:59, 38:59] += 1.03e6 * gaussian_psf(1e-3 + np.sqrt(1.5**2 - 1.4**2), 21)  # 3% off
    d = s - signal.fftconvolve(t, kappa, mode="same")
    vs, vt, good = np.full(shape, 100.0), np.full(shape, 25.0), np.ones(shape, bool)
    kw = {"tile_size": 96}
    plain = decorrelate(d, vs, vt, good, lambda x, y: (DELTA, kappa, psf), **kw)
    safe = decorrelate(d, vs, vt, good, lambda x, y: (DELTA, kappa, psf), science=s,
                       psf_error_fraction=0.05, **kw)  # fmt: skip
    assert np.abs(plain.score[45:52, 45:52]).max() > 20
    assert np.abs(safe.score[45:52, 45:52]).max() < 5
    far = (slice(0, 20), slice(0, 20))  # empty sky: changed by O(e^2) only
    assert_allclose(safe.score[far], plain.score[far], rtol=0.02)


def test_single_precision_matches_double():
    """Frame FFTs in float32 (the pipeline's default, as for ZOGY): with stars up to 1e7 nJy
    (1e6 x the sky sigma), a 3%-off kernel, a mask and tile seams, the decorrelated
    difference, its variance and the score agree with double precision to a small fraction
    of the noise, and the same pixels are valid."""
    shape = (192, 192)
    kappa = gaussian_psf(1.4, 21)
    psf = gaussian_psf(1.5, 21)
    rng = np.random.default_rng(21)
    s = rng.normal(size=shape) * 10.0
    t = rng.normal(size=shape) * 5.0
    wide = gaussian_psf(1e-3 + np.sqrt(1.5**2 - 1.4**2), 21)
    for k, f in enumerate(np.geomspace(1e3, 1e7, 9)):
        y, x = 24 + 48 * (k // 3), 24 + 48 * (k % 3)
        s[y - 10 : y + 11, x - 10 : x + 11] += f * psf
        t[y - 10 : y + 11, x - 10 : x + 11] += 1.03 * f * wide
    d = s - signal.fftconvolve(t, kappa, mode="same")
    vs = 100.0 + 0.1 * np.abs(s)
    vt = 25.0 + 0.1 * np.abs(t)
    good = np.ones(shape, bool)
    good[20:30, 150:170] = False
    kw = dict(science=s, psf_error_fraction=0.01, tile_size=96)
    args = (d, vs, vt, good, lambda x, y: (DELTA, kappa, psf))
    dbl = decorrelate(*args, precision="double", **kw)
    sgl = decorrelate(*args, precision="single", **kw)
    assert np.array_equal(dbl.valid, sgl.valid)
    v = dbl.valid
    err = np.abs(sgl.score[v] - dbl.score[v])
    assert err.max() < 0.02 and np.median(err) < 1e-4
    noise_d = np.sqrt(dbl.difference_variance[v])
    assert np.abs((sgl.difference[v] - dbl.difference[v]) / noise_d).max() < 5e-3
    assert_allclose(sgl.difference_variance[v], dbl.difference_variance[v], rtol=1e-3)
    assert_allclose(sgl.flux_variance[v], dbl.flux_variance[v], rtol=1e-3)
    # The 3% residuals of the bright stars stand out alike in both.
    assert np.abs(dbl.score[v]).max() > 5
    assert np.abs(sgl.score[v]).max() == pytest.approx(np.abs(dbl.score[v]).max(), rel=1e-3)


def _call(**changes):
    shape = (64, 64)
    args = {
        "difference": np.zeros(shape), "science_variance": np.ones(shape),
        "template_variance": np.ones(shape), "good": np.ones(shape, bool),
        "kernels_at": lambda x, y: (DELTA, gaussian_psf(1.0, 7), gaussian_psf(1.0, 7)),
    }  # fmt: skip
    kw = {}
    for k, v in changes.items():
        (args if k in args else kw)[k] = v
    return decorrelate(*args.values(), **kw)


@pytest.mark.parametrize(
    ("changes", "exc", "match"),
    [
        ({"difference": np.zeros(4)}, ValueError, "difference must be a non-empty 2-D array"),
        ({"science_variance": np.ones((3, 3))}, ValueError, "science_variance shape"),
        ({"good": np.ones((64, 64), int)}, TypeError, "good must be a bool array"),
        ({"tile_size": 8}, ValueError, "tile_size must be >= 16"),
        ({"tile_size": 32.0}, TypeError, "tile_size must be an int"),
        (
            {"kernels_at": lambda x, y: (np.ones((2, 2)), DELTA, gaussian_psf(1.0, 7))},
            ValueError,
            "kernel A must be square with odd size",
        ),
        (
            {"kernels_at": lambda x, y: (np.zeros((3, 3)), DELTA, gaussian_psf(1.0, 7))},
            ValueError,
            "kernel A must have a non-zero sum",
        ),
        ({"psf_error_fraction": 0.1}, ValueError, "needs the science image"),
        ({"psf_error_fraction": -0.1}, ValueError, r"must be in \[0, 1\)"),
        ({"science": np.zeros((3, 3))}, ValueError, "science shape"),
        ({"border": 0}, ValueError, "border must be an int >= 1"),
        ({"good": np.zeros((64, 64), bool)}, ValueError, "no usable pixels"),
        ({"science_variance": np.zeros((64, 64))}, ValueError, "variance planes must be > 0"),
        ({"workers": 0}, ValueError, "workers must be >= 1"),
        ({"precision": "half"}, ValueError, "precision must be one of"),
    ],
)
def test_decorrelate_validation(changes, exc, match):
    with pytest.raises(exc, match=match):
        _call(**changes)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((DELTA, DELTA, 0.0, 1.0, (8, 8)), "var_science must be finite and > 0"),
        ((np.ones((2, 2)), DELTA, 1.0, 1.0, (8, 8)), "kernel a must be square with odd size"),
        ((DELTA, np.ones((9, 9)), 1.0, 1.0, (8, 8)), "kernel b of size 9 exceeds the frame"),
    ],
)
def test_spectrum_validation(args, match):
    with pytest.raises(ValueError, match=match):
        decorrelation_spectrum(*args)


# --- template variance scaling (diffstream.jitcore.noise) ----------------------------------------


@pytest.mark.parametrize("true_factor", [0.6, 1.0, 2.5])
def test_variance_scale_factor_recovers_a_misstated_variance(true_factor):
    shape = (300, 300)
    rng = np.random.default_rng(13)
    sky = 50.0
    img = np.zeros(shape)
    psf = gaussian_psf(1.8, 21)
    for _ in range(60):  # stars must not bias the factor
        x, y = rng.integers(12, 288, 2)
        img[y - 10 : y + 11, x - 10 : x + 11] += 10 ** rng.uniform(3, 5) * psf
    var_true = sky + img
    img = img + rng.normal(size=shape) * np.sqrt(var_true * true_factor)
    good = np.ones(shape, bool)
    good[:, 100] = False
    img[:, 100] = 1e6  # a bad column, excluded
    f = variance_scale_factor(img, var_true, good)
    assert f == pytest.approx(true_factor, rel=0.03)
    free = source_free_mask(img, var_true, good)
    assert not free[:, 100].any() and 0.5 < free.mean() < 0.99


def test_variance_scale_factor_is_limited():
    rng = np.random.default_rng(14)
    img = rng.normal(size=(200, 200)) * 100.0
    assert variance_scale_factor(img, np.ones((200, 200)), np.ones((200, 200), bool)) == 10.0
    assert variance_scale_factor(img, np.full((200, 200), 1e6), np.ones((200, 200), bool),
                                 limit=4.0) == 0.25  # fmt: skip


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: variance_scale_factor(
                np.zeros((9, 9)), np.ones((9, 9)), np.ones((9, 9), bool), limit=1.0
            ),
            "limit must be > 1",
        ),
        (
            lambda: source_free_mask(np.zeros((9, 9)), np.ones((8, 9)), np.ones((9, 9), bool)),
            "shapes differ",
        ),
        (
            lambda: source_free_mask(
                np.zeros((9, 9)), np.ones((9, 9)), np.ones((9, 9), bool), threshold=0.0
            ),
            "need threshold > 0",
        ),
        (
            lambda: variance_scale_factor(np.zeros((5, 5)), np.ones((5, 5)), np.ones((5, 5), bool)),
            "needs >= 100 finite values",
        ),
    ],
)
def test_variance_scale_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
