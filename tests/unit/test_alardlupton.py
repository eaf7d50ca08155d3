"""Alard-Lupton PSF matching (jitcore.alardlupton, jitcore.albasis, jitcore.alstars).

The Numba loops against slow NumPy references (float32/float64, odd shapes, Hypothesis on a
small budget); the basis rules; the kernel recovered for Gaussian PSFs in both seeing orders;
spatial variation; the background; the errors.  Images are simulated on the grid AL sees:
background-subtracted, nJy, stars drawn with pixel-integrated Gaussian PSFs, Gaussian noise
of variance sky + source, variance planes = the truth.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import diffstream.jitcore.alardlupton as alardlupton
from diffstream.jitcore._kernels.alardlupton import (
    expand_spatial,
    poly_accumulate,
    stamp_normal_equations,
)
from diffstream.jitcore.alardlupton import ALInfo, al_subtract, resolve_mode
from diffstream.jitcore.albasis import (
    SpatialKernel,
    al_basis,
    basis_sigmas,
    convolve_psf_model,
    convolve_spatial,
    convolve_spatial_variance,
    kernel_size_for,
    monomials,
)
from diffstream.jitcore.alstars import select_kernel_stars
from diffstream.jitcore.psf import PsfModel, gaussian_psf, psf_moments
from diffstream.jitcore.sources import find_stars

pytestmark = pytest.mark.unit

RTOL = {np.float32: 2e-5, np.float64: 1e-11}
budget = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])


# --- NumPy references ------------------------------------------------------------------


def ref_normal_equations(conv, target, weight):
    c = conv.astype(np.float64).reshape(conv.shape[0], -1)
    t = target.astype(np.float64).ravel()
    w = weight.astype(np.float64).ravel()
    use = w > 0
    c, t, w = c[:, use], t[use], w[use]
    q = (c * w) @ c.T
    b = (c * w) @ t
    sw = c @ np.sqrt(w)
    stats = np.array([np.sum(w * t * t), np.sum(np.sqrt(w) * t), use.sum()])
    return q, b, sw, stats


def ref_expand(qc, bc, idx, coef, n):
    a = np.zeros((qc.shape[0], n))
    for k in range(idx.shape[0]):
        for m in range(idx.shape[1]):
            a[k, idx[k, m]] += coef[k, m]
    return a.T @ qc @ a, a.T @ bc


def ref_convolve_varying(image, kernel_at, *, square=False):
    """Direct sum: out[y, x] = sum_j k_(x,y)(j) image[(y, x) - j], zero outside the image."""
    ny, nx = image.shape
    out = np.zeros((ny, nx))
    for y in range(ny):
        for x in range(nx):
            k = kernel_at(x, y)
            if square:
                k = k * k
            h = k.shape[0] // 2
            for dy in range(-h, h + 1):
                for dx in range(-h, h + 1):
                    yy, xx = y - dy, x - dx
                    if 0 <= yy < ny and 0 <= xx < nx:
                        out[y, x] += k[dy + h, dx + h] * image[yy, xx]
    return out


def random_kernel(rng, shape, order=1, size=7):
    basis = al_basis((0.8, 1.6), (2, 1), size)
    coeffs = rng.normal(size=(basis.shape[0], len(monomials(order)))) * 0.2
    coeffs[0] = 0.0
    coeffs[0, 0] = 1.0
    return SpatialKernel(basis=basis, coeffs=coeffs, order=order, shape=shape)


# --- kernels against references --------------------------------------------------------


@budget
@given(n=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9), seed=seeds, dtype=dtypes)
def test_stamp_normal_equations_match_reference(n, h, w, seed, dtype):
    rng = np.random.default_rng(seed)
    conv = rng.normal(size=(n, h, w)).astype(dtype)
    target = rng.normal(size=(h, w)).astype(dtype)
    weight = rng.uniform(0.1, 2.0, size=(h, w)).astype(dtype)
    weight[rng.uniform(size=(h, w)) < 0.2] = 0.0  # dropped pixels
    q, b, sw, stats = np.empty((n, n)), np.empty(n), np.empty(n), np.empty(3)
    stamp_normal_equations(conv, target, weight, q, b, sw, stats)
    rq, rb, rsw, rstats = ref_normal_equations(conv, target, weight)
    # Signed sums cancel, so their rounding error scales with the sum of the terms'
    # magnitudes, not with the result: the bound is rtol times the same sums of |terms|
    # (a float32 sum(sqrt(w) t) of -0.0053 from terms of order 1 failed a plain rtol).
    aq, ab, asw, astats = ref_normal_equations(np.abs(conv), np.abs(target), weight)
    rtol = RTOL[dtype]
    for got, want, scale in ((q, rq, aq), (b, rb, ab), (sw, rsw, asw), (stats, rstats, astats)):
        assert np.all(np.abs(got - want) <= rtol * scale + 1e-9), (got, want)


def test_stamp_residual_sums_reproduce_direct_residuals():
    """chi2 = tt - 2 p.b + p.Q.p and sum r = st - p.sw are the direct residual sums."""
    rng = np.random.default_rng(3)
    conv = rng.normal(size=(4, 11, 13))
    target = rng.normal(size=(11, 13))
    weight = rng.uniform(0.5, 2.0, size=(11, 13))
    q, b, sw, stats = np.empty((4, 4)), np.empty(4), np.empty(4), np.empty(3)
    stamp_normal_equations(conv, target, weight, q, b, sw, stats)
    p = rng.normal(size=4)
    r = np.sqrt(weight) * (target - np.tensordot(p, conv, axes=1))
    assert stats[0] - 2 * p @ b + p @ q @ p == pytest.approx((r * r).sum(), rel=1e-10)
    assert stats[1] - p @ sw == pytest.approx(r.sum(), rel=1e-10, abs=1e-10)


@budget
@given(n=st.integers(1, 6), m=st.integers(1, 4), ntheta=st.integers(1, 9), seed=seeds)
def test_expand_spatial_matches_dense_product(n, m, ntheta, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    qc = a @ a.T
    bc = rng.normal(size=n)
    idx = rng.integers(0, ntheta, size=(n, m)).astype(np.int64)  # repeats allowed
    coef = rng.normal(size=(n, m))
    coef[rng.uniform(size=(n, m)) < 0.3] = 0.0
    q = np.full((ntheta, ntheta), 0.5)  # accumulates onto what is there
    b = np.full(ntheta, -1.0)
    expand_spatial(qc, bc, idx, coef, q, b)
    rq, rb = ref_expand(qc, bc, idx, coef, ntheta)
    assert_allclose(q, rq + 0.5, rtol=1e-12, atol=1e-12)
    assert_allclose(b, rb - 1.0, rtol=1e-12, atol=1e-12)


@budget
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), px=st.integers(0, 3), py=st.integers(0, 3),
    seed=seeds, dtype=dtypes, out_dtype=dtypes,
)  # fmt: skip
def test_poly_accumulate_matches_reference(h, w, px, py, seed, dtype, out_dtype):
    rng = np.random.default_rng(seed)
    conv = rng.normal(size=(h, w)).astype(dtype)
    out = rng.normal(size=(h, w)).astype(out_dtype)
    y0, x0, ny, nx = 3, 5, h + 7, w + 11
    sy, sx = 2.0 / (ny - 1), 2.0 / (nx - 1)
    ref = out.astype(np.float64).copy()
    v = (y0 + np.arange(h))[:, None] * sy - 1.0
    u = (x0 + np.arange(w))[None, :] * sx - 1.0
    ref += 1.7 * u**px * v**py * conv
    poly_accumulate(conv, px, py, 1.7, y0, x0, sy, sx, out)
    assert_allclose(out, ref, rtol=RTOL[out_dtype] * 10, atol=RTOL[out_dtype] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(23, 31), (18, 9)])
def test_spatially_varying_convolution_matches_direct_sum(dtype, shape):
    rng = np.random.default_rng(7)
    kernel = random_kernel(rng, shape, order=1)
    image = rng.normal(size=shape).astype(dtype)
    got = convolve_spatial(image, kernel)
    ref = ref_convolve_varying(image.astype(np.float64), kernel.at)
    # Single-precision transforms (jitcore.albasis.convolve_many): ~1e-7 of the frame's scale.
    assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_spatially_varying_variance_uses_the_squared_kernel():
    rng = np.random.default_rng(8)
    shape = (17, 21)
    kernel = random_kernel(rng, shape, order=2, size=5)
    var = rng.uniform(1.0, 3.0, size=shape).astype(np.float32)
    got = convolve_spatial_variance(var, kernel)
    ref = ref_convolve_varying(var.astype(np.float64), kernel.at, square=True)
    assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_tiled_convolution_has_no_seams(monkeypatch):
    """convolve_many works tile by tile (albasis.CONVOLVE_TILE): with 16 px cores, many of
    them narrower than the kernel, every kernel and its square still match the direct sum
    exactly (to the single-precision transforms), seams and image edges included."""
    import diffstream.jitcore.albasis as albasis

    monkeypatch.setattr(albasis, "CONVOLVE_TILE", 16)
    rng = np.random.default_rng(17)
    shape = (45, 61)
    kernel = random_kernel(rng, shape, order=2, size=9)
    image = rng.normal(size=shape)
    got = convolve_spatial(image, kernel, workers=2)
    ref = ref_convolve_varying(image, kernel.at)
    assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    var = rng.uniform(1.0, 3.0, size=shape)
    got = convolve_spatial_variance(var, kernel)
    ref = ref_convolve_varying(var, kernel.at, square=True)
    assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_background_polynomial_is_the_monomial_sum():
    shape = (37, 52)
    coeffs = np.random.default_rng(18).normal(size=len(monomials(2)))
    got = alardlupton._background(coeffs, 2, shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    u, v = 2 * xx / (shape[1] - 1) - 1, 2 * yy / (shape[0] - 1) - 1
    ref = sum(c * u**px * v**py for c, (px, py) in zip(coeffs, monomials(2), strict=True))
    assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_preconvolution_uses_the_psf_of_each_pixel():
    shape = (19, 25)
    g0 = gaussian_psf(1.5, 9)
    d = 0.5 * (gaussian_psf(1.65, 9) - gaussian_psf(1.35, 9))
    psf = PsfModel(basis=np.array([g0, d, 0.3 * d]), degree=1, shape=shape)
    image = np.random.default_rng(9).normal(size=shape)
    got = convolve_psf_model(image, psf)
    ref = ref_convolve_varying(image, psf.at)
    assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    # An object with only .at(): the PSF at the image centre everywhere.

    class AtOnly:
        def at(self, x, y):
            return g0

    const = convolve_psf_model(image, AtOnly())
    assert_allclose(const, ref_convolve_varying(image, lambda x, y: g0), atol=2e-6)


# --- basis -----------------------------------------------------------------------------


def test_basis_sigmas_follow_ip_diffim_rules():
    # sigma_K = sqrt(2.0^2 - 1.2^2) = 1.6: (1.6 / 2, 1.6, 3.2)
    assert_allclose(basis_sigmas(1.2, 2.0), (0.8, 1.6, 3.2))
    # A tiny kernel is floored at min_sigma 0.7, then grown by beta.
    assert_allclose(basis_sigmas(1.5, 1.55), (0.7, 1.4, 2.8))
    # Deconvolution: roles swapped, floor 0.4.
    assert_allclose(basis_sigmas(2.0, 1.2), (0.8, 1.6, 3.2))
    assert_allclose(basis_sigmas(1.55, 1.5), (0.4, 0.8, 1.6))
    assert basis_sigmas(1.2, 2.0, n_gauss=1) == pytest.approx((1.6,))


def test_kernel_size_is_six_sigma_odd_and_clamped():
    assert kernel_size_for((0.8, 1.6, 3.2)) == 21  # int(19.2) -> 19 -> 21 (min)
    assert kernel_size_for((1.0, 2.0, 4.0)) == 25  # 24 -> 25
    assert kernel_size_for((2.0, 4.0, 8.0)) == 35  # 48 -> 49 -> 35 (max)


def test_basis_first_has_unit_sum_others_orthonormal_zero_sum():
    b = al_basis((0.8, 1.6, 3.2), (4, 2, 2), 21)
    assert b.shape == (27, 21, 21)
    assert b[0].sum() == pytest.approx(1.0, abs=1e-12)
    assert_allclose(b[1:].sum(axis=(1, 2)), 0.0, atol=1e-12)
    flat = b[1:].reshape(26, -1)
    assert_allclose(flat @ flat.T, np.eye(26), atol=1e-10)
    assert monomials(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: basis_sigmas(0.0, 1.0), "sigma_from must be finite and > 0"),
        (lambda: basis_sigmas(1.0, 2.0, n_gauss=0), "n_gauss must be an int >= 1"),
        (lambda: kernel_size_for(()), "sigmas must not be empty"),
        (lambda: kernel_size_for((1.0,), min_size=20), "need odd 3 <= min_size <= max_size"),
        (lambda: al_basis((1.0,), (1, 2), 11), "need one degree per sigma"),
        (lambda: al_basis((1.0,), (1,), 10), "kernel size must be odd and >= 3"),
        (lambda: al_basis((1.0,), (-1,), 11), "degrees must be >= 0"),
        (
            lambda: convolve_spatial(
                np.zeros((5, 5)), random_kernel(np.random.default_rng(0), (6, 6))
            ),
            "image shape",
        ),
        (
            lambda: convolve_spatial_variance(
                np.zeros((5, 5)), random_kernel(np.random.default_rng(0), (6, 6))
            ),
            "variance shape",
        ),
    ],
)
def test_basis_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- simulated pairs -------------------------------------------------------------------


def star_field(
    seed, shape=(256, 256), *, sigma_s=2.0, sigma_t=1.2, n_stars=70, scale=1.0, sky_s=10.0,
    sky_t=5.0, psf_s=None, background=None,
):  # fmt: skip
    """Science/template pair of the same stars; science fluxes x ``scale``."""
    rng = np.random.default_rng(seed)
    ps = psf_s or PsfModel.constant(gaussian_psf(sigma_s, 25), shape)
    pt = PsfModel.constant(gaussian_psf(sigma_t, 25), shape)
    s = np.zeros(shape)
    t = np.zeros(shape)
    xs = rng.integers(16, shape[1] - 16, n_stars)
    ys = rng.integers(16, shape[0] - 16, n_stars)
    flux = 10 ** rng.uniform(3.0, 5.0, n_stars)
    for x, y, f in zip(xs, ys, flux, strict=True):
        s[y - 12 : y + 13, x - 12 : x + 13] += scale * f * ps.at(x, y)
        t[y - 12 : y + 13, x - 12 : x + 13] += f * pt.at(x, y)
    vs = sky_s**2 + s
    vt = sky_t**2 + 0.25 * t
    s = s + rng.normal(size=shape) * np.sqrt(vs)
    t = t + rng.normal(size=shape) * np.sqrt(vt)
    if background is not None:
        s = s + background
    return s, vs, t, vt, np.zeros(shape, bool), ps, pt


def kernel_sigma(k):
    ixx, iyy, _ = psf_moments(k)
    return np.sqrt(0.5 * (ixx + iyy))


@pytest.mark.parametrize(
    ("sigma_s", "sigma_t", "scale", "direction"),
    [(2.0, 1.2, 1.7, "convolveTemplate"), (1.2, 2.0, 0.6, "convolveScience")],
)
def test_recovers_gaussian_matching_kernel_width_and_flux_scale(sigma_s, sigma_t, scale,
                                                                direction):  # fmt: skip
    """Gaussian PSFs: kernel width sqrt(s_broad^2 - s_sharp^2) within 2%, sum = flux scale."""
    s, vs, t, vt, bad, ps, pt = star_field(1, sigma_s=sigma_s, sigma_t=sigma_t, scale=scale)
    z, info = al_subtract(s, vs, t, vt, bad, ps, pt)
    assert info.direction == direction
    expected = np.sqrt(abs(sigma_s**2 - sigma_t**2))
    k = info.kernel_at(128.0, 128.0)
    assert kernel_sigma(k) == pytest.approx(expected, rel=0.02)
    # The kernel carries the photometric scale from the convolved image to the other one.
    ratio = scale if direction == "convolveTemplate" else 1.0 / scale
    assert info.kernel_sum / ratio == pytest.approx(1.0, abs=0.01)
    assert k.sum() == pytest.approx(info.kernel_sum, rel=1e-10)
    assert info.kernel_size == 21 and info.kernel_size % 2 == 1
    assert info.n_stars_used >= 3 and info.n_stars_used <= info.n_stars_found
    assert 0.9 < info.residual_rms < 1.1
    # Static stars cancel: the score is N(0, 1) with no 5 sigma excursions.
    v = z.valid
    assert abs(z.score[v].std() - 1.0) < 0.05
    assert np.abs(z.score[v]).max() < 5.0


def test_matched_image_is_the_convolved_template_on_the_science_scale():
    s, vs, t, vt, bad, ps, pt = star_field(2, scale=1.3)
    z, info = al_subtract(s, vs, t, vt, bad, ps, pt)
    assert isinstance(info, ALInfo)
    assert info.matched.dtype == np.float32 and info.matched_variance.dtype == np.float32
    ref = convolve_spatial(t, info.kernel)
    assert_allclose(info.matched, ref.astype(np.float32), rtol=1e-5, atol=1e-3)
    # Stars in the matched template have the science's flux: the residual flux is noise.
    core = (slice(40, 216), slice(40, 216))
    resid = (s - info.matched)[core].sum()
    err = np.sqrt((vs + info.matched_variance)[core].sum())
    assert abs(resid) < 5 * err
    assert np.all(info.matched_variance[z.valid] > 0)


@pytest.mark.parametrize(("sigma_s", "sigma_t"), [(2.0, 1.2), (1.2, 2.0)])
def test_matched_variance_is_made_on_first_access(sigma_s, sigma_t):
    """ALInfo.matched_variance is computed when first read (only matched.fits needs it):
    the reference variance through the squared spatial kernel, on the science's scale for
    convolveScience, NaN on unusable pixels; read twice, the same array."""
    s, vs, t, vt, bad, ps, pt = star_field(3, sigma_s=sigma_s, sigma_t=sigma_t)
    bad[100:110, 30:60] = True
    _, info = al_subtract(s, vs, t, vt, bad, ps, pt)
    assert info.variance_of_matched is not None
    got = info.matched_variance
    assert info.variance_of_matched is None and info.matched_variance is got
    if info.direction == "convolveTemplate":
        ref_var, scale = vt, 1.0
    else:
        ref_var, scale = vs, 1.0 / info.kernel_sum**2
    want = convolve_spatial_variance(np.where(bad, 0.0, ref_var), info.kernel) * scale
    assert np.isnan(got[bad]).all()
    assert_allclose(got[~bad], want[~bad].astype(np.float32), rtol=1e-5)
    assert {"convolveTemplate": (2.0, 1.2), "convolveScience": (1.2, 2.0)}[info.direction] == (
        sigma_s, sigma_t,
    )  # fmt: skip


def test_spatially_varying_kernel_follows_the_psf_gradient():
    shape = (256, 256)
    g0 = gaussian_psf(2.0, 25)
    d = 0.5 * (gaussian_psf(2.2, 25) - gaussian_psf(1.8, 25))  # width 1.8 -> 2.2 along x
    psf_s = PsfModel(basis=np.array([g0, d, np.zeros_like(d)]), degree=1, shape=shape)
    s, vs, t, vt, bad, ps, pt = star_field(4, n_stars=110, psf_s=psf_s)
    _, info = al_subtract(s, vs, t, vt, bad, ps, pt, spatial_order=1)
    for x in (20.0, 128.0, 235.0):
        want = np.sqrt(kernel_sigma(psf_s.at(x, 128.0)) ** 2 - kernel_sigma(pt.at(x, 128.0)) ** 2)
        assert kernel_sigma(info.kernel_at(x, 128.0)) == pytest.approx(want, rel=0.03)
    # A constant kernel (order 0) cannot follow it.
    _, flat = al_subtract(s, vs, t, vt, bad, ps, pt, spatial_order=0)
    left, right = (kernel_sigma(flat.kernel_at(x, 128.0)) for x in (20.0, 235.0))
    assert left == pytest.approx(right, rel=1e-9)


def test_differential_background_is_fitted_and_removed():
    shape = (256, 256)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    u, v = 2 * xx / 255 - 1, 2 * yy / 255 - 1
    bkg = 6.0 + 3.0 * u - 2.0 * v
    s, vs, t, vt, bad, ps, pt = star_field(5, background=bkg)
    z, info = al_subtract(s, vs, t, vt, bad, ps, pt, background_order=1)
    assert_allclose(info.background_coeffs, [6.0, 3.0, -2.0], atol=0.5)
    v_ = z.valid
    pull = z.difference[v_] / np.sqrt(z.difference_variance[v_])
    assert abs(np.median(pull)) < 0.05


def test_new_source_appears_with_its_flux():
    s, vs, t, vt, bad, ps, pt = star_field(6, sigma_s=2.0, sigma_t=1.2)
    rng = np.random.default_rng(60)
    xs, ys, f = [40, 200, 120], [210, 50, 128], 4000.0
    for x, y in zip(xs, ys, strict=True):
        s[y - 12 : y + 13, x - 12 : x + 13] += f * ps.at(x, y)
        s[y - 12 : y + 13, x - 12 : x + 13] += rng.normal(size=(25, 25)) * np.sqrt(f * ps.at(x, y))
    z, _ = al_subtract(s, vs, t, vt, bad, ps, pt)
    for x, y in zip(xs, ys, strict=True):
        assert z.score[y, x] > 10
        assert z.flux[y, x] == pytest.approx(f, abs=4 * float(np.sqrt(z.flux_variance[y, x])))


def test_errors_in_variables_correction_removes_kernel_sum_shrinkage(monkeypatch):
    """A noisy convolved image (here the shallow science, convolveScience) shrinks a plain
    least-squares kernel; the corrected normal equations give the true sum (1 here)."""
    runs = {"corrected": [], "plain": []}
    plain = alardlupton.stamp_systems

    def no_correction(*a, **k):
        systems = plain(*a, **k)
        systems.noise[:] = 0.0
        return systems

    for seed in range(4):
        pair = star_field(30 + seed, shape=(512, 512), sigma_s=1.2, sigma_t=1.8, sky_s=80.0,
                          sky_t=3.0, n_stars=400)  # fmt: skip
        runs["corrected"].append(al_subtract(*pair)[1].kernel_sum)
        with monkeypatch.context() as mp:
            mp.setattr(alardlupton, "stamp_systems", no_correction)
            runs["plain"].append(al_subtract(*pair)[1].kernel_sum)
    assert abs(np.mean(runs["corrected"]) - 1.0) < 0.003
    assert np.mean(runs["plain"]) < np.mean(runs["corrected"]) - 0.004


def test_kernel_star_selection_cuts():
    shape = (256, 256)
    rng = np.random.default_rng(21)
    psf = gaussian_psf(1.5, 25)
    s = rng.normal(size=shape) * 10.0
    t = rng.normal(size=shape) * 5.0
    bad = np.zeros(shape, bool)
    stars = {(40, 40): 3e4, (120, 40): 3e4, (200, 40): 1e3, (40, 200): 3e4, (200, 200): 3e4,
             (120, 200): 3e4, (128, 205): 1e5}  # fmt: skip
    for (x, y), f in stars.items():
        s[y - 12 : y + 13, x - 12 : x + 13] += f * psf
        if (x, y) != (120, 40):  # a new source: no template counterpart
            t[y - 12 : y + 13, x - 12 : x + 13] += f * psf
    bad[200, 190] = True  # within the stamp of (200, 200)
    vs, vt = np.full(shape, 100.0), np.full(shape, 25.0)
    kw = {"fwhm": 3.5, "stamp_half": 15, "margin": 10}
    got = select_kernel_stars(s, vs, t, vt, bad, **kw)
    # (120, 40) has no template counterpart, (200, 200) a bad pixel in its stamp,
    # (128, 205) S/N > 500 and (120, 200) a brighter neighbour.
    assert sorted(zip(got.x.tolist(), got.y.tolist(), strict=True)) == [
        (40, 40), (40, 200), (200, 40)
    ]  # fmt: skip
    assert got.n_detected >= 5 and np.all((got.snr >= 10) & (got.snr <= 500))
    # The S/N window: the faint star has S/N ~15, the bright ones ~440.
    bright = select_kernel_stars(s, vs, t, vt, bad, snr_range=(20.0, 500.0), **kw)
    assert sorted(zip(bright.x.tolist(), bright.y.tolist(), strict=True)) == [(40, 40), (40, 200)]
    faint = select_kernel_stars(s, vs, t, vt, bad, snr_range=(10.0, 300.0), **kw)
    assert list(zip(faint.x.tolist(), faint.y.tolist(), strict=True)) == [(200, 40)]
    # Isolation: (120, 200) has a brighter neighbour in its stamp; that one (S/N ~1400)
    # is kept once the window allows it, as nothing brighter is near it.
    wide = select_kernel_stars(s, vs, t, vt, bad, snr_range=(10.0, 2000.0), **kw)
    assert (128, 205) in zip(wide.x.tolist(), wide.y.tolist(), strict=True)
    assert (120, 200) not in zip(wide.x.tolist(), wide.y.tolist(), strict=True)
    # Per-cell and total caps keep the highest S/N.
    one = select_kernel_stars(s, vs, t, vt, bad, cell=256, per_cell=1, **kw)
    assert len(one.x) == 1
    capped = select_kernel_stars(s, vs, t, vt, bad, max_stars=1, **kw)
    assert len(capped.x) == 1 and capped.snr[0] == got.snr.max()


@pytest.mark.parametrize("seed", [0, 1])
def test_stacked_solve_is_the_jacobi_scaled_lstsq_of_each_system(seed):
    """alardlupton._solve_stack (one batched eigh) against np.linalg.lstsq per system, on
    badly scaled normal matrices, a rank-deficient one (the pseudo-inverse: minimum norm)
    and one with a zero row (a regressor that is 0 on the whole stamp)."""
    rng = np.random.default_rng(seed)
    n, m = 40, 12
    a = rng.normal(size=(n, 60, m)) * np.logspace(0, 3, m)
    a[3, :, 5] = a[3, :, 4] * 2.0  # rank m - 1
    a[7, :, 2] = 0.0  # a zero row and column in Q
    q = np.einsum("nki,nkj->nij", a, a)
    b = np.einsum("nki,nk->ni", a, rng.normal(size=(n, 60)))
    got = alardlupton._solve_stack(q, b)
    for i in range(n):
        d = np.sqrt(np.clip(np.diag(q[i]), 0.0, None))
        d = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
        x, *_ = np.linalg.lstsq(q[i] * d[:, None] * d[None, :], b[i] * d, rcond=1e-12)
        assert_allclose(got[i], x * d, rtol=1e-9, atol=1e-9 * np.abs(x * d).max())
    assert got[7, 2] == 0.0


def test_kernel_stars_from_a_given_catalogue():
    """``detections`` (the pipeline's find_stars catalogue) replaces the detection pass when
    the stars chosen from it reach ``max_stars``; below that the own pass serves, which
    finds faint stars of broad PSFs the 5 sigma catalogue misses."""
    shape = (256, 256)
    rng = np.random.default_rng(23)
    psf = gaussian_psf(1.5, 25)
    s = rng.normal(size=shape) * 10.0
    t = rng.normal(size=shape) * 5.0
    xs, ys = rng.integers(30, 226, 12), rng.integers(30, 226, 12)
    for x, y, f in zip(xs, ys, rng.uniform(5e3, 3e4, 12), strict=True):
        s[y - 12 : y + 13, x - 12 : x + 13] += f * psf
        t[y - 12 : y + 13, x - 12 : x + 13] += f * psf
    bad = np.zeros(shape, bool)
    vs, vt = np.full(shape, 100.0), np.full(shape, 25.0)
    kw = {"fwhm": 3.5, "stamp_half": 15, "margin": 10}
    cat = find_stars(s, vs, bad)
    for cap in (3, 1000):
        own = select_kernel_stars(s, vs, t, vt, bad, max_stars=cap, **kw)
        got = select_kernel_stars(s, vs, t, vt, bad, max_stars=cap, detections=cat, **kw)
        assert len(own.x) >= 3 and own.source == "detection"
        # Isolated stars: the same stamps either way.
        assert sorted(zip(got.x.tolist(), got.y.tolist(), strict=True)) == sorted(
            zip(own.x.tolist(), own.y.tolist(), strict=True)
        )
        if cap == 3:
            assert got.source == "catalogue" and got.n_detected == len(cat)
        else:  # fewer than 1000 chosen: the own detection pass served
            assert got.source == "detection" and got.n_detected == own.n_detected
    # Only the catalogue's positions are used: an empty region yields nothing.
    far = cat[:0]
    none = select_kernel_stars(s, vs, t, vt, bad, max_stars=0, detections=far, **kw)
    assert len(none.x) == 0 and none.source == "catalogue"
    with pytest.raises(ValueError, match="lack the fields"):
        select_kernel_stars(s, vs, t, vt, bad, detections=np.zeros(3, [("x", float)]), **kw)


def test_threads_give_the_same_result():
    pair = star_field(22)
    z1, i1 = al_subtract(*pair)
    z2, i2 = al_subtract(*pair, workers=2)
    assert i1.n_stars_used == i2.n_stars_used
    assert_allclose(i1.kernel.coeffs, i2.kernel.coeffs, rtol=1e-6, atol=1e-9)
    assert_allclose(z1.score, z2.score, rtol=1e-4, atol=1e-4)
    assert_allclose(z1.difference, z2.difference, rtol=1e-4, atol=1e-3)


def test_too_few_stars_names_the_counts():
    s, vs, t, vt, bad, ps, pt = star_field(7, n_stars=2)
    with pytest.raises(ValueError, match=r"at least 3 kernel stars, found [0-2]\b"):
        al_subtract(s, vs, t, vt, bad, ps, pt)
    s, vs, t, vt, bad, ps, pt = star_field(7, n_stars=12)
    with pytest.raises(ValueError, match=r"at least 50 kernel stars, found \d+"):
        al_subtract(s, vs, t, vt, bad, ps, pt, min_stars=50)


def test_preconvolve_mode_gives_a_unit_normal_score():
    """Explicit pre-convolution (science sharper): static stars cancel, score ~ N(0, 1)."""
    s, vs, t, vt, bad, ps, pt = star_field(8, sigma_s=1.2, sigma_t=1.5)
    z, info = al_subtract(s, vs, t, vt, bad, ps, pt, mode="preconvolve")
    assert info.direction == "preconvolve"
    # Kernel: T (s_t) -> P (x) S (sqrt(2) s_s).
    want = np.sqrt(2 * kernel_sigma(ps.at(0, 0)) ** 2 - kernel_sigma(pt.at(0, 0)) ** 2)
    assert kernel_sigma(info.kernel_at(128.0, 128.0)) == pytest.approx(want, rel=0.05)
    v = z.valid
    assert abs(z.score[v].std() - 1.0) < 0.05
    assert np.abs(z.score[v]).max() < 5.5


def test_auto_mode_resolution():
    assert resolve_mode("auto", 2.0, 1.5) == "convolveTemplate"
    assert resolve_mode("auto", 1.5, 1.5) == "convolveTemplate"
    assert resolve_mode("auto", 1.5, 2.0) == "convolveScience"
    assert resolve_mode("preconvolve", 1.5, 2.0) == "preconvolve"
    with pytest.raises(ValueError, match="mode must be one of"):
        resolve_mode("both", 1.0, 1.0)


@pytest.fixture(scope="module")
def small_pair():
    return star_field(10, shape=(96, 96), n_stars=25)


def _with(pair, **changes):
    s, vs, t, vt, bad, ps, pt = pair
    args = {"science": s, "science_variance": vs, "template": t, "template_variance": vt,
            "bad": bad, "psf_science": ps, "psf_template": pt}  # fmt: skip
    kw = {}
    for k, v in changes.items():
        (args if k in args else kw)[k] = v
    return args, kw


@pytest.mark.parametrize(
    ("changes", "exc", "match"),
    [
        ({"science": np.zeros(5)}, ValueError, "science must be a 2-D array"),
        ({"science": np.zeros((96, 96), complex)}, TypeError, "real numeric array"),
        ({"template": np.zeros((96, 95))}, ValueError, r"template shape \(96, 95\)"),
        ({"bad": np.zeros((96, 96), int)}, TypeError, "bad must be a bool array"),
        ({"bad": np.zeros((9, 9), bool)}, ValueError, "bad shape"),
        ({"mode": "auto-ish"}, ValueError, "mode must be one of"),
        ({"spatial_order": -1}, ValueError, "spatial_order must be >= 0"),
        ({"spatial_order": 1.0}, TypeError, "spatial_order must be an int"),
        ({"background_order": True}, TypeError, "background_order must be an int"),
        ({"kernel_size": 20}, ValueError, "kernel_size must be odd"),
        ({"kernel_size": 1}, ValueError, "kernel_size must be >= 3"),
        ({"stamp_cell": 8}, ValueError, "stamp_cell must be >= 16"),
        ({"min_stars": 0}, ValueError, "min_stars must be >= 1"),
        ({"precision": "half"}, ValueError, "precision must be 'double' or 'single'"),
        ({"psf_template": object()}, TypeError, r"psf_template must have an \.at"),
        (
            {
                "science": np.zeros((20, 20)),
                "science_variance": np.ones((20, 20)),
                "template": np.zeros((20, 20)),
                "template_variance": np.ones((20, 20)),
                "bad": np.zeros((20, 20), bool),
            },
            ValueError,
            "at least 32 x 32",
        ),
        ({"bad": np.ones((96, 96), bool)}, ValueError, "no usable pixels"),
        ({"psf_error_fraction": 1.0}, ValueError, r"psf_error_fraction must be in \[0, 1\)"),
    ],
)
def test_input_validation(small_pair, changes, exc, match):
    args, kw = _with(small_pair, **changes)
    with pytest.raises(exc, match=match):
        al_subtract(*args.values(), **kw)
