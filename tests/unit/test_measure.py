"""jitcore.measure and its kernels: NumPy references, simulated differences, flags, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from diffstream.jitcore._kernels import measure as K
from diffstream.jitcore._kernels import psffit as F
from diffstream.jitcore.detect import SOURCE_DTYPE, detect
from diffstream.jitcore.masks import DEFAULT_PLANES, with_planes
from diffstream.jitcore.measure import MEASURE_DTYPE, PIXEL_FLAG_PLANES, measure
from diffstream.jitcore.photometry import (
    aperture_flux,
    distinct_stamps,
    stack_psfs,
    unusable_map,
)
from diffstream.jitcore.psf import PsfModel, gaussian_psf

pytestmark = pytest.mark.unit

HYP = settings(max_examples=20, deadline=None)
DTYPES = st.sampled_from([np.float32, np.float64])


# --- NumPy references --------------------------------------------------------------------


def nearest(v):
    return int(math.floor(v + 0.5))


def taps_reference(frac):
    """Lagrange weights and exact derivatives from numpy polynomials, taps t = -4..4."""
    nodes = np.arange(8) + math.floor(frac) - 3
    w = np.zeros(9)
    dw = np.zeros(9)
    for p, tp in enumerate(nodes):
        others = np.delete(nodes, p)
        poly = np.poly1d(others, r=True) / np.prod(tp - others)
        w[tp + 4] = poly(frac)
        dw[tp + 4] = np.polyder(poly)(frac)
    return w, dw


def shift_reference(psf, fx, fy):
    """(T, dT/dfx, dT/dfy) on the (K + 8)^2 support, stamp pixel (a, b) at [b + 4, a + 4]:
    T[b, a] = sum_{s,t} psf[b - s, a - t] wy[s] wx[t]."""
    wx, dwx = taps_reference(fx)
    wy, dwy = taps_reference(fy)
    k = psf.shape[0]
    m = k + 2 * F.PAD
    pad = np.zeros((m + 8, m + 8))
    pad[8 : 8 + k, 8 : 8 + k] = psf  # psf[b, a] at [b + 8, a + 8]
    out = np.zeros((3, m, m))
    for s in range(-4, 5):
        for t in range(-4, 5):
            moved = pad[8 - 4 - s : 8 - 4 - s + m, 8 - 4 - t : 8 - 4 - t + m]
            out[0] += wy[s + 4] * wx[t + 4] * moved
            out[1] += wy[s + 4] * dwx[t + 4] * moved
            out[2] += dwy[s + 4] * wx[t + 4] * moved
    return out


def good_reference(img, var, mask, badbits):
    with np.errstate(invalid="ignore"):
        return ((mask & badbits) == 0) & np.isfinite(img) & np.isfinite(var) & (var > 0)


def model_on_window(psf, flux, x, y, wx, wy):
    """flux x PSF centred at (x, y) on the K x K window centred on pixel (wx, wy)."""
    k = psf.shape[0]
    h = k // 2
    mx, my = nearest(x), nearest(y)
    t = shift_reference(psf, x - mx, y - my)[0]  # t[c2, c]: pixel (mx + c - h - 4, ...)
    out = np.zeros((k, k))
    for b in range(k):
        for a in range(k):
            c2, c = wy + b - h - my + h + 4, wx + a - h - mx + h + 4
            if 0 <= c2 < t.shape[0] and 0 <= c < t.shape[1]:
                out[b, a] = t[c2, c]
    return flux * out


def window(img, wx, wy, h, fill=np.nan):
    """The (2h + 1)^2 pixels centred on (wx, wy), ``fill`` outside the image."""
    ny, nx = img.shape
    out = np.full((2 * h + 1, 2 * h + 1), fill, dtype=np.float64)
    for b in range(2 * h + 1):
        for a in range(2 * h + 1):
            j, i = wy + b - h, wx + a - h
            if 0 <= j < ny and 0 <= i < nx:
                out[b, a] = img[j, i]
    return out


def linear_fit_reference(img, var, mask, badbits, psf, x, y):
    """(flux, err, chi2, ndata, truncated, lnL) of the weighted linear PSF fit."""
    cx, cy = nearest(x), nearest(y)
    h = psf.shape[0] // 2
    p = model_on_window(psf, 1.0, x, y, cx, cy)
    inside = np.isfinite(window(np.zeros(img.shape), cx, cy, h))
    good = window(good_reference(img, var, mask, badbits).astype(float), cx, cy, h, 0) > 0
    d = window(img, cx, cy, h)[good]
    v = window(var, cx, cy, h)[good]
    truncated = float(not inside.all())
    spp = np.sum(p[good] ** 2 / v)
    if good.sum() == 0 or spp <= 0:
        return np.array([np.nan, np.nan, np.nan, 0.0, truncated, np.nan])
    flux = np.sum(p[good] * d / v) / spp
    chi2 = np.sum((d - flux * p[good]) ** 2 / v)
    lnl = -0.5 * (chi2 + np.sum(np.log(2 * np.pi * v)))
    return np.array([flux, 1 / np.sqrt(spp), chi2, good.sum(), truncated, lnl])


def chi2_reference(img, var, mask, badbits, psf, flux, x, y, wx, wy):
    """chi^2 of flux * PSF at (x, y) over the window centred on the fixed pixel (wx, wy)."""
    h = psf.shape[0] // 2
    good = window(good_reference(img, var, mask, badbits).astype(float), wx, wy, h, 0) > 0
    r = window(img, wx, wy, h) - model_on_window(psf, flux, x, y, wx, wy)
    return np.sum(r[good] ** 2 / window(var, wx, wy, h)[good])


def moments_reference(img, var, mask, badbits, x, y, sgn, m0, half, max_iter=100, tol=1e-6):
    ny, nx = img.shape
    cx, cy = nearest(x), nearest(y)
    j0, j1 = max(cy - half, 0), min(cy + half + 1, ny)
    i0, i1 = max(cx - half, 0), min(cx + half + 1, nx)
    jj, ii = np.mgrid[j0:j1, i0:i1]
    good = good_reference(img, var, mask, badbits)[j0:j1, i0:i1]
    dx, dy = (ii - x)[good], (jj - y)[good]
    val = sgn * img[j0:j1, i0:i1][good].astype(np.float64)
    m = np.array([[m0[0], m0[2]], [m0[2], m0[1]]], dtype=np.float64)
    for _ in range(max_iter):
        if not (m[0, 0] > 0 and m[1, 1] > 0 and np.linalg.det(m) > 0):
            return (*m[[0, 1, 0], [0, 1, 1]], K.SHAPE_NOT_POSITIVE)
        inv = np.linalg.inv(m)
        q = inv[0, 0] * dx**2 + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy**2
        w = np.where(q <= K.MOMENT_QMAX, np.exp(-0.5 * q), 0.0) * val
        s0 = w.sum()
        if (q <= K.MOMENT_QMAX).sum() == 0 or not s0 > 0:
            return (*m[[0, 1, 0], [0, 1, 1]], K.SHAPE_NO_PIXELS)
        new = 2 * np.array([[np.sum(w * dx * dx), np.sum(w * dx * dy)], [0, np.sum(w * dy * dy)]])
        new = new / s0
        new[1, 0] = new[0, 1]
        change = np.abs(new - m).max()
        m = new
        if not (m[0, 0] > 0 and m[1, 1] > 0 and np.linalg.det(m) > 0):
            return (*m[[0, 1, 0], [0, 1, 1]], K.SHAPE_NOT_POSITIVE)
        if max(m[0, 0], m[1, 1]) > half * half:
            return (*m[[0, 1, 0], [0, 1, 1]], K.SHAPE_TOO_LARGE)
        if change < tol * (m[0, 0] + m[1, 1]):
            return (*m[[0, 1, 0], [0, 1, 1]], K.SHAPE_OK)
    return (*m[[0, 1, 0], [0, 1, 1]], K.SHAPE_NOT_CONVERGED)


def quad_sample_reference(img, x, y):
    ny, nx = img.shape
    i0, j0 = nearest(x), nearest(y)
    if not (0 <= i0 < nx and 0 <= j0 < ny):
        return np.nan
    if not (1 <= i0 <= nx - 2 and 1 <= j0 <= ny - 2):
        return float(img[j0, i0])
    z = img[j0 - 1 : j0 + 2, i0 - 1 : i0 + 2].astype(np.float64)
    if not np.isfinite(z).all():
        return float(img[j0, i0])
    gx, gy = (g.ravel() for g in np.meshgrid([-1.0, 0, 1], [-1.0, 0, 1]))
    design = np.column_stack([np.ones(9), gx, gy, gx * gx, gx * gy, gy * gy])
    c = np.linalg.lstsq(design, z.ravel(), rcond=None)[0]
    fx, fy = x - i0, y - j0
    return float(c @ [1, fx, fy, fx * fx, fx * fy, fy * fy])


def aperture_reference(img, var, x, y, r, sub=64):
    """Sum of pixel value x (fraction of the pixel inside the circle), by super-sampling."""
    total = 0.0
    vtotal = 0.0
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    oy, ox = np.meshgrid(offs, offs, indexing="ij")
    for j in range(max(int(y - r) - 1, 0), min(int(y + r) + 2, img.shape[0])):
        for i in range(max(int(x - r) - 1, 0), min(int(x + r) + 2, img.shape[1])):
            frac = np.mean((i + ox - x) ** 2 + (j + oy - y) ** 2 < r * r)
            total += frac * img[j, i]
            vtotal += frac * var[j, i]
    return total, np.sqrt(vtotal)


# --- simulation helpers ------------------------------------------------------------------


def add_point(img, x, y, flux, sigma, size):
    cx, cy = nearest(x), nearest(y)
    h = size // 2
    stamp = flux * gaussian_psf(sigma, size, dx=x - cx, dy=y - cy)
    j0, i0 = cy - h, cx - h
    ny, nx = img.shape
    sj = slice(max(j0, 0), min(j0 + size, ny))
    si = slice(max(i0, 0), min(i0 + size, nx))
    img[sj, si] += stamp[sj.start - j0 : sj.stop - j0, si.start - i0 : si.stop - i0]


def make_sources(x, y, sign, bbox=None):
    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    src = np.zeros(x.size, dtype=SOURCE_DTYPE)
    src["x"], src["y"] = x, y
    src["peak_x"], src["peak_y"] = np.floor(x + 0.5), np.floor(y + 0.5)
    src["sign"] = np.broadcast_to(sign, x.shape)
    if bbox is None:
        bbox = np.column_stack(
            [src["peak_x"] - 2, src["peak_x"] + 2, src["peak_y"] - 2, src["peak_y"] + 2]
        )
    src["bbox"] = bbox
    return src


def const_psf(sigma, size=None):
    stamp = gaussian_psf(sigma, size)
    return lambda x, y: stamp


# --- kernels vs references ---------------------------------------------------------------


@HYP
@given(st.floats(-0.5, 0.5))
def test_interp_taps_match_reference(frac):
    w = np.empty(F.NTAPS)
    dw = np.empty(F.NTAPS)
    F.interp_taps(frac, w, dw)
    rw, rdw = taps_reference(frac)
    np.testing.assert_allclose(w, rw, atol=1e-12)
    np.testing.assert_allclose(dw, rdw, atol=1e-10)
    assert abs(w.sum() - 1) < 1e-12
    assert abs(np.dot(np.arange(-4, 5), w) - frac) < 1e-12  # first moment = shift


@HYP
@given(st.integers(1, 8), st.floats(-0.5, 0.5), st.floats(-0.5, 0.5), st.integers(0, 2**32 - 1))
def test_shift_stamp_matches_reference(half, fx, fy, seed):
    psf = np.random.default_rng(seed).random((2 * half + 1, 2 * half + 1))
    m = psf.shape[0] + 2 * F.PAD
    work = np.empty((5, m, m))
    F.shift_stamp(psf, fx, fy, work, np.empty((4, F.NTAPS)))
    np.testing.assert_allclose(work[:3], shift_reference(psf, fx, fy), atol=1e-12)


@pytest.mark.parametrize("sigma,tol", [(1.5, 3e-3), (2.0, 5e-4), (3.0, 5e-5)])
def test_shift_stamp_matches_exact_gaussian(sigma, tol):
    psf = gaussian_psf(sigma)
    m = psf.shape[0] + 2 * F.PAD
    work = np.empty((5, m, m))
    yy, xx = np.mgrid[:m, :m] - m // 2
    for fx, fy in [(0.25, 0.0), (0.5, -0.5), (-0.3, 0.1)]:
        F.shift_stamp(psf, fx, fy, work, np.empty((4, F.NTAPS)))
        exact = gaussian_psf(sigma, m, dx=fx, dy=fy)
        assert np.abs(work[0] - exact).max() < tol * exact.max()
        # Centroid moves by the shift (Lanczos-3 would give 0.230 for 0.25).
        assert abs((work[0] * xx).sum() / work[0].sum() - fx) < 1e-4
        assert abs((work[0] * yy).sum() / work[0].sum() - fy) < 1e-4


def _random_scene(rng, dtype, ny, nx):
    img = rng.normal(size=(ny, nx)).astype(dtype)
    var = rng.uniform(0.5, 2.0, (ny, nx)).astype(dtype)
    mask = np.where(rng.random((ny, nx)) < 0.05, 1 << rng.integers(0, 9, (ny, nx)), 0)
    img[rng.random((ny, nx)) < 0.02] = np.nan
    var[rng.random((ny, nx)) < 0.02] = 0
    return img, var, mask.astype(np.int32)


@HYP
@given(DTYPES, st.integers(5, 31), st.integers(5, 33), st.integers(0, 2**32 - 1))
def test_forced_psf_fit_matches_reference(dtype, ny, nx, seed):
    rng = np.random.default_rng(seed)
    img, var, mask = _random_scene(rng, dtype, ny, nx)
    n = 6
    psf = gaussian_psf(1.2, 7)
    psfs = np.ascontiguousarray(np.broadcast_to(psf, (n, 7, 7)))
    xs = rng.uniform(-1.0, nx, n)  # includes stamps hanging off every edge
    ys = rng.uniform(-1.0, ny, n)
    badbits = 0b101
    out = np.empty((n, 6))
    F.forced_psf_fit(img, var, mask, badbits, psfs, xs, ys, np.empty((5, 15, 15)), out)
    for i in range(n):
        ref = linear_fit_reference(img, var, mask, badbits, psf, xs[i], ys[i])
        np.testing.assert_allclose(out[i], ref, rtol=1e-9, atol=1e-12, equal_nan=True)


@HYP
@given(DTYPES, st.integers(0, 2**32 - 1))
def test_fit_centroids_is_the_least_squares_optimum(dtype, seed):
    """At the returned position the chi^2 gradient vanishes and the errors are the inverse
    Fisher matrix, both checked by finite differences of the NumPy model."""
    rng = np.random.default_rng(seed)
    ny, nx, sigma, k = 29, 31, 1.6, 11
    psf = gaussian_psf(sigma, k)
    x0, y0 = rng.uniform(12, 18), rng.uniform(12, 16)
    flux = rng.choice([-1, 1]) * rng.uniform(150, 400)
    var = rng.uniform(0.8, 1.2, (ny, nx))
    img = rng.normal(size=(ny, nx)) * np.sqrt(var)
    add_point(img, x0, y0, flux, sigma, k)
    mask = np.zeros((ny, nx), np.int32)
    mask[int(y0) + 2, int(x0) - 1] = 1  # one rejected pixel inside the stamp
    img, var = img.astype(dtype), var.astype(dtype)
    start_x, start_y = x0 + rng.uniform(-0.6, 0.6), y0 + rng.uniform(-0.6, 0.6)
    out = np.empty((1, 6))
    F.fit_centroids(
        img, var, mask, 1, np.ascontiguousarray(psf[None]), np.array([start_x]),
        np.array([start_y]), 20, 1.5, 1e-6, np.empty((5, k + 8, k + 8)), out,
    )  # fmt: skip
    x, y, xerr, yerr, code, f = out[0]
    assert code == F.CENTROID_OK
    # The interpolant's node set switches at integer positions (continuous, with a tiny kink
    # in its derivative); keep the finite differences below on one side of it.
    assume(min(abs(x - nearest(x)), abs(y - nearest(y))) > 2e-3)
    wx, wy = nearest(start_x), nearest(start_y)  # the fit window stays where it started

    def chi2(p):
        return chi2_reference(img, var, mask, 1, psf, p[0], p[1], p[2], wx, wy)

    p0 = np.array([f, x, y])
    h = np.array([1e-2 * abs(f), 1e-3, 1e-3])
    eye = np.diag(h)
    grad = np.array([(chi2(p0 + eye[a]) - chi2(p0 - eye[a])) / (2 * h[a]) for a in range(3)])
    hess = np.empty((3, 3))
    for a in range(3):
        for b in range(3):
            ea, eb = eye[a], eye[b]
            num = chi2(p0 + ea + eb) - chi2(p0 + ea - eb) - chi2(p0 - ea + eb) + chi2(p0 - ea - eb)
            hess[a, b] = num / (4 * h[a] * h[b])
    cov = np.linalg.inv(0.5 * hess)  # chi^2 = -2 lnL + const: Fisher = Hessian / 2
    sig = np.sqrt(np.diag(cov))
    # A Newton step from here moves each parameter by < 1e-3 of its error: an optimum.
    step = -np.linalg.solve(hess, grad)
    assert np.all(np.abs(step) < 1e-3 * sig)
    # The errors are those of the Fisher matrix J^T W J, J by finite differences of the model.
    h0 = psf.shape[0] // 2
    sl = np.s_[wy - h0 : wy + h0 + 1, wx - h0 : wx + h0 + 1]
    good = good_reference(img, var, mask, 1)[sl]
    weight = 1.0 / var[sl][good].astype(np.float64)

    def model(p):
        return model_on_window(psf, p[0], p[1], p[2], wx, wy)[good]

    jac = np.column_stack(
        [(model(p0 + eye[a]) - model(p0 - eye[a])) / (2 * h[a]) for a in range(3)]
    )
    fisher_cov = np.linalg.inv(jac.T @ (weight[:, None] * jac))
    np.testing.assert_allclose([xerr, yerr], np.sqrt(np.diag(fisher_cov))[1:], rtol=1e-4)
    # ... which, at a good fit, agree with the exact chi^2 curvature up to residual terms.
    np.testing.assert_allclose([xerr, yerr], sig[1:], rtol=0.15)


@HYP
@given(DTYPES, st.integers(7, 25), st.integers(7, 27), st.integers(0, 2**32 - 1))
def test_adaptive_moments_match_reference(dtype, ny, nx, seed):
    rng = np.random.default_rng(seed)
    img, var, mask = _random_scene(rng, dtype, ny, nx)
    n = 5
    xs = rng.uniform(0, nx - 1, n)
    ys = rng.uniform(0, ny - 1, n)
    for x, y in zip(xs, ys, strict=True):
        add_point(img, x, y, 300.0, rng.uniform(1.0, 2.0), 13)  # NaNs stay NaN
    sgn = rng.choice([-1.0, 1.0], n)
    m0 = np.column_stack([rng.uniform(1, 3, n), rng.uniform(1, 3, n), rng.uniform(-0.3, 0.3, n)])
    out = np.empty((n, 4))
    K.adaptive_moments(img, var, mask, 0b11, xs, ys, sgn, m0, 6, 100, 1e-6, out)
    for i in range(n):
        ref = moments_reference(img, var, mask, 0b11, xs[i], ys[i], sgn[i], m0[i], 6)
        assert out[i, 3] == ref[3]
        np.testing.assert_allclose(out[i, :3], ref[:3], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adaptive_moments_large_window_matches_reference(dtype):
    # A PSF-sized source in a window far larger than its weight ellipse (the pipeline's
    # case: half = 24 for 25 px stamps): the kernel visits only the ellipse's bounding box,
    # the reference the whole window; both cut the weights at MOMENT_QMAX.
    rng = np.random.default_rng(11)
    img, var, mask = _random_scene(rng, dtype, 70, 64)
    xs = np.array([31.3, 2.2, 60.7, 20.0])
    ys = np.array([35.6, 40.1, 3.4, 66.5])
    for x, y in zip(xs, ys, strict=True):
        add_point(img, x, y, 400.0, 1.4, 21)
    sgn = np.ones(4)
    m0 = np.tile([2.0, 2.0, 0.1], (4, 1))
    out = np.empty((4, 4))
    K.adaptive_moments(img, var, mask, 0b11, xs, ys, sgn, m0, 24, 100, 1e-6, out)
    for i in range(4):
        ref = moments_reference(img, var, mask, 0b11, xs[i], ys[i], sgn[i], m0[i], 24)
        assert out[i, 3] == ref[3]
        np.testing.assert_allclose(out[i, :3], ref[:3], rtol=1e-7, atol=1e-9)
    assert (out[:, 3] == K.SHAPE_OK).sum() >= 3


def test_stamp_adaptive_moments_of_gaussians():
    psfs = np.stack([gaussian_psf(s, 21) for s in (1.0, 1.8, 2.5)])
    psfs[1] = gaussian_psf(1.8, 21, ellipticity=0.2)
    out = np.empty((3, 4))
    K.stamp_adaptive_moments(psfs, 100, 1e-8, out)
    assert np.all(out[:, 3] == K.SHAPE_OK)
    # Pixel integration adds 1/12 to a Gaussian's variance.
    np.testing.assert_allclose(out[[0, 2], 0], [1.0 + 1 / 12, 2.5**2 + 1 / 12], rtol=2e-3)
    np.testing.assert_allclose(
        out[1, :2], [(1.8 * 1.2) ** 2 + 1 / 12, (1.8 * 0.8) ** 2 + 1 / 12], rtol=2e-3
    )
    assert abs(out[1, 2]) < 1e-8


def test_distinct_stamps_and_psf_moments_once_per_stamp():
    """measure() takes the PSF moments once per distinct stamp (PSF_D: one per ZOGY tile):
    the rows equal those of every stamp measured on its own."""
    psfs = [gaussian_psf(s, 21, ellipticity=e) for s, e in ((1.3, 0.0), (1.9, 0.15), (2.4, 0.3))]
    cube = np.stack([psfs[i] for i in (0, 1, 0, 2, 1, 1, 0)])
    distinct, inverse = distinct_stamps(cube)
    assert distinct.shape[0] == 3
    np.testing.assert_array_equal(distinct[inverse], cube)
    assert distinct_stamps(np.stack(psfs)) is None
    rng = np.random.default_rng(5)
    img = rng.normal(0, 1, (120, 140)).astype(np.float32)
    var = np.ones_like(img)
    src = np.zeros(7, SOURCE_DTYPE)
    src["x"] = np.arange(7) * 18 + 10
    src["y"] = 60
    src["sign"] = 1
    src["bbox"] = np.column_stack([src["x"] - 3, src["x"] + 3, src["y"] - 3, src["y"] + 3])
    at = {int(x): cube[i] for i, x in enumerate(src["x"])}
    rows = measure(src, difference=img, difference_variance=var,
                   psf_d_at=lambda x, y: at[int(round(x))])  # fmt: skip
    for i in range(7):
        one = measure(src[i : i + 1], difference=img, difference_variance=var,
                      psf_d_at=lambda x, y: at[int(round(x))])  # fmt: skip
        for name in ("ixxPSF", "iyyPSF", "ixyPSF", "ixx", "iyy", "ixy"):
            assert rows[name][i] == one[name][0] or (
                np.isnan(rows[name][i]) and np.isnan(one[name][0])
            ), name


@HYP
@given(st.integers(1, 15), st.integers(1, 17), st.integers(0, 2**32 - 1))
def test_mask_or_matches_reference(ny, nx, seed):
    rng = np.random.default_rng(seed)
    mask = np.where(rng.random((ny, nx)) < 0.1, 1 << rng.integers(0, 9, (ny, nx)), 0).astype(
        np.int32
    )
    n = 8
    cx = rng.integers(-3, nx + 3, n)
    cy = rng.integers(-3, ny + 3, n)
    half = rng.integers(0, 5, n)
    out = np.empty((n, 2), np.int64)
    K.mask_or(mask, cx, cy, half, out)
    for i in range(n):
        region = mask[
            max(cy[i] - half[i], 0) : max(cy[i] + half[i] + 1, 0),
            max(cx[i] - half[i], 0) : max(cx[i] + half[i] + 1, 0),
        ]
        centre = mask[max(cy[i] - 1, 0) : max(cy[i] + 2, 0), max(cx[i] - 1, 0) : max(cx[i] + 2, 0)]
        assert out[i, 0] == np.bitwise_or.reduce(region.ravel(), initial=0)
        assert out[i, 1] == np.bitwise_or.reduce(centre.ravel(), initial=0)


@HYP
@given(DTYPES, st.integers(1, 9), st.integers(1, 11), st.integers(0, 2**32 - 1))
def test_quadratic_sample_matches_reference(dtype, ny, nx, seed):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(ny, nx)).astype(dtype)
    img[rng.random((ny, nx)) < 0.05] = np.nan
    xs = rng.uniform(-1.0, nx, 10)
    ys = rng.uniform(-1.0, ny, 10)
    out = np.empty(10)
    K.quadratic_sample(img, xs, ys, out)
    ref = [quad_sample_reference(img, x, y) for x, y in zip(xs, ys, strict=True)]
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12, equal_nan=True)


# --- measure on simulated differences ----------------------------------------------------


def _simulated(rng, *, sigma=2.0, snr=30.0, spacing=40, shape=(760, 800)):
    """Grid of point sources (random sign, sub-pixel position, S/N ~ snr) on noise whose
    variance varies across the image (so the weights matter)."""
    size = 2 * math.ceil(4.5 * sigma) + 1
    psf = gaussian_psf(sigma, size)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    var = 1.0 + 1.5 * (xx / shape[1]) + 0.5 * np.sin(yy / 97.0) ** 2
    diff = rng.normal(size=shape) * np.sqrt(var)
    truth = []
    for y in range(spacing, shape[0] - spacing // 2, spacing):
        for x in range(spacing, shape[1] - spacing // 2, spacing):
            xs, ys = x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)
            f = rng.choice([-1.0, 1.0]) * snr * np.sqrt(var[y, x] / (psf**2).sum())
            add_point(diff, xs, ys, f, sigma, size)
            truth.append((xs, ys, f))
    return diff.astype(np.float32), var.astype(np.float32), psf, np.array(truth)


def _score(diff, var, psf):
    from scipy.signal import fftconvolve

    corr = fftconvolve(diff, psf[::-1, ::-1], mode="same")
    pp = (psf**2).sum()
    flux_map = corr / pp
    flux_var = fftconvolve(var, (psf**2)[::-1, ::-1], mode="same") / pp**2
    return (flux_map / np.sqrt(flux_var)).astype(np.float32), flux_map, flux_var


def _match(meas, truth):
    """Measurements matched to injected sources (each found once; <= 2 noise peaks dropped)."""
    d = np.hypot(meas["x"][:, None] - truth[:, 0], meas["y"][:, None] - truth[:, 1])
    idx = np.argmin(d, axis=1)
    near = d[np.arange(len(meas)), idx] < 1.5
    assert np.sum(~near) <= 2
    assert np.unique(idx[near]).size == near.sum() == len(truth)
    return meas[near], truth[idx[near]]


@pytest.mark.science
@pytest.mark.parametrize("snr", [10.0, 100.0])
def test_psf_flux_and_centroid_statistics(snr):
    rng = np.random.default_rng(1234)
    diff, var, psf, truth = _simulated(rng, snr=snr)
    score, flux_map, flux_var = _score(diff, var, psf)
    src = detect(score, np.ones(score.shape, bool))
    m = measure(
        src, difference=diff, difference_variance=var, psf_d_at=lambda x, y: psf,
        flux=flux_map, flux_variance=flux_var,
    )  # fmt: skip
    assert m.dtype == MEASURE_DTYPE
    m, t = _match(m, truth)
    n = len(m)
    assert n >= 300
    assert not m["centroid_flag"].any() and not m["psfFlux_flag"].any()
    pull = (m["psfFlux"] - t[:, 2]) / m["psfFluxErr"]
    assert abs(pull.mean()) < 5 / np.sqrt(n)
    assert 0.9 < pull.std() < 1.1
    for axis, col in (("x", 0), ("y", 1)):
        cp = (m[axis] - t[:, col]) / m[axis + "Err"]
        assert abs(cp.mean()) < 5 / np.sqrt(n)
        assert 0.8 < cp.std() < 1.25
    np.testing.assert_array_equal(m["isNegative"], t[:, 2] < 0)
    np.testing.assert_allclose(m["snr"], m["psfFlux"] / m["psfFluxErr"])
    # The PSF flux is the optimal linear estimate, so Var(ap - psf) = Var(ap) - Var(psf).
    apull = (m["apFlux"] - m["psfFlux"]) / np.sqrt(m["apFluxErr"] ** 2 - m["psfFluxErr"] ** 2)
    assert abs(apull.mean()) < 5 / np.sqrt(n)
    assert 0.85 < apull.std() < 1.15
    assert not m["apFlux_flag"].any()
    # ZOGY's S/F_S sampled at the centroid: the same estimator up to position.
    spull = (m["scoreFlux"] - t[:, 2]) / m["scoreFluxErr"]
    assert abs(spull.mean()) < 5 / np.sqrt(n)
    assert 0.9 < spull.std() < 1.1
    # Point sources have the PSF's moments; chi2 per pixel ~ 1.
    assert 0.95 < np.median(m["ixx"] / m["ixxPSF"]) < 1.05
    assert 0.95 < np.median(m["iyy"] / m["iyyPSF"]) < 1.05
    assert np.median(m["shape_flag"]) == 0
    assert 0.9 < np.median(m["psfChi2"] / m["psfNdata"]) < 1.1
    assert np.all(m["psfNdata"] == psf.size)
    assert np.all(m["bboxSize"] >= psf.shape[0])


@pytest.mark.science
def test_forced_photometry_on_science_and_template():
    rng = np.random.default_rng(99)
    shape = (400, 420)
    ss, st_, sd = 2.0, 1.5, 2.2  # science, template, difference PSF sigmas
    ps, pt, pd = gaussian_psf(ss, 21), gaussian_psf(st_, 21), gaussian_psf(sd, 21)
    vs, vt = 4.0, 1.0
    sci = rng.normal(size=shape) * np.sqrt(vs)
    tpl = rng.normal(size=shape) * np.sqrt(vt)
    diff = rng.normal(size=shape)
    truth = []
    for y in range(30, shape[0] - 20, 30):
        for x in range(30, shape[1] - 20, 30):
            xs, ys = x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)
            ft, delta = rng.uniform(200, 600), rng.uniform(-150, 150)
            add_point(sci, xs, ys, ft + delta, ss, 21)
            add_point(tpl, xs, ys, ft, st_, 21)
            # Bright in the difference: centroid errors (~0.01 px) must not bias the forced
            # fluxes (a 0.2 px error costs 0.5% of a bright template star's flux).
            add_point(diff, xs, ys, 2000.0, sd, 21)
            truth.append((xs, ys, ft + delta, ft))
    truth = np.array(truth)
    src = make_sources(truth[:, 0] + 0.2, truth[:, 1] - 0.2, 1)
    m = measure(
        src, difference=diff, difference_variance=np.ones(shape),
        psf_d_at=lambda x, y: pd,
        science=sci, science_variance=np.full(shape, vs), psf_science_at=lambda x, y: ps,
        template=tpl, template_variance=np.full(shape, vt), psf_template_at=lambda x, y: pt,
    )  # fmt: skip
    n = len(m)
    assert n >= 2 * 64  # enough sources for two chunks
    # Chunks on threads give the very rows of one thread (NaN fields compared as equal).
    threaded = measure(
        src, difference=diff, difference_variance=np.ones(shape),
        psf_d_at=lambda x, y: pd,
        science=sci, science_variance=np.full(shape, vs), psf_science_at=lambda x, y: ps,
        template=tpl, template_variance=np.full(shape, vt), psf_template_at=lambda x, y: pt,
        workers=3,
    )  # fmt: skip
    for name in MEASURE_DTYPE.names:
        np.testing.assert_array_equal(threaded[name], m[name], err_msg=name)
    for name, col, flag in (
        ("scienceFlux", 2, "forced_PsfFlux_flag"),
        ("templateFlux", 3, "templateFlux_flag"),
    ):
        pull = (m[name] - truth[:, col]) / m[name + "Err"]
        assert abs(pull.mean()) < 5 / np.sqrt(n)
        assert 0.8 < pull.std() < 1.2
        assert not m[flag].any()
    # Without science/template the fields are NaN and flagged.
    m2 = measure(
        src[:3], difference=diff, difference_variance=np.ones(shape), psf_d_at=lambda x, y: pd
    )
    assert np.isnan(m2["scienceFlux"]).all() and m2["forced_PsfFlux_flag_noGoodPixels"].all()
    assert np.isnan(m2["templateFlux"]).all() and m2["templateFlux_flag"].all()
    assert np.isnan(m2["scoreFlux"]).all()


def test_negative_source_and_detection_round_trip():
    rng = np.random.default_rng(3)
    shape = (64, 70)
    diff = rng.normal(size=shape) * 0.5
    add_point(diff, 33.3, 30.7, -500.0, 1.8, 17)
    m = measure(
        make_sources(33.0, 31.0, -1), difference=diff, difference_variance=np.full(shape, 0.25),
        psf_d_at=const_psf(1.8, 17),
    )  # fmt: skip
    assert m["isNegative"][0] and m["psfFlux"][0] < 0 and m["snr"][0] < 0
    assert abs(m["psfFlux"][0] + 500) < 5 * m["psfFluxErr"][0]
    assert abs(m["x"][0] - 33.3) < 5 * m["xErr"][0] and abs(m["y"][0] - 30.7) < 5 * m["yErr"][0]
    assert not m["shape_flag"][0] and abs(m["ixx"][0] / m["ixxPSF"][0] - 1) < 0.15


def test_centroid_failure_keeps_detection_position():
    shape = (40, 40)
    diff = np.zeros(shape)
    add_point(diff, 20.0, 20.0, 500.0, 1.5, 15)
    common = {
        "difference": diff,
        "difference_variance": np.ones(shape),
        "psf_d_at": const_psf(1.5, 15),
    }
    m = measure(make_sources(21.2, 20.0, 1), centroid_bound=0.5, **common)[0]
    assert m["centroid_flag"] and (m["x"], m["y"]) == (21.2, 20.0)
    assert np.isnan(m["xErr"]) and np.isnan(m["yErr"])
    assert np.isfinite(m["psfFlux"])  # still measured, at the detection position
    ok = measure(make_sources(21.2, 20.0, 1), **common)[0]
    assert not ok["centroid_flag"] and abs(ok["x"] - 20.0) < 1e-3 and abs(ok["psfFlux"] - 500) < 0.5


def test_sources_at_edges_are_flagged_not_crashing():
    rng = np.random.default_rng(8)
    shape = (50, 60)
    diff = rng.normal(size=shape)
    pos = [(0.2, 25.0), (59.4, 10.0), (30.0, 0.0), (1.0, 49.3), (58.7, 48.9), (30.0, 25.0)]
    for x, y in pos:
        add_point(diff, x, y, 400.0, 1.5, 15)
    src = make_sources([p[0] for p in pos], [p[1] for p in pos], 1)
    m = measure(
        src, difference=diff, difference_variance=np.ones(shape), psf_d_at=const_psf(1.5, 15)
    )
    edge = np.array([True] * 5 + [False])
    np.testing.assert_array_equal(m["psfFlux_flag_edge"], edge)
    np.testing.assert_array_equal(m["psfFlux_flag"], edge)
    np.testing.assert_array_equal(m["apFlux_flag_apertureTruncated"], edge)
    # The footprint runs off the image: pixelFlags_edge (LSST: the source touches the edge).
    np.testing.assert_array_equal(m["pixelFlags_edge"], edge)
    np.testing.assert_array_equal(m["pixelFlags"], edge)
    assert np.all(np.isfinite(m["psfFlux"])) and np.all(m["psfNdata"][:5] < 225)
    assert np.all(np.abs(m["psfFlux"] - 400) < 6 * m["psfFluxErr"])
    assert not m["pixelFlags_offimage"].any()
    # Off the image entirely: no pixels, every algorithm flagged, nothing raised.
    far = measure(
        make_sources(-30.0, 10.0, 1),
        difference=diff,
        difference_variance=np.ones(shape),
        psf_d_at=const_psf(1.5, 15),
    )
    assert far["centroid_flag"][0] and far["psfFlux_flag_noGoodPixels"][0] and far["shape_flag"][0]
    assert far["pixelFlags_offimage"][0] and far["pixelFlags_edge"][0] and far["pixelFlags"][0]
    assert far["apFlux_flag"][0] and np.isnan(far["apFlux"][0])


def test_pixel_flags_exact():
    shape = (60, 60)
    diff = np.zeros(shape)
    add_point(diff, 30.0, 30.0, 1000.0, 1.5, 15)
    # STREAK is not an afw default plane: the pipeline adds it (stream/pipeline/streaks.py).
    planes = with_planes(DEFAULT_PLANES, ("STREAK",))
    src = make_sources(30.0, 30.0, 1, bbox=np.array([[27, 33, 26, 34]]))

    def run(mask):
        return measure(
            src, difference=diff, difference_variance=np.ones(shape), psf_d_at=const_psf(1.5, 15),
            mask=mask, mask_planes=planes, bad_mask_planes=(),
        )[0]  # fmt: skip

    clean = run(np.zeros(shape, np.int32))
    assert clean["bboxSize"] == 15  # PSF stamp (15) contains the footprint box
    assert not any(clean[f"pixelFlags_{s}"] for s in PIXEL_FLAG_PLANES) and not clean["pixelFlags"]
    for suffix, (plane, has_centre) in PIXEL_FLAG_PLANES.items():
        bit = np.int32(1 << planes[plane])
        for (j, i), in_box, in_centre in (
            ((31, 29), True, True),  # 3x3 around the centre
            ((37, 23), True, False),  # corner of the 15x15 box
            ((38, 30), False, False),  # just outside the box
            ((30, 23), True, False),  # left edge of the box
            ((30, 22), False, False),
        ):
            mask = np.zeros(shape, np.int32)
            mask[j, i] = bit
            r = run(mask)
            assert r[f"pixelFlags_{suffix}"] == in_box, (suffix, j, i)
            assert r["pixelFlags"] == in_box
            if has_centre:
                assert r[f"pixelFlags_{suffix}Center"] == in_centre, (suffix, j, i)
            others = [s for s in PIXEL_FLAG_PLANES if s != suffix]
            assert not any(r[f"pixelFlags_{s}"] for s in others)
    # A footprint larger than the PSF stamp sets bboxSize.
    big = make_sources(30.0, 30.0, 1, bbox=np.array([[18, 40, 28, 32]]))
    r = measure(
        big, difference=diff, difference_variance=np.ones(shape), psf_d_at=const_psf(1.5, 15)
    )
    assert r["bboxSize"][0] == 2 * 12 + 1


def test_bad_mask_planes_are_not_fitted():
    shape = (40, 40)
    diff = np.zeros(shape)
    add_point(diff, 20, 20, 100.0, 1.5, 15)
    mask = np.zeros(shape, np.int32)
    mask[20, 20] = 1 << DEFAULT_PLANES["CR"]
    diff[20, 20] = 1e6  # a cosmic ray: ignored because CR is an unusable plane
    m = measure(
        make_sources(20.0, 20.0, 1), difference=diff, difference_variance=np.ones(shape),
        psf_d_at=const_psf(1.5, 15), mask=mask,
    )[0]  # fmt: skip
    assert m["psfNdata"] == 224 and abs(m["psfFlux"] - 100) < 1e-3
    # sep rescales by the unmasked area, which cannot restore a masked core: flagged.
    assert m["apFlux_flag"] and not m["apFlux_flag_apertureTruncated"]
    assert 85 < m["apFlux"] < 100
    assert m["pixelFlags_cr"] and m["pixelFlags_crCenter"]


def test_empty_sources():
    m = measure(
        np.zeros(0, SOURCE_DTYPE),
        difference=np.zeros((5, 5)),
        difference_variance=np.ones((5, 5)),
        psf_d_at=const_psf(1.0, 5),
    )
    assert m.dtype == MEASURE_DTYPE and m.shape == (0,)


# --- input checks ------------------------------------------------------------------------


def _call(**over):
    shape = (20, 20)
    kw = {
        "difference": np.zeros(shape),
        "difference_variance": np.ones(shape),
        "psf_d_at": const_psf(1.0, 5),
    }
    src = over.pop("sources", make_sources(10.0, 10.0, 1))
    kw.update(over)
    return measure(src, **kw)


def test_checks():
    with pytest.raises(TypeError, match="sources must be a 1-D structured array"):
        _call(sources=np.zeros(3))
    with pytest.raises(TypeError, match=r"sources lacks fields \['bbox'\]"):
        _call(sources=np.zeros(1, dtype=[("x", float), ("y", float), ("sign", int)]))
    flat = np.zeros(1, dtype=[("x", float), ("y", float), ("sign", int), ("bbox", int)])
    with pytest.raises(TypeError, match=r"sources\['bbox'\] must hold 4 values"):
        _call(sources=flat)
    bad = make_sources(10.0, 10.0, 1)
    bad["x"] = np.nan
    with pytest.raises(ValueError, match="sources x, y must be finite"):
        _call(sources=bad)
    with pytest.raises(
        TypeError, match="difference must be a float32 or float64 ndarray, got int64"
    ):
        _call(difference=np.zeros((20, 20), np.int64))
    with pytest.raises(
        ValueError,
        match=r"difference_variance shape \(20, 21\) differs from difference shape",
    ):
        _call(difference_variance=np.ones((20, 21)))
    with pytest.raises(ValueError, match=r"difference must be 2-D, got shape \(20,\)"):
        _call(difference=np.zeros(20), difference_variance=np.ones(20))
    with pytest.raises(TypeError, match="psf_d_at must be callable"):
        _call(psf_d_at=np.ones((5, 5)))
    with pytest.raises(ValueError, match="flux and flux_variance must be given together"):
        _call(flux=np.zeros((20, 20)))
    with pytest.raises(ValueError, match=r"flux_variance must be shape \(20, 20\)"):
        _call(flux=np.zeros((20, 20)), flux_variance=np.zeros((3, 3)))
    with pytest.raises(
        ValueError, match="science, science_variance and psf_science_at must be given together"
    ):
        _call(science=np.zeros((20, 20)))
    with pytest.raises(
        ValueError, match=r"psf_science_at\(10.00, 10.00\) must have a positive sum"
    ):
        _call(
            science=np.zeros((20, 20)),
            science_variance=np.ones((20, 20)),
            psf_science_at=lambda x, y: -np.ones((3, 3)),
        )
    with pytest.raises(TypeError, match="psf_template_at must be callable"):
        _call(template=np.zeros((20, 20)), template_variance=np.ones((20, 20)), psf_template_at=3)
    with pytest.raises(TypeError, match="mask must be an integer ndarray, got float64"):
        _call(mask=np.zeros((20, 20)))
    with pytest.raises(ValueError, match=r"mask must have shape \(20, 20\)"):
        _call(mask=np.zeros((2, 2), np.int32))
    for planes in ({"BAD": 40}, {"BAD": True}, {0: 1}, [("BAD", 0)]):
        with pytest.raises(TypeError, match="mask_planes must map plane names to bits"):
            _call(mask_planes=planes)
    assert _call(mask_planes={"BAD": np.int64(0)}).shape == (1,)
    for value in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="ap_radius must be a finite number > 0"):
            _call(ap_radius=value)
    with pytest.raises(ValueError, match="centroid_bound must be a finite number > 0"):
        _call(centroid_bound=0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        _call(max_iter=0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        _call(workers=0)
    with pytest.raises(TypeError, match="workers must be an int or None"):
        _call(workers=1.5)
    with pytest.raises(TypeError, match="bad_mask_planes must be a sequence of plane names"):
        _call(bad_mask_planes="CR")
    with pytest.raises(TypeError, match="bad_mask_planes must be plane names"):
        _call(bad_mask_planes=(1,))
    with pytest.raises(
        ValueError, match=r"psf_d_at\(10.00, 10.00\) must return a square stamp of odd size"
    ):
        _call(psf_d_at=lambda x, y: np.ones((4, 4)))
    with pytest.raises(ValueError, match="returned non-finite pixels"):
        _call(psf_d_at=lambda x, y: np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="must have a positive sum, got 0"):
        _call(psf_d_at=lambda x, y: np.zeros((3, 3)))


def test_mixed_dtypes_and_ap_radius():
    shape = (40, 40)
    diff = np.zeros(shape, np.float32)
    add_point(diff, 20.2, 19.9, 100.0, 1.5, 15)
    m32 = _call(
        sources=make_sources(20.0, 20.0, 1),
        difference=diff,
        difference_variance=np.ones(shape),
        psf_d_at=const_psf(1.5, 15),
        ap_radius=3.0,
    )
    m64 = _call(
        sources=make_sources(20.0, 20.0, 1),
        difference=diff.astype(np.float64),
        difference_variance=np.ones(shape),
        psf_d_at=const_psf(1.5, 15),
        ap_radius=3.0,
    )
    assert m32["apRadius"][0] == 3.0
    np.testing.assert_allclose(m32["psfFlux"], m64["psfFlux"], rtol=1e-6)
    np.testing.assert_allclose(m32["apFlux"], m64["apFlux"], rtol=1e-6)
    # Exact overlap (sep, subpix=0) against a 64 x 64 super-sampled circle.
    ref, ref_err = aperture_reference(diff, np.ones(shape), m32["x"][0], m32["y"][0], 3.0)
    np.testing.assert_allclose(m32["apFlux"][0], ref, rtol=1e-3)
    np.testing.assert_allclose(m32["apFluxErr"][0], ref_err, rtol=1e-3)


def test_aperture_flux_with_a_precomputed_bad_map():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(50, 60))
    var = np.ones_like(img)
    var[10, 12] = 0.0
    mask = np.zeros(img.shape, np.int32)
    mask[20, 30] = 4
    xs, ys, r = np.array([12.0, 30.2, 3.0]), np.array([10.0, 20.1, 48.0]), np.full(3, 4.0)
    own = aperture_flux(img, var, mask, 4, xs, ys, r)
    bad = unusable_map(mask, 4, img, var)
    assert bad[10, 12] and bad[20, 30] and bad.sum() == 2
    given = aperture_flux(img, var, mask, 4, xs, ys, r, bad=bad)
    for a, b in zip(own, given, strict=True):
        np.testing.assert_array_equal(a, b)
    assert given[3][:2].all() and given[2][2]  # masked pixels seen; the third is truncated
    with pytest.raises(ValueError, match="bad must be a bool array of the image's shape"):
        aperture_flux(img, var, mask, 4, xs, ys, r, bad=bad[:-1])


@pytest.mark.parametrize("seed", range(3))
def test_aperture_flux_around_its_apertures_equals_the_full_map(seed):
    """The map made only around the apertures (unusable_map(near=...)) gives sep's sums,
    errors and flags bit for bit as the full-frame map does: every pixel sep reads is in a
    window.  Many masked and non-finite pixels, apertures over edges and corners, radii from
    sub-pixel to large, and circles sep does not sum (NaN)."""
    rng = np.random.default_rng(seed)
    shape = (70, 90)
    img = rng.normal(size=shape)
    var = rng.uniform(0.5, 2.0, shape)
    mask = np.where(rng.random(shape) < 0.1, 4, 0).astype(np.int32)
    img[rng.random(shape) < 0.03] = np.nan
    var[rng.random(shape) < 0.03] = 0.0
    n = 300
    xs = rng.uniform(-6, shape[1] + 5, n)
    ys = rng.uniform(-6, shape[0] + 5, n)
    r = rng.uniform(0.3, 9.0, n)
    xs[:3] = [np.nan, 5.0, np.inf]
    ys[3] = np.nan
    r[4] = np.nan
    full = aperture_flux(img, var, mask, 4, xs, ys, r, bad=unusable_map(mask, 4, img, var))
    near = aperture_flux(img, var, mask, 4, xs, ys, r)
    for a, b in zip(full, near, strict=True):
        np.testing.assert_array_equal(a, b)
    assert near[3].sum() > n // 2  # most apertures did see masked pixels
    windowed = unusable_map(mask, 4, img, var, near=(xs[:20], ys[:20], r[:20]))
    assert 0 < windowed.sum() < unusable_map(mask, 4, img, var).sum()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_psf_model_stack_equals_at(degree):
    rng = np.random.default_rng(degree)
    nterms = (degree + 1) * (degree + 2) // 2
    basis = np.stack([gaussian_psf(1.5, 15)] + [0.01 * rng.normal(size=(15, 15))] * (nterms - 1))
    model = PsfModel(basis=basis, degree=degree, shape=(300, 400))
    xs, ys = rng.uniform(-5, 405, 40), rng.uniform(-5, 305, 40)
    cube = model.stack(xs, ys)
    assert cube.shape == (40, 15, 15)
    for n in range(40):
        np.testing.assert_allclose(cube[n], model.at(xs[n], ys[n]), rtol=1e-13, atol=1e-16)


def test_psf_model_stack_falls_back_like_at():
    # A polynomial whose sum is not positive somewhere: the constant term there, as at().
    basis = np.stack([gaussian_psf(1.5, 9), -2.0 * gaussian_psf(1.5, 9), np.zeros((9, 9))])
    model = PsfModel(basis=basis, degree=1, shape=(100, 100))
    xs, ys = np.array([0.0, 99.0]), np.array([50.0, 50.0])  # u = -1 (sum 3), u = +1 (sum -1)
    cube = model.stack(xs, ys)
    for n in range(2):
        np.testing.assert_allclose(cube[n], model.at(xs[n], ys[n]), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(cube[1], gaussian_psf(1.5, 9) / gaussian_psf(1.5, 9).sum())


def test_stack_psfs_paths_agree_and_check():
    model = PsfModel(basis=np.stack([gaussian_psf(1.5, 11), 0.1 * gaussian_psf(2.5, 11),
                                     np.zeros((11, 11))]), degree=1, shape=(200, 200))  # fmt: skip
    xs, ys = np.array([10.0, 150.0, 199.0]), np.array([5.0, 100.0, 0.0])
    fast, halves = stack_psfs(model.at, xs, ys, "psf_science_at")
    slow, halves2 = stack_psfs(lambda x, y: model.at(x, y), xs, ys, "psf_science_at")
    np.testing.assert_allclose(fast, slow, rtol=1e-13, atol=1e-16)
    np.testing.assert_array_equal(halves, halves2)
    # A callable returning one array object for many positions (ZOGY's per-tile psf_d):
    # checked and normalised once, the same cube.
    tiles = {0: 3.0 * gaussian_psf(1.2, 9), 1: gaussian_psf(2.0, 13)}
    cube, h = stack_psfs(lambda x, y: tiles[int(x >= 100)], xs, ys, "psf_d_at")
    assert cube.shape == (3, 13, 13) and h.tolist() == [4, 6, 6]
    np.testing.assert_allclose(cube.sum(axis=(1, 2)), 1.0)
    bad = PsfModel(basis=np.full((1, 5, 5), np.nan), degree=0, shape=(50, 50))
    with pytest.raises(ValueError, match=r"psf_x\(10.00, 5.00\) returned non-finite pixels"):
        stack_psfs(bad.at, xs, ys, "psf_x")
