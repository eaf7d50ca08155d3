"""The trailed-source kernel against obviously-correct NumPy references (issue 15).

* model: a Gaussian convolved with a segment, by brute force (the mean of 4001 Gaussians
  along the segment), against the kernel's erf form, for lengths from 0 to 40 px, through the
  small-L series branch;
* Jacobian: central finite differences of that NumPy reference;
* chi^2 and its normal equations over a window with masked and NaN pixels: NumPy sums;
* the fit: noise-free trails come back to 1e-4, both dtypes, odd shapes; a point source
  gives L ~ 0; the edge flag; input checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffstream.jitcore._kernels import trails as _k
from diffstream.jitcore.detect import SOURCE_DTYPE
from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.jitcore.psf import gaussian_psf
from diffstream.jitcore.trails import fit_trails, gaussian_sigma


def ref_model(x, y, f, xc, yc, length, theta, sigma, n=4001):
    """Mean of n Gaussians (unit integral) spaced evenly along the segment."""
    t = (np.arange(n) + 0.5) / n - 0.5
    px = xc + length * t * math.cos(theta)
    py = yc + length * t * math.sin(theta)
    x = np.asarray(x, float)[..., None]
    y = np.asarray(y, float)[..., None]
    g = np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    return f * g.mean(axis=-1)


def kernel_model(x, y, par, sigma, want_grad=False):
    grad = np.empty(_k.NPAR)
    v = _k.trail_model(float(x), float(y), *par, sigma, grad, want_grad)
    return v, grad.copy()


@pytest.mark.parametrize("length", [0.0, 1e-4, 0.01, 0.5, 3.0, 12.0, 40.0])
@pytest.mark.parametrize("sigma", [0.9, 1.7])
def test_model_matches_brute_force_convolution(length, sigma):
    rng = np.random.default_rng(int(length * 100) + int(sigma * 10))
    par = (1000.0, 0.3, -0.2, length, rng.uniform(0, math.pi))
    pts = rng.uniform(-25, 25, (200, 2))
    got = np.array([kernel_model(x, y, par, sigma)[0] for x, y in pts])
    want = ref_model(pts[:, 0], pts[:, 1], *par, sigma)
    # The midpoint rule of 4001 nodes is good to ~(L / 4001 sigma)^2.
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-9 * par[0])


@pytest.mark.parametrize("length", [0.005, 0.8, 6.0, 25.0])
def test_jacobian_matches_finite_differences(length):
    rng = np.random.default_rng(7)
    sigma = 1.3
    par = np.array([500.0, 0.4, 0.1, length, 1.1])
    steps = np.array([1e-3, 1e-4, 1e-4, 1e-4, 1e-5])
    for x, y in rng.uniform(-12, 12, (40, 2)):
        _, grad = kernel_model(x, y, par, sigma, True)
        for p in range(_k.NPAR):
            hi, lo = par.copy(), par.copy()
            hi[p] += steps[p]
            lo[p] -= steps[p]
            num = ref_model(x, y, *hi, sigma, n=20001) - ref_model(x, y, *lo, sigma, n=20001)
            num /= 2 * steps[p]
            scale = 500.0 / sigma**3 * 1e-4 + 1e-3 * abs(num)
            assert abs(grad[p] - num) < scale, (p, grad[p], num)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chi2_and_normal_equations_match_numpy(dtype):
    rng = np.random.default_rng(3)
    ny, nx = 23, 31
    img = rng.normal(0, 5, (ny, nx)).astype(dtype)
    var = rng.uniform(20, 30, (ny, nx)).astype(dtype)
    mask = np.zeros((ny, nx), np.int32)
    mask[5, 7] = 1 << DEFAULT_PLANES["BAD"]
    img[9, 3] = np.nan
    box = np.array([2, 28, 1, 20], np.int64)
    par = np.array([300.0, 15.2, 10.7, 9.0, 0.6])
    sigma = 1.4
    nmat = np.empty((5, 5))
    rhs = np.empty(5)
    grad = np.empty(5)
    chi2, ngood = _k.trail_chi2(img, var, mask, np.int64(1 << DEFAULT_PLANES["BAD"]), box, par,
                                sigma, nmat, rhs, grad, True)  # fmt: skip
    want_c, want_n, n_good = 0.0, np.zeros((5, 5)), 0
    want_r = np.zeros(5)
    for j in range(box[2], box[3] + 1):
        for i in range(box[0], box[1] + 1):
            if mask[j, i] or not np.isfinite(img[j, i]):
                continue
            n_good += 1
            m, g = kernel_model(i, j, par, sigma, True)
            w = 1.0 / float(var[j, i])
            r = float(img[j, i]) - m
            want_c += w * r * r
            want_n += w * np.outer(g, g)
            want_r += w * g * r
    assert ngood == n_good
    np.testing.assert_allclose(chi2, want_c, rtol=1e-10)
    np.testing.assert_allclose(nmat, want_n, rtol=1e-10)
    np.testing.assert_allclose(rhs, want_r, rtol=1e-9, atol=1e-12)
    # The fit's retries take chi^2 without the gradient and accept on it: it must be the
    # same number bit for bit, or the fit would depend on which pass gave it.
    for length in (9.0, 0.001):
        par[3] = length
        full = _k.trail_chi2(img, var, mask, np.int64(1 << DEFAULT_PLANES["BAD"]), box, par,
                             sigma, nmat, rhs, grad, True)  # fmt: skip
        alone = _k.trail_chi2(img, var, mask, np.int64(1 << DEFAULT_PLANES["BAD"]), box, par,
                              sigma, nmat, rhs, grad, False)  # fmt: skip
        assert alone == full


def _scene(shape, specs, sigma, dtype, noise=0.0, seed=0):
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    img = np.zeros(shape)
    for f, x, y, length, ang in specs:
        # Only the window that holds the trail (+- 8 sigma): the rest is below 1e-14 of it.
        r = int(0.5 * length + 8 * sigma) + 1
        win = (slice(max(int(y) - r, 0), int(y) + r + 1), slice(max(int(x) - r, 0), int(x) + r + 1))
        img[win] += ref_model(xx[win], yy[win], f, x, y, length, math.radians(ang), sigma, n=801)
    var = np.full(shape, max(noise, 1.0) ** 2)
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, shape)
    src = np.zeros(len(specs), dtype=SOURCE_DTYPE)
    rows = np.zeros(len(specs), dtype=[("x", "f8"), ("y", "f8")])
    for k, (_, x, y, length, ang) in enumerate(specs):
        th = math.radians(ang)
        hx, hy = abs(0.5 * length * math.cos(th)), abs(0.5 * length * math.sin(th))
        src[k]["bbox"] = (int(x - hx - 2), int(x + hx + 2), int(y - hy - 2), int(y + hy + 2))
        src[k]["x"], src[k]["y"], src[k]["sign"] = x, y, 1 if f > 0 else -1
        rows[k] = (x + 0.7, y - 0.4)  # the PSF centroid of a trail is near, not at, its centre
    return img.astype(dtype), var.astype(dtype), src, rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_free_trails_come_back(dtype):
    sigma = 1.5
    specs = [(5e4, 30.3, 40.6, 12.0, 33.0), (-3e4, 80.1, 35.2, 25.0, 151.0),
             (4e4, 50.0, 95.0, 6.0, 90.0), (2e4, 95.4, 90.7, 0.0, 0.0)]  # fmt: skip
    psf = gaussian_psf(sigma, 25)
    # The scene in the model's own terms: a point-sampled Gaussian of the PSF's best sigma.
    img, var, src, rows = _scene((121, 127), specs, gaussian_sigma(psf[None])[0], dtype)
    out = fit_trails(src, rows, img, var, lambda x, y: psf)
    assert not out["trail_flag"].any() and not out["trail_flag_edge"].any()
    for (f, x, y, length, ang), o in zip(specs, out, strict=True):
        tol = 3e-3 if dtype == np.float32 else 1e-3
        assert abs(o["trailFlux"] / f - 1) < tol
        assert abs(o["trailX"] - x) < tol and abs(o["trailY"] - y) < tol
        if length:
            assert abs(o["trailLength"] - length) < 10 * tol * max(length, 1)
            assert abs((o["trailAngle"] - ang + 90) % 180 - 90) < 0.05
        else:
            assert o["trailLength"] < 0.3  # the fit approaches L = 0 (a flat direction)
    assert (out["trailNdata"] > 0).all()


def test_noisy_errors_are_honest():
    """Pull of length and angle over 60 noisy realisations: std near 1."""
    sigma = 1.4
    pulls = []
    psf = gaussian_psf(sigma, 25)
    for seed in range(60):
        img, var, src, rows = _scene((61, 61), [(8e3, 30.2, 30.4, 14.0, 62.0)],
                                     gaussian_sigma(psf[None])[0], np.float64, noise=10.0,
                                     seed=seed)  # fmt: skip
        o = fit_trails(src, rows, img, var, lambda x, y: psf)[0]
        assert not o["trail_flag"]
        pulls.append(((o["trailLength"] - 14.0) / o["trailLengthErr"],
                      ((o["trailAngle"] - 62.0 + 90) % 180 - 90) / o["trailAngleErr"]))  # fmt: skip
    p = np.array(pulls)
    assert np.all(np.abs(p.mean(axis=0)) < 5 / math.sqrt(len(p)) * p.std(axis=0) + 0.1)
    assert np.all((0.75 < p.std(axis=0)) & (p.std(axis=0) < 1.3)), p.std(axis=0)


def test_edge_flag_when_the_trail_runs_off_the_image():
    sigma = 1.5
    img, var, src, rows = _scene((60, 60), [(5e4, 5.0, 30.0, 20.0, 0.0)], sigma, np.float64)
    out = fit_trails(src, rows, img, var, lambda x, y: gaussian_psf(sigma, 25))
    assert out["trail_flag_edge"][0]


def test_gaussian_sigma_of_a_gaussian_stamp():
    stamps = np.stack([gaussian_psf(s, 31) for s in (1.0, 1.6, 2.4)])
    # gaussian_psf is pixel-integrated: its best point-sampled Gaussian is sqrt(s^2 + 1/12).
    want = np.sqrt(np.array([1.0, 1.6, 2.4]) ** 2 + 1 / 12)
    np.testing.assert_allclose(gaussian_sigma(stamps), want, rtol=5e-3)


def test_gaussian_sigma_of_repeated_stamps_is_that_of_each():
    """Repeated stamps (one PSF_D per ZOGY tile) are measured once: the same values, bit for
    bit, as each stamp measured on its own and as a stack without repeats."""
    rng = np.random.default_rng(3)
    base = np.stack([gaussian_psf(s, 21) * (1 + 0.05 * rng.random((21, 21)))
                     for s in (1.1, 1.7, 2.2, 2.9)])  # fmt: skip
    base /= base.sum(axis=(1, 2))[:, None, None]
    pick = rng.integers(0, 4, 50)
    got = gaussian_sigma(base[pick])
    alone = np.array([gaussian_sigma(b[None])[0] for b in base])
    np.testing.assert_array_equal(got, alone[pick])
    np.testing.assert_array_equal(gaussian_sigma(base), alone)


def test_input_checks():
    img, var, src, rows = _scene((40, 40), [(1e3, 20.0, 20.0, 5.0, 10.0)], 1.5, np.float64)
    psf = lambda x, y: gaussian_psf(1.5, 15)  # noqa: E731
    with pytest.raises(ValueError, match="margin_sigma must be"):
        fit_trails(src, rows, img, var, psf, margin_sigma=0)
    with pytest.raises(ValueError, match="max_iter must be"):
        fit_trails(src, rows, img, var, psf, max_iter=0)
    with pytest.raises(ValueError, match="rows has 0 entries"):
        fit_trails(src, rows[:0], img, var, psf)
    with pytest.raises(TypeError, match="rows must be"):
        fit_trails(src, np.zeros(1), img, var, psf)
    with pytest.raises(ValueError, match="difference_variance"):
        fit_trails(src, rows, img, var[:-1], psf)


def test_threads_give_the_same_rows():
    """workers=2 splits the sources into chunks on two threads: the same rows, same order."""
    rng = np.random.default_rng(5)
    specs = [(3e3, 20.0 + 40 * (k % 12), 20.0 + 40 * (k // 12), rng.uniform(0, 15),
              rng.uniform(0, 180)) for k in range(144)]  # fmt: skip
    sigma = 1.5
    psf = gaussian_psf(sigma, 25)
    img, var, src, rows = _scene((500, 500), specs, gaussian_sigma(psf[None])[0], np.float32,
                                 noise=5.0, seed=1)  # fmt: skip
    one = fit_trails(src, rows, img, var, lambda x, y: psf)
    two = fit_trails(src, rows, img, var, lambda x, y: psf, workers=2)
    np.testing.assert_array_equal(one, two)
    with pytest.raises(ValueError, match="workers"):
        fit_trails(src, rows, img, var, lambda x, y: psf, workers=0)
