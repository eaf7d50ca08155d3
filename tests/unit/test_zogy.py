"""ZOGY subtraction (jitcore.zogy): statistics on seeded simulated pairs, tiling, validation.

Images are simulated on the pixel grid ZOGY sees: background-subtracted, in nJy, stars at
integer pixels drawn with the same PSF model ZOGY is given (unless a test says otherwise),
Gaussian noise of variance sigma^2 + flux (source noise), variance planes = the truth.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import fft as sfft

from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.jitcore.robust import median_noise
from diffstream.jitcore.tiles import dilate, footprint_radius, split_axis, tile_cores
from diffstream.jitcore.zogy import ZogyResult, zogy

pytestmark = pytest.mark.unit

SIG_N, SIG_R = 10.0, 6.0  # nJy per pixel: science, template
SEEING = {"template_sharper": (2.2, 1.6), "science_sharper": (1.6, 2.2)}  # sigma_n, sigma_r px


def const_psf(sigma, shape, **kw):
    return PsfModel.constant(gaussian_psf(sigma, **kw), shape)


def varying_psf(sigma, shape, *, gradient=0.10, axis="x"):
    """Width sigma * (1 + gradient/2 * u) across the image (u in [-1, 1] along ``axis``)."""
    size = 2 * int(np.ceil(4.5 * sigma * 1.1)) + 1
    g0 = gaussian_psf(sigma, size)
    d = 0.5 * (
        gaussian_psf(sigma * (1 + gradient / 2), size)
        - gaussian_psf(sigma * (1 - gradient / 2), size)
    )
    zero = np.zeros_like(g0)
    basis = [g0, d, zero] if axis == "x" else [g0, zero, d]
    return PsfModel(basis=np.array(basis), degree=1, shape=shape)


def place(img, stamp, x, y, flux):
    """Add flux * stamp centred on integer pixel (x, y), clipped to the image."""
    h = stamp.shape[0] // 2
    ny, nx = img.shape
    y0, y1, x0, x1 = y - h, y + h + 1, x - h, x + h + 1
    sy0, sx0 = max(0, -y0), max(0, -x0)
    sy1 = stamp.shape[0] - max(0, y1 - ny)
    sx1 = stamp.shape[1] - max(0, x1 - nx)
    img[max(y0, 0) : min(y1, ny), max(x0, 0) : min(x1, nx)] += flux * stamp[sy0:sy1, sx0:sx1]


def simulate(rng, shape, psf_n, psf_r, stars=(), *, sig_n=SIG_N, sig_r=SIG_R, var_n=None):
    """(N, V_n, R, V_r); ``stars`` rows are (x, y, flux in science, flux in template)."""
    mn = np.zeros(shape)
    mr = np.zeros(shape)
    for x, y, fn, fr in stars:
        if fn:
            place(mn, psf_n.at(x, y), int(x), int(y), fn)
        if fr:
            place(mr, psf_r.at(x, y), int(x), int(y), fr)
    vn = (sig_n**2 if var_n is None else var_n) + np.abs(mn)
    vr = sig_r**2 + np.abs(mr)
    n = mn + rng.normal(size=shape) * np.sqrt(vn)
    r = mr + rng.normal(size=shape) * np.sqrt(vr)
    return n, vn, r, vr


def run(n, vn, r, vr, psf_n, psf_r, bad=None, **kw) -> ZogyResult:
    if bad is None:
        bad = np.zeros(n.shape, bool)
    return zogy(n, vn, r, vr, bad, psf_n, psf_r, **kw)


def score_sum_of_correlation(psf_n, psf_r, sig_n, sig_r, shape=(128, 128)):
    """sum over lags of corr(S) = 1 / ((sig_n^2 + sig_r^2) F_S) (F_n = F_r = 1), in NumPy."""
    frames = []
    for stamp in (psf_n.at(0, 0), psf_r.at(0, 0)):
        f = np.zeros(shape)
        h = stamp.shape[0] // 2
        f[np.ix_(np.arange(-h, h + 1) % shape[0], np.arange(-h, h + 1) % shape[1])] = stamp
        frames.append(np.fft.fft2(f))
    pn, pr = frames
    b = sig_n**2 * np.abs(pr) ** 2 + sig_r**2 * np.abs(pn) ** 2
    f_s = np.mean(np.abs(pn) ** 2 * np.abs(pr) ** 2 / b)
    return 1.0 / ((sig_n**2 + sig_r**2) * f_s)


# ---------------------------------------------------------------------------------------
# Pure noise
# ---------------------------------------------------------------------------------------


@pytest.mark.science
@pytest.mark.parametrize("case", list(SEEING))
def test_noise_score_and_difference_are_unit_normal(case):
    rng = np.random.default_rng(11)
    shape = (320, 288)
    sn, sr = SEEING[case]
    psf_n, psf_r = const_psf(sn, shape), const_psf(sr, shape)
    # Science sky variance doubles across the image: V_S must follow it pixel by pixel.
    var_n = SIG_N**2 * (1.0 + np.linspace(0, 1, shape[1]))[None, :] * np.ones(shape)
    n, vn, r, vr = simulate(rng, shape, psf_n, psf_r, var_n=var_n)
    z = run(n, vn, r, vr, psf_n, psf_r, tile_size=128, mask_edges="none")  # edges included
    assert len(z.tiles) == 9 and z.valid.all()
    npix = z.score.size
    n_eff = npix / score_sum_of_correlation(psf_n, psf_r, SIG_N * 1.22, SIG_R)
    assert abs(z.score.mean()) < 5 / np.sqrt(n_eff)
    assert abs(z.score.std() - 1) < 0.05
    # D is white: neighbouring pixels are independent, so N_eff ~ npix.
    pull_d = z.difference / np.sqrt(z.difference_variance)
    assert abs(pull_d.mean()) < 5 / np.sqrt(npix)
    assert abs(pull_d.std() - 1) < 0.05
    for t in z.tiles:
        assert t.psf_d.shape[0] % 2 == 1 and t.psf_d.shape[0] == t.psf_d.shape[1]
        assert t.psf_d.sum() == pytest.approx(1.0, abs=1e-12)
        assert t.sigma_r == pytest.approx(SIG_R, rel=1e-6)
        assert SIG_N < t.sigma_n < SIG_N * np.sqrt(2)
    for name in ("difference", "difference_variance", "score", "flux", "flux_variance"):
        assert getattr(z, name).dtype == np.float32
    assert np.all(z.flux_variance > 0) and np.all(z.difference_variance > 0)


@pytest.mark.science
def test_noise_score_is_unit_normal_at_edges():
    """Zero data + zero variance beyond the edge keep S_corr ~ N(0, 1) on the edge pixels.

    Rejected alternatives fail this: reflect padding counts the mirrored noise twice in S but
    once in V_S (std > 1); filling the variance with the tile median overstates V_S (the two
    outermost rows then have std ~0.86).
    """
    shape = (128, 128)
    psf_n, psf_r = const_psf(2.2, shape), const_psf(1.6, shape)
    edge = np.zeros(shape, bool)
    edge[:2] = edge[-2:] = True
    edge[:, :2] = edge[:, -2:] = True
    vals = []
    for seed in range(8):
        n, vn, r, vr = simulate(np.random.default_rng(100 + seed), shape, psf_n, psf_r)
        vals.append(run(n, vn, r, vr, psf_n, psf_r, mask_edges="none").score[edge])
    vals = np.concatenate(vals)
    assert abs(vals.std() - 1) < 0.07
    assert abs(vals.mean()) < 0.1


# ---------------------------------------------------------------------------------------
# Point sources
# ---------------------------------------------------------------------------------------


def _grid(shape, step, margin):
    ys = np.arange(margin, shape[0] - margin + 1, step)
    xs = np.arange(margin, shape[1] - margin + 1, step)
    return [(int(x), int(y)) for y in ys for x in xs]


@pytest.mark.science
@pytest.mark.parametrize("case", list(SEEING))
def test_injected_source_flux_pulls_and_peak_score(case):
    shape = (256, 256)
    sn, sr = SEEING[case]
    psf_n, psf_r = const_psf(sn, shape), const_psf(sr, shape)
    f = 1500.0  # nJy, S/N ~ 15-20
    pos = _grid(shape, 32, 32)
    pulls, peak_dev, peak_off = [], [], []
    for seed in range(8):
        rng = np.random.default_rng(200 + seed)
        n, vn, r, vr = simulate(rng, shape, psf_n, psf_r, [(x, y, f, 0.0) for x, y in pos])
        z = run(n, vn, r, vr, psf_n, psf_r, tile_size=128)
        for x, y in pos:
            err = np.sqrt(z.flux_variance[y, x])
            pulls.append((z.flux[y, x] - f) / err)
            win = z.score[y - 3 : y + 4, x - 3 : x + 4]
            iy, ix = np.unravel_index(np.argmax(win), win.shape)
            peak_off.append((iy - 3, ix - 3))
            peak_dev.append(z.score[y, x] - f / err)
    pulls = np.array(pulls)
    assert len(pulls) >= 390
    assert abs(pulls.mean()) < 4 / np.sqrt(len(pulls))
    assert 0.9 <= pulls.std() <= 1.1
    # The score peaks on the source pixel at f / err.  At S/N ~ 17 noise moves the maximum
    # to a neighbour a few % of the time; a shift of the kernels would bias the direction.
    peak_off = np.array(peak_off)
    assert np.mean(np.all(peak_off == 0, axis=1)) > 0.85
    assert np.abs(peak_off).max() <= 1
    assert np.all(np.abs(peak_off.mean(axis=0)) < 0.05)
    assert abs(np.mean(peak_dev)) < 4 / np.sqrt(len(peak_dev))
    assert np.std(peak_dev) == pytest.approx(1.0, abs=0.1)


def test_science_source_is_positive_template_source_negative():
    shape = (128, 128)
    psf_n, psf_r = const_psf(2.0, shape), const_psf(1.5, shape)
    stars = [(40, 64, 3000.0, 0.0), (90, 64, 0.0, 3000.0)]
    n, vn, r, vr = simulate(np.random.default_rng(3), shape, psf_n, psf_r, stars)
    z = run(n, vn, r, vr, psf_n, psf_r)
    assert z.score[64, 40] > 10 and z.score[64, 90] < -10
    err = float(np.sqrt(z.flux_variance[64, 90]))
    assert z.flux[64, 90] == pytest.approx(-3000.0, abs=5 * err)


def test_difference_shows_source_as_flux_times_psf_d():
    shape = (96, 96)
    psf_n, psf_r = const_psf(2.0, shape), const_psf(1.4, shape)
    f = 2.0e5  # bright: the test is about the shape, not the noise
    n, vn, r, vr = simulate(np.random.default_rng(4), shape, psf_n, psf_r, [(48, 48, f, 0.0)])
    z = run(n, vn, r, vr, psf_n, psf_r)
    p = z.tile_at(48, 48).psf_d
    h = p.shape[0] // 2
    cut = z.difference[48 - h : 49 + h, 48 - h : 49 + h].astype(float)
    w = 1.0 / z.difference_variance[48 - h : 49 + h, 48 - h : 49 + h]
    fit = np.sum(w * cut * p) / np.sum(w * p * p)
    assert fit == pytest.approx(f, rel=0.01)
    # What is left after removing f * psf_d is noise of the stated variance.
    chi = (cut - fit * p) * np.sqrt(w)
    assert np.abs(chi).max() < 5
    assert 0.6 < np.mean(chi**2) < 1.4


def test_flux_scalings_f_n_f_r_are_applied():
    """A template in other units (x 2.5, F_r = 2.5) gives the same score and nJy fluxes."""
    shape = (128, 128)
    psf_n, psf_r = const_psf(2.0, shape), const_psf(1.5, shape)
    stars = [(64, 64, 4000.0, 1000.0)]
    n, vn, r, vr = simulate(np.random.default_rng(5), shape, psf_n, psf_r, stars)
    ref = run(n, vn, r, vr, psf_n, psf_r)
    z = run(n, vn, 2.5 * r, 6.25 * vr, psf_n, psf_r, f_r=2.5)
    np.testing.assert_allclose(z.score, ref.score, atol=1e-4)
    np.testing.assert_allclose(z.flux, ref.flux, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(z.difference, ref.difference, rtol=1e-4, atol=1e-2)
    assert z.tiles[0].f_d == pytest.approx(ref.tiles[0].f_d, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Static stars, masks, tiles
# ---------------------------------------------------------------------------------------


@pytest.mark.science
@pytest.mark.parametrize("case", list(SEEING))
def test_identical_stars_cancel(case):
    shape = (192, 192)
    sn, sr = SEEING[case]
    psf_n, psf_r = const_psf(sn, shape), const_psf(sr, shape)
    stars = [
        (x, y, f, f)
        for (x, y), f in zip(_grid(shape, 48, 48), np.geomspace(1e3, 1e6, 9), strict=True)
    ]
    n, vn, r, vr = simulate(np.random.default_rng(6), shape, psf_n, psf_r, stars)
    z = run(n, vn, r, vr, psf_n, psf_r, tile_size=96)
    assert np.abs(z.score).max() < 5
    # Control: the same pair with a template PSF 5% too broad leaves the bright stars.
    wrong = run(n, vn, r, vr, psf_n, const_psf(sr * 1.05, shape), tile_size=96)
    assert np.abs(wrong.score).max() > 10


@pytest.mark.parametrize("case", list(SEEING))
def test_single_precision_matches_double(case):
    """Frame FFTs in float32: with stars up to 1e7 nJy (1e6 x the sky sigma, brighter than
    any unsaturated star on a CCD), a mask and tile seams, score and difference agree with
    double precision to a small fraction of their noise, and the same pixels are valid.
    (The round-off grows with the brightest star: ~1e-3 sigma at 1e5 x the sky sigma.)"""
    shape = (192, 192)
    sn, sr = SEEING[case]
    psf_n, psf_r = const_psf(sn, shape), const_psf(sr, shape)
    fluxes = np.geomspace(1e3, 1e7, 9)
    stars = [(x, y, f, f * (1.0 + 0.2 * (k % 2))) for k, ((x, y), f) in
             enumerate(zip(_grid(shape, 48, 48), fluxes, strict=True))]  # fmt: skip
    n, vn, r, vr = simulate(np.random.default_rng(16), shape, psf_n, psf_r, stars)
    bad = np.zeros(shape, bool)
    bad[20:30, 150:170] = True
    kw = dict(tile_size=96, sigma_astrometric=(0.05, 0.05), psf_error_fraction=0.01)
    dbl = run(n, vn, r, vr, psf_n, psf_r, bad, precision="double", **kw)
    sgl = run(n, vn, r, vr, psf_n, psf_r, bad, precision="single", **kw)
    assert np.array_equal(dbl.valid, sgl.valid)
    v = dbl.valid
    err = np.abs(sgl.score[v] - dbl.score[v])
    assert err.max() < 0.02 and np.median(err) < 1e-4
    noise_d = np.sqrt(dbl.difference_variance[v])
    assert np.abs((sgl.difference[v] - dbl.difference[v]) / noise_d).max() < 5e-3
    assert np.allclose(sgl.flux_variance[v], dbl.flux_variance[v], rtol=1e-3)
    # The variable stars (20% brighter in the template) stand out alike (the 1% PSF-error
    # term caps a bright variable's score near 0.2 / (0.01 sqrt 2) ~ 14).
    assert np.abs(sgl.score[v]).max() > 10
    assert np.abs(sgl.score[v]).max() == pytest.approx(np.abs(dbl.score[v]).max(), rel=1e-3)


@pytest.mark.science
def test_bad_column_and_masked_blob_do_not_ring():
    shape = (160, 160)
    psf_n, psf_r = const_psf(2.2, shape), const_psf(1.6, shape)
    stars = [(60, 100, 5e4, 5e4), (110, 40, 5e4, 5e4)]
    n, vn, r, vr = simulate(np.random.default_rng(7), shape, psf_n, psf_r, stars)
    bad = np.zeros(shape, bool)
    n[:, 80] = 1e7  # hot column in the science
    bad[:, 80] = True
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = (yy - 100) ** 2 + (xx - 40) ** 2 < 8**2
    r[blob] = np.nan  # no template there
    vr[blob] = np.nan
    bad |= blob
    vn[40, 120] = -1.0  # negative variance: unusable, not an error
    z = run(n, vn, r, vr, psf_n, psf_r, bad=bad, tile_size=64)
    for name in ("difference", "score", "flux"):
        assert np.all(np.isfinite(getattr(z, name)))
    assert not z.valid[:, 80].any() and not z.valid[blob].any() and not z.valid[40, 120]
    assert np.all(z.score[~z.valid] == 0) and np.all(z.flux[~z.valid] == 0)
    assert np.all(np.isnan(z.flux_variance[~z.valid]))
    assert np.abs(z.score).max() < 5
    # The dilation is the kernel footprint: a few PSF widths, not the whole tile.
    radius = z.tiles[0].mask_radius
    assert 3 <= radius <= 15
    rows = slice(radius, shape[0] - radius)  # (the edge strips are invalid too)
    assert z.valid[rows, 80 + radius + 1].all() and not z.valid[:, 80 + radius].any()
    # Next to the mask the score is still unit normal (its variance lost the masked pixels too).
    ring = z.valid & dilate(bad, radius + 8)
    assert abs(z.score[ring].std() - 1) < 0.15


def test_tile_without_template_is_invalid_not_an_error():
    """A template that misses a whole tile: that tile is all invalid, the others unaffected."""
    shape = (96, 144)
    psf_n, psf_r = const_psf(2.0, shape), const_psf(1.5, shape)
    n, vn, r, vr = simulate(np.random.default_rng(18), shape, psf_n, psf_r)
    r[:, :72] = np.nan  # no template anywhere in the first tiles' frames (core 48 + border)
    vr[:, :72] = np.nan
    bad = ~np.isfinite(r)
    z = run(n, vn, r, vr, psf_n, psf_r, bad=bad, tile_size=48)
    first = z.tile_at(0, 0)
    assert first.core[3] == 48 and first.outer[3] <= 72
    # No good pixel in the frame: the tile falls back to the whole-image noise.
    assert first.sigma_r == pytest.approx(SIG_R, rel=0.05)
    assert not z.valid[:, :72].any() and z.valid[20:-20, 72 + 20 : -20].all()
    assert np.all(z.score[:, :72] == 0) and np.all(np.isfinite(z.score))
    assert np.abs(z.score).max() < 5


@pytest.mark.science
def test_tiles_are_seamless_for_a_constant_psf():
    shape = (288, 256)
    psf_n, psf_r = const_psf(2.2, shape), const_psf(1.6, shape)
    rng = np.random.default_rng(8)
    stars = [(x, y, 2e4, 1e4) for x, y in _grid(shape, 37, 20)]
    n, _, r, _ = simulate(rng, shape, psf_n, psf_r, stars)
    vn = np.full(shape, SIG_N**2)  # constant planes => identical sigma_n, sigma_r per tile
    vr = np.full(shape, SIG_R**2)
    kw = {"sigma_astrometric": (0.05, 0.03), "mask_edges": "none"}
    one = run(n, vn, r, vr, psf_n, psf_r, tile_size=512, **kw)
    many = run(n, vn, r, vr, psf_n, psf_r, tile_size=64, **kw)
    assert len(one.tiles) == 1 and len(many.tiles) == 20
    np.testing.assert_allclose(many.score, one.score, atol=1e-4)
    np.testing.assert_allclose(many.flux, one.flux, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(many.flux_variance, one.flux_variance, rtol=1e-5)
    np.testing.assert_allclose(many.difference_variance, one.difference_variance, rtol=1e-3)
    # D's kernels have low-level tails (module docstring): D agrees to a small part of its
    # noise, the worst at a seam next to a variable star.
    dd = np.abs(many.difference - one.difference) / np.sqrt(one.difference_variance)
    assert np.max(dd) < 0.1 and np.percentile(dd, 99) < 0.02


@pytest.mark.science
def test_spatially_varying_psf_is_followed_by_the_tiles():
    shape = (256, 256)
    psf_n = varying_psf(2.0, shape, axis="x")  # 10% width gradient along x
    psf_r = varying_psf(1.5, shape, axis="y")  # and along y in the template
    stars = [(x, y, 5e4, 5e4) for x, y in _grid(shape, 24, 8)]
    n, vn, r, vr = simulate(np.random.default_rng(9), shape, psf_n, psf_r, stars)
    z = run(n, vn, r, vr, psf_n, psf_r, tile_size=32)
    assert np.abs(z.score).max() < 5
    # Control: one tile uses the centre PSF everywhere and leaves residuals away from it.
    single = run(n, vn, r, vr, psf_n, psf_r, tile_size=512)
    assert np.abs(single.score).max() > 8


@pytest.mark.parametrize("precision", ["double", "single"])
def test_psf_basis_matches_direct(monkeypatch, precision):
    """The tiles' PSF spectra as combinations of a few basis spectra (a degree-1 model has
    three) give what each tile's own stamp transform gives, to rounding."""
    import diffstream.jitcore.zogy as zogy_mod

    shape = (192, 160)
    psf_n = varying_psf(2.0, shape, axis="x", gradient=0.2)
    psf_r = varying_psf(1.5, shape, axis="y", gradient=0.2)
    stars = [(x, y, 5e4, 4e4) for x, y in _grid(shape, 24, 8)]
    n, vn, r, vr = simulate(np.random.default_rng(21), shape, psf_n, psf_r, stars)
    bad = np.zeros(shape, bool)
    bad[100:104, 30:90] = True
    calls = []
    real_spectrum = zogy_mod.stamp_spectrum

    def counting(stamp, frame_shape, **kw):
        calls.append(frame_shape)
        return real_spectrum(stamp, frame_shape, **kw)

    monkeypatch.setattr(zogy_mod, "stamp_spectrum", counting)
    kw = dict(tile_size=48, sigma_astrometric=(0.05, 0.05), psf_error_fraction=0.01,
              precision=precision)  # fmt: skip
    basis = run(n, vn, r, vr, psf_n, psf_r, bad, **kw)
    ntiles = len(basis.tiles)
    # The premise: each PSF transformed once per basis stamp (two of them: the models have a
    # zero basis stamp), on the frame and on the small grid, not per tile.
    assert ntiles == 16 and len(calls) == 2 * 2 * 2
    calls.clear()
    monkeypatch.setattr(zogy_mod, "MAX_PSF_RANK", 0)
    direct = run(n, vn, r, vr, psf_n, psf_r, bad, **kw)
    assert len(calls) == 2 * 2 * ntiles
    assert np.array_equal(basis.valid, direct.valid)
    v = basis.valid
    # The products are float32: in double precision they agree to its rounding.
    tol = 1e-6 if precision == "double" else 2e-5
    assert np.abs(basis.score[v] - direct.score[v]).max() < tol * np.abs(direct.score).max()
    noise = np.sqrt(direct.difference_variance[v])
    assert np.abs((basis.difference[v] - direct.difference[v]) / noise).max() < tol
    np.testing.assert_allclose(basis.flux_variance[v], direct.flux_variance[v], rtol=tol)
    for a, b in zip(basis.tiles, direct.tiles, strict=True):
        assert a.f_s == pytest.approx(b.f_s, rel=1e-12)
        np.testing.assert_allclose(a.psf_d, b.psf_d, rtol=0, atol=1e-14)


def test_astrometric_noise_absorbs_a_small_registration_error():
    shape = (96, 96)
    psf_n = const_psf(2.0, shape)
    psf_r = const_psf(1.5, shape)
    shifted_r = const_psf(1.5, shape, dx=0.05, dy=-0.05)  # template star drawn 0.05 px off
    f = 3e5
    rng = np.random.default_rng(10)
    n, vn, _, _ = simulate(rng, shape, psf_n, psf_r, [(48, 48, f, 0.0)])
    _, _, r, vr = simulate(rng, shape, psf_n, shifted_r, [(48, 48, 0.0, f)])
    plain = run(n, vn, r, vr, psf_n, psf_r)
    assert np.abs(plain.score).max() > 8
    z = run(n, vn, r, vr, psf_n, psf_r, sigma_astrometric=(0.05, 0.05))
    assert np.abs(z.score).max() < 5
    # On empty sky only the noise in dS/dx adds to the variance: by much less than 1%.
    far = (slice(14, 30), slice(14, 30))
    ratio = z.flux_variance[far] / plain.flux_variance[far]
    assert np.all(ratio >= 1) and np.all(ratio < 1.01)


def test_psf_error_fraction_absorbs_a_psf_model_error():
    shape = (96, 96)
    psf_n, psf_r = const_psf(2.0, shape), const_psf(1.5, shape)
    f = 1e6
    n, vn, r, vr = simulate(np.random.default_rng(12), shape, psf_n, psf_r, [(48, 48, f, f)])
    wrong_r = const_psf(1.5 * 1.04, shape)  # template PSF model 4% too broad
    assert np.abs(run(n, vn, r, vr, psf_n, wrong_r).score).max() > 8
    z = run(n, vn, r, vr, psf_n, wrong_r, psf_error_fraction=0.05)
    assert np.abs(z.score).max() < 5
    far = (slice(14, 30), slice(14, 30))
    plain = run(n, vn, r, vr, psf_n, wrong_r)
    ratio = z.flux_variance[far] / plain.flux_variance[far]
    # Expected 1 + e^2 (E[S_n^2 + S_r^2] = V_S on empty sky).
    assert np.all(ratio >= 1) and ratio.mean() < 1.01


# ---------------------------------------------------------------------------------------
# Geometry, threads, tile_at
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "tile"), [(1, 16), (97, 16), (100, 50), (513, 512), (4096, 512)])
def test_split_axis_partitions(n, tile):
    parts = split_axis(n, tile)
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    assert all(0 < b - a <= tile for a, b in parts)
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_cores_cover_odd_image_once_and_small_image_is_one_tile():
    shape = (97, 131)
    count = np.zeros(shape, int)
    for y0, y1, x0, x1 in tile_cores(shape, 40):
        count[y0:y1, x0:x1] += 1
    assert np.all(count == 1)
    psf = const_psf(1.5, shape)
    n, vn, r, vr = simulate(np.random.default_rng(13), shape, psf, psf)
    z = run(n, vn, r, vr, psf, psf)
    assert len(z.tiles) == 1 and z.tiles[0].core == (0, 97, 0, 131)
    oy0, oy1, ox0, ox1 = z.tiles[0].outer
    b = z.tiles[0].core[0] - oy0
    assert b >= 15 and oy1 - oy0 >= 97 + 2 * b and ox1 - ox0 >= 131 + 2 * b
    assert sfft.next_fast_len(oy1 - oy0, real=True) == oy1 - oy0


# 48: tiles on threads; 512: one tile, whose FFTs once took the threads and then differed in
# the last bits between thread counts (so did a stream worker's alerts from the offline run's).
@pytest.mark.parametrize("precision", ["double", "single"])
@pytest.mark.parametrize("tile_size", [96, 512])
def test_threads_give_identical_results(tile_size, precision):
    shape = (260, 250)
    psf_n, psf_r = const_psf(2.0, shape), const_psf(1.5, shape)
    n, vn, r, vr = simulate(np.random.default_rng(14), shape, psf_n, psf_r, [(70, 60, 5e3, 0)])
    kw = {"tile_size": tile_size, "precision": precision}
    a = run(n, vn, r, vr, psf_n, psf_r, **kw)
    b = run(n, vn, r, vr, psf_n, psf_r, workers=2, **kw)
    c = run(n, vn, r, vr, psf_n, psf_r, workers=-1, **kw)
    for name in ("difference", "difference_variance", "score", "flux", "flux_variance", "valid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(getattr(a, name), getattr(c, name))


def test_tile_at_returns_the_owning_tile():
    shape = (100, 130)
    psf = const_psf(1.5, shape)
    n, vn, r, vr = simulate(np.random.default_rng(15), shape, psf, psf)
    z = run(n, vn, r, vr, psf, psf, tile_size=40)
    for x, y in [(0, 0), (129.4, 99.4), (44.6, 33.2), (-0.5, 10)]:
        y0, y1, x0, x1 = z.tile_at(x, y).core
        assert y0 <= np.floor(y + 0.5) < y1 and x0 <= np.floor(x + 0.5) < x1
    with pytest.raises(ValueError, match="outside the image"):
        z.tile_at(130.5, 5)
    with pytest.raises(ValueError, match="outside the image"):
        z.tile_at(5, -0.6)


def test_tile_psf_follows_the_model():
    shape = (200, 200)
    psf_n = varying_psf(2.0, shape, axis="x")
    psf_r = const_psf(1.5, shape)
    n, vn, r, vr = simulate(np.random.default_rng(16), shape, psf_n, psf_r)
    z = run(n, vn, r, vr, psf_n, psf_r, tile_size=50)
    widths = [
        np.sum(t.psf_d * (np.arange(t.psf_d.shape[0]) - t.psf_d.shape[0] // 2) ** 2)
        for t in z.tiles[:4]
    ]
    assert np.all(np.diff(widths) > 0)  # psf_d broadens with the science PSF along x


def _edge_stars(seed, stars, shape=(120, 100)):
    psf_n, psf_r = const_psf(2.2, shape), const_psf(1.6, shape)
    n, vn, r, vr = simulate(np.random.default_rng(seed), shape, psf_n, psf_r, stars)
    return (n, vn, r, vr, psf_n, psf_r)


# Static stars centred on the left and top edges: cut in half, they do not cancel.
CUT_STARS = [(0, 60, 3e5, 3e5), (50, 119, 3e5, 3e5)]


def test_mask_edges_all_invalidates_a_strip_of_the_kernel_radius():
    """mask_edges="all": the whole strip of the mask radius along every edge is invalid."""
    args = _edge_stars(19, CUT_STARS)
    raw = run(*args, tile_size=64, mask_edges="none")
    assert np.abs(raw.score).max() > 10  # the reason edges need a rule at all
    z = run(*args, tile_size=64, mask_edges="all")
    rad = {t.mask_radius for t in z.tiles}
    assert len(rad) == 1
    rad = rad.pop()
    inner = np.zeros(raw.score.shape, bool)
    inner[rad:-rad, rad:-rad] = True
    np.testing.assert_array_equal(z.valid, inner)
    np.testing.assert_array_equal(z.score[inner], raw.score[inner])
    assert np.abs(z.score).max() < 5


def test_mask_edges_light_invalidates_only_the_reach_of_cut_static_light():
    """The default: only near static light the edge cuts; the rest of the edge stays valid.

    It must fail if the rule invalidates nothing (the cut stars' residuals, |S| > 10, stay)
    or everything (the empty edges must be valid up to the last pixel)."""
    args = _edge_stars(19, CUT_STARS)
    raw = run(*args, tile_size=64, mask_edges="none")
    z = run(*args, tile_size=64)
    rad = max(t.mask_radius for t in z.tiles)
    assert rad >= 5
    assert np.abs(z.score[z.valid]).max() < 5  # the residuals are all out
    np.testing.assert_array_equal(z.score[z.valid], raw.score[z.valid])
    ny, nx = z.valid.shape
    assert not z.valid[60, 0] and not z.valid[119, 50]  # on the cut stars
    # Empty edges stay valid to the last pixel: the bottom and right edges, and the left and
    # top edges far (along the edge) from the cut stars.
    assert z.valid[0, :].all() and z.valid[:, nx - 1].all()
    assert z.valid[: 60 - 2 * rad - 6, 0].all() and z.valid[119, 50 + 2 * rad + 6 :].all()
    # The invalid area stays near the stars: within the mask radius of the edge.
    far = np.ones(z.valid.shape, bool)
    far[:, :rad] = far[ny - rad :, :] = False
    assert z.valid[far].all()


def test_mask_edges_light_keeps_a_transient_the_edge_cuts():
    """Light in one image only (a transient, a satellite trail) is a real difference: the
    edge truncates it but it cancels against nothing, so its pixels stay valid and found."""
    args = _edge_stars(23, [(1, 60, 2e4, 0.0)])  # a new source 1 px inside the left edge
    z = run(*args, tile_size=64)
    assert z.valid[60, :].all()
    assert z.score[55:66, :6].max() > 20
    # The same light in both images, static and cut: invalid there.
    z2 = run(*_edge_stars(23, [(1, 60, 2e4, 2e4)]), tile_size=64)
    assert not z2.valid[60, 0]
    assert np.abs(z2.score[z2.valid]).max() < 5


def test_helpers_footprint_dilate_sigma():
    k = np.zeros((64, 64))
    k[0, 0] = 1.0
    k[3, -2] = 0.5  # offset (3, -2): Chebyshev radius 3
    assert footprint_radius([k], 20) == 3
    bad = np.zeros((20, 20), bool)
    bad[10, 10] = True
    grown = dilate(bad, 2)
    assert grown.sum() == 25 and grown[8:13, 8:13].all()
    var = np.full((50, 50), 4.0)
    good = np.ones((50, 50), bool)
    var[:10] = 1e6  # a bright star's variance: the median ignores it
    assert median_noise(var, good) == 2.0
    assert np.isnan(median_noise(var, np.zeros_like(good)))


# ---------------------------------------------------------------------------------------
# Validation: one pytest.raises per branch
# ---------------------------------------------------------------------------------------


@pytest.fixture
def pair():
    shape = (40, 40)
    psf = const_psf(1.5, shape)
    n, vn, r, vr = simulate(np.random.default_rng(17), shape, psf, psf)
    return {"science": n, "science_variance": vn, "template": r, "template_variance": vr,
            "bad": np.zeros(shape, bool), "psf_science": psf, "psf_template": psf}  # fmt: skip


def call(pair, **changes):
    args = dict(pair)
    kw = {k: changes.pop(k) for k in list(changes) if k not in args}
    args.update(changes)
    return zogy(*args.values(), **kw)


class _NoAt:
    pass


class _BadStamp:
    def at(self, x, y):
        return np.ones((4, 4))


@pytest.mark.parametrize(
    ("changes", "exc", "match"),
    [
        ({"science": np.zeros((2, 40, 40))}, ValueError, "science must be a 2-D array, got ndim=3"),
        ({"template": np.zeros((40, 41))}, ValueError, r"template shape \(40, 41\) != science"),
        ({"template_variance": np.zeros((39, 40))}, ValueError, "template_variance shape"),
        ({"science_variance": np.zeros((40, 39))}, ValueError, "science_variance shape"),
        (
            {"bad": np.zeros((40, 40), np.int32)},
            TypeError,
            "bad must be a bool array, got dtype int32",
        ),
        ({"bad": np.zeros((41, 40), bool)}, ValueError, r"bad shape \(41, 40\)"),
        ({"science": np.zeros((40, 40), complex)}, TypeError, "science must be a real numeric"),
        (
            {
                "science": np.zeros((0, 40)),
                "science_variance": np.zeros((0, 40)),
                "template": np.zeros((0, 40)),
                "template_variance": np.zeros((0, 40)),
                "bad": np.zeros((0, 40), bool),
            },
            ValueError,
            "must not be empty",
        ),  # fmt: skip
        ({"bad": np.ones((40, 40), bool)}, ValueError, "no usable pixels"),
        ({"science_variance": np.zeros((40, 40))}, ValueError, "sigma_n > 0 and sigma_r > 0"),
        ({"psf_science": _NoAt()}, TypeError, r"psf_science must have an .at\(x, y\) method"),
        ({"psf_template": _BadStamp()}, ValueError, r"psf_template.at\(19.5, 19.5\): PSF stamp"),
        ({"f_n": 0.0}, ValueError, "f_n must be finite and > 0, got 0.0"),
        ({"f_r": float("nan")}, ValueError, "f_r must be finite and > 0, got nan"),
        ({"sigma_astrometric": (0.1,)}, ValueError, "sigma_astrometric must be two numbers"),
        (
            {"sigma_astrometric": (0.1, -0.1)},
            ValueError,
            "sigma_astrometric must be finite and >= 0",
        ),
        ({"psf_error_fraction": -0.1}, ValueError, r"psf_error_fraction must be in \[0, 1\)"),
        ({"tile_size": 8}, ValueError, "tile_size must be >= 16, got 8"),
        ({"tile_size": 64.0}, TypeError, "tile_size must be an int, got float"),
        ({"border": 2}, ValueError, r"border must be >= max\(1, PSF stamp half-size 7\), got 2"),
        ({"border": 20.5}, TypeError, "border must be an int or None, got float"),
        ({"workers": 0}, ValueError, "workers must be >= 1"),
        ({"workers": 1.5}, TypeError, "workers must be an int or None, got float"),
        ({"precision": "half"}, ValueError, r"precision must be one of \['double', 'single'\]"),
    ],
)
def test_input_validation(pair, changes, exc, match):
    with pytest.raises(exc, match=match):
        call(pair, **changes)
