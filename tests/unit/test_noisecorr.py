"""diffstream.jitcore.noisecorr: correlated-noise estimator, its PSF factor, the tiled scale."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, signal

from diffstream.jitcore._kernels.emptysky import empty_sky_free
from diffstream.jitcore.noisecorr import (
    ScoreScale,
    correlated_variance_factor,
    empty_sky_scale,
    input_noise_correlation,
    noise_autocorrelation,
    scale_map,
)
from diffstream.jitcore.psf import gaussian_psf

pytestmark = pytest.mark.unit


# --- NumPy references --------------------------------------------------------------------


def autocorrelation_reference(image, free, radius):
    """Lag by lag: mean of x(p) x(p + l) over pairs with both pixels free, over lag 0."""
    ok = free & np.isfinite(image)
    x = np.where(ok, image - image[ok].mean(), 0.0)
    ny, nx = x.shape
    out = np.empty((2 * radius + 1, 2 * radius + 1))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            a = (slice(max(0, -dy), ny - max(0, dy)), slice(max(0, -dx), nx - max(0, dx)))
            b = (slice(max(0, dy), ny - max(0, -dy)), slice(max(0, dx), nx - max(0, -dx)))
            both = ok[a] & ok[b]
            out[dy + radius, dx + radius] = (x[a] * x[b])[both].sum() / both.sum()
    return out / out[radius, radius]


def kernel_autocorrelation(k):
    return signal.correlate2d(k, k, mode="full")


def analytic_rho(w, radius):
    """rho of w (x) white noise: A_w(l) / A_w(0), zero beyond w's support."""
    aw = kernel_autocorrelation(w)
    out = np.zeros((2 * radius + 1, 2 * radius + 1))
    cy, cx = aw.shape[0] // 2, aw.shape[1] // 2
    hy, hx = min(cy, radius), min(cx, radius)
    out[radius - hy : radius + hy + 1, radius - hx : radius + hx + 1] = aw[
        cy - hy : cy + hy + 1, cx - hx : cx + hx + 1
    ]
    return out / aw[cy, cx]


def bilinear(dx, dy):
    """3x3 kernel of a bilinear shift by (dx, dy) in [0, 1) (centred, odd for A_w's centre)."""
    w = np.zeros((3, 3))
    w[1:, 1:] = np.outer([1 - dy, dy], [1 - dx, dx])
    return w


# --- noise_autocorrelation ---------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from([np.float32, np.float64]),
    st.integers(9, 41),
    st.integers(9, 37),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
)
def test_autocorrelation_matches_reference(dtype, ny, nx, radius, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(ny, nx)).astype(dtype)
    free = rng.random((ny, nx)) > 0.2
    image[~free & (rng.random((ny, nx)) > 0.5)] = np.nan  # non-finite pixels are never used
    if 2 * radius + 1 > min(ny, nx) or (free & np.isfinite(image)).sum() < 100:
        return
    got = noise_autocorrelation(image, free, radius=radius)
    ref = autocorrelation_reference(image.astype(np.float64), free, radius)
    np.testing.assert_allclose(got, ref, atol=1e-9 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("dx, dy", [(0.5, 0.5), (0.3, 0.0), (0.2, 0.45)])
def test_autocorrelation_of_resampled_noise_is_analytic(dx, dy):
    rng = np.random.default_rng(int(100 * dx + 10 * dy))
    w = bilinear(dx, dy)
    noise = ndimage.correlate(rng.normal(size=(700, 700)), w, mode="wrap")
    free = rng.random(noise.shape) > 0.3  # holes do not bias it
    got = noise_autocorrelation(noise, free, radius=3)
    # ~0.35 M pairs per lag: rho is good to ~3 / sqrt(N) ~ 0.005.
    np.testing.assert_allclose(got, analytic_rho(w, 3), atol=0.01)


def test_autocorrelation_checks():
    good = np.ones((20, 20), bool)
    with pytest.raises(ValueError, match="one shape"):
        noise_autocorrelation(np.zeros((20, 20)), good[:-1])
    with pytest.raises(TypeError, match="bool"):
        noise_autocorrelation(np.zeros((20, 20)), good.astype(int))
    with pytest.raises(ValueError, match="radius must be >= 1"):
        noise_autocorrelation(np.zeros((20, 20)), good, radius=10)
    with pytest.raises(ValueError, match=">= 100 free pixels"):
        noise_autocorrelation(np.zeros((20, 20)), good & (np.arange(20) < 4)[:, None])


# --- correlated_variance_factor ----------------------------------------------------------


@pytest.mark.parametrize("psf_sigma", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("dx, dy", [(0.5, 0.5), (0.25, 0.0)])
def test_variance_factor_is_the_filtered_variance_ratio(psf_sigma, dx, dy):
    """For noise w (x) white, Var(k (x) noise) = sum (w * k)^2, white of the same pixel
    variance gives sum w^2 sum k^2: the factor is their ratio."""
    w, k = bilinear(dx, dy), gaussian_psf(psf_sigma)
    expected = (signal.convolve2d(w, k) ** 2).sum() / ((w**2).sum() * (k**2).sum())
    got = correlated_variance_factor(analytic_rho(w, 3), k)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got > 1


def test_variance_factor_of_white_noise_is_one():
    rho = np.zeros((7, 7))
    rho[3, 3] = 1.0
    assert correlated_variance_factor(rho, gaussian_psf(2.0)) == pytest.approx(1.0)


def test_measured_factor_predicts_the_matched_filter_variance():
    rng = np.random.default_rng(7)
    w, k = bilinear(0.5, 0.5), gaussian_psf(2.0)
    noise = ndimage.correlate(rng.normal(size=(1024, 1024)), w, mode="wrap")
    filtered = ndimage.correlate(noise, k, mode="wrap")
    white = noise.var() * (k**2).sum()
    factor = correlated_variance_factor(noise_autocorrelation(noise, np.ones(noise.shape, bool)), k)
    assert factor == pytest.approx(filtered.var() / white, rel=0.03)
    assert factor > 3  # the premise: a half-pixel bilinear shift, ~1 / sum w^2


def test_input_noise_correlation_ignores_stars():
    rng = np.random.default_rng(8)
    w = bilinear(0.4, 0.0)
    noise = ndimage.correlate(rng.normal(size=(400, 400)), w, mode="wrap")
    var = np.full(noise.shape, (w**2).sum())
    stars = np.zeros(noise.shape)
    stars[rng.integers(10, 390, 40), rng.integers(10, 390, 40)] = 500.0
    image = noise + ndimage.gaussian_filter(stars, 2.0) * 2 * np.pi * 4
    psf = gaussian_psf(2.0)
    rho, factor = input_noise_correlation(image, var, np.ones(noise.shape, bool), psf, crop=300)
    np.testing.assert_allclose(rho, analytic_rho(w, 3), atol=0.02)
    assert factor == pytest.approx(correlated_variance_factor(analytic_rho(w, 3), psf), rel=0.03)


def test_variance_factor_checks():
    with pytest.raises(ValueError, match="square with odd size"):
        correlated_variance_factor(np.ones((4, 4)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="non-zero sum of squares"):
        correlated_variance_factor(np.ones((3, 3)), np.zeros((3, 3)))


# --- empty_sky_scale and scale_map -------------------------------------------------------


def test_empty_sky_scale_ignores_sources_and_follows_tiles():
    rng = np.random.default_rng(9)
    shape = (1024, 1024)
    sigma = np.where(np.arange(shape[1]) < 512, 1.3, 0.9)[None, :] * np.ones(shape)
    score = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    score *= sigma / score.std()
    # Sources over 15% of the frame widen an all-pixel spread, not the empty-sky one.
    src = np.zeros(shape)
    src[rng.integers(0, 1024, 600), rng.integers(0, 1024, 600)] = 3000.0
    score += ndimage.gaussian_filter(src, 3.0)
    valid = np.ones(shape, bool)
    valid[:, -40:] = False
    score[~valid] = 1e6
    sky = empty_sky_scale(score, valid, tile=512)
    assert isinstance(sky, ScoreScale)
    assert sky.tiles.shape == (2, 2) and sky.measured_tiles == 4
    np.testing.assert_allclose(sky.tiles, [[1.3, 0.9], [1.3, 0.9]], rtol=0.03)
    assert 0.5 < sky.free_fraction < 0.99
    # Threads share the rows of tiles: the same numbers.
    two = empty_sky_scale(score, valid, tile=512, workers=2)
    np.testing.assert_array_equal(two.tiles, sky.tiles)
    assert (two.factor, two.free_fraction, two.measured_tiles) == (
        sky.factor, sky.free_fraction, sky.measured_tiles)  # fmt: skip


def test_empty_sky_scale_without_pixels_keeps_stated_noise():
    z = np.zeros((64, 64), np.float32)
    sky = empty_sky_scale(z, np.zeros((64, 64), bool), tile=32)
    assert sky.factor == 1.0 and sky.measured_tiles == 0
    np.testing.assert_array_equal(sky.tiles, np.ones((2, 2)))


def test_sparse_tiles_take_the_global_factor():
    rng = np.random.default_rng(10)
    score = rng.normal(0, 1.2, (256, 256))
    valid = np.ones(score.shape, bool)
    valid[:128, :128] = rng.random((128, 128)) < 0.1  # below min_free
    sky = empty_sky_scale(score, valid, tile=128)
    assert sky.measured_tiles == 3
    assert sky.tiles[0, 0] == sky.factor
    assert sky.factor == pytest.approx(1.2, rel=0.03)


def _free_reference(s, valid, cut, block):
    """The NumPy chain empty_sky_free replaced: usable, hot, blocks any-hot dilated by one."""
    ok = valid & np.isfinite(s)
    hot = ok & (np.abs(s) >= cut)
    if hot.any():
        ny, nx = hot.shape
        by, bx = -(-ny // block), -(-nx // block)
        padded = np.zeros((by * block, bx * block), bool)
        padded[:ny, :nx] = hot
        blocks = padded.reshape(by, block, bx, block).any(axis=(1, 3))
        blocks = ndimage.binary_dilation(blocks, structure=np.ones((3, 3), bool))
        hot = np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[:ny, :nx]
    return ok & ~hot, int(ok.sum())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "block"), [((1, 1), 1), ((50, 37), 3), ((64, 64), 4)])
def test_empty_sky_free_matches_reference(dtype, shape, block):
    rng = np.random.default_rng(shape[0] + block)
    full = rng.normal(size=(2 * shape[0], 2 * shape[1])).astype(dtype)
    full[rng.random(full.shape) < 0.01] = np.nan
    s = full[::2, ::2]  # strided, as empty_sky_scale passes it
    valid = rng.random(shape) < 0.95
    cut = dtype(2.5)
    nb = (-(-shape[0] // block), -(-shape[1] // block))
    free = np.empty(shape, bool)
    n_ok, n_free = empty_sky_free(s, valid, cut, block, np.empty(nb, bool), np.empty(nb, bool),
                                  free)  # fmt: skip
    ref, ref_ok = _free_reference(s, valid, cut, block)
    np.testing.assert_array_equal(free, ref)
    assert (n_ok, n_free) == (ref_ok, int(ref.sum()))


def test_empty_sky_scale_checks():
    z = np.zeros((64, 64))
    v = np.ones((64, 64), bool)
    with pytest.raises(ValueError, match="one shape"):
        empty_sky_scale(z, v[1:])
    bad = ({"threshold": 0}, {"grow": -1}, {"tile": 8}, {"tile": 65}, {"min_free": 0},
           {"limit": 1})  # fmt: skip
    for kw in bad:
        with pytest.raises(ValueError, match="need threshold > 0"):
            empty_sky_scale(z, v, **kw)


def interp_reference(tiles, tile, shape):
    """Per axis: linear between tile centres, the end segments extended to the edges."""

    def interp(pos, centres, values):
        if len(values) == 1:
            return np.full(pos.shape, values[0])
        k = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, len(values) - 2)
        t = (pos - centres[k]) / (centres[k + 1] - centres[k])
        return values[k] + t * (values[k + 1] - values[k])

    cy = np.minimum(np.arange(tiles.shape[0]) * tile + (tile - 1) / 2, shape[0] - 1)
    cx = np.minimum(np.arange(tiles.shape[1]) * tile + (tile - 1) / 2, shape[1] - 1)
    rows = np.array([interp(np.arange(shape[1]), cx, t) for t in tiles])
    out = np.array([interp(np.arange(shape[0]), cy, c) for c in rows.T]).T
    return np.maximum(out, 0.5 * tiles.min())


@pytest.mark.parametrize("shape, tile", [((300, 517), 128), ((64, 64), 64), ((257, 100), 50)])
def test_scale_map_matches_reference(shape, tile):
    rng = np.random.default_rng(shape[0])
    tiles = rng.uniform(0.8, 2.0, (-(-shape[0] // tile), -(-shape[1] // tile)))
    tiles[0, 0] = 0.2  # steep enough that extrapolation meets the floor
    got = scale_map(ScoreScale(1.0, tiles, tile, 1.0, tiles.size), shape)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, interp_reference(tiles, tile, shape), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, tile, workers", [((300, 517), 128, 2), ((64, 64), 64, None),
                                                  ((257, 100), 50, -1)])  # fmt: skip
def test_apply_scale_map_equals_the_map(shape, tile, workers, dtype):
    """The fused pass gives, bit for bit, what dividing by the map and multiplying the
    variance by it twice gave; scale_map_at gives the map's values at the nearest pixels."""
    from diffstream.jitcore.noisecorr import apply_scale_map, scale_map_at

    rng = np.random.default_rng(shape[1])
    tiles = rng.uniform(0.8, 2.0, (-(-shape[0] // tile), -(-shape[1] // tile)))
    tiles[-1, 0] = 0.2  # the floor is met on the extrapolated edge
    scale = ScoreScale(1.0, tiles, tile, 1.0, tiles.size)
    score = rng.normal(size=shape).astype(dtype)
    var = rng.uniform(0.5, 2.0, shape).astype(dtype)
    fmap = scale_map(scale, shape)
    want_s = score / fmap
    want_v = var * fmap
    want_v *= fmap
    apply_scale_map(scale, score, var, workers=workers)
    np.testing.assert_array_equal(score, want_s)
    np.testing.assert_array_equal(var, want_v)
    x = np.concatenate([rng.uniform(-3, shape[1] + 3, 200), [0.0, shape[1] - 1.0]])
    y = np.concatenate([rng.uniform(-3, shape[0] + 3, 200), [shape[0] - 1.0, 0.0]])
    ix = np.clip(np.rint(x).astype(int), 0, shape[1] - 1)
    iy = np.clip(np.rint(y).astype(int), 0, shape[0] - 1)
    got = scale_map_at(scale, shape, x, y)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, fmap[iy, ix])
    if shape == (300, 517):  # steep enough there: the floor is exercised
        assert (fmap == np.float32(0.1)).any()


def test_apply_scale_map_checks():
    from diffstream.jitcore.noisecorr import apply_scale_map

    scale = ScoreScale(1.0, np.ones((1, 1)), 64, 1.0, 1)
    a = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="score must be a writeable C-contiguous"):
        apply_scale_map(scale, a[:, ::2], a)
    with pytest.raises(ValueError, match="variance shape"):
        apply_scale_map(scale, a, np.zeros((8, 7), np.float32))
    with pytest.raises(ValueError, match="exceeds the tiles"):
        apply_scale_map(scale, np.zeros((65, 8), np.float32), np.zeros((65, 8), np.float32))


def test_scale_map_checks():
    with pytest.raises(ValueError, match="exceeds the tiles"):
        scale_map(ScoreScale(1.0, np.ones((1, 1)), 64, 1.0, 1), (65, 64))
