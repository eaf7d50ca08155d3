"""diffstream.jitcore.stampstats against the obviously-correct NumPy formulation (one source
at a time, array operations), both dtypes, odd shapes, stamps cut by the edges, unusable
pixels, negative sources; and its input checks."""

from __future__ import annotations

import numpy as np
import pytest

from diffstream.jitcore.stampstats import STAMP_STATS, stamp_stats


def ref_stats(img_all, var_all, xs, ys, sigmas, negative, psf_flux, core=2.0, outer=3.0,
              max_half=15):  # fmt: skip
    out = {k: np.full(len(xs), np.nan) for k in STAMP_STATS}
    ny, nx = img_all.shape
    for i, (x, y, sigma) in enumerate(zip(xs, ys, sigmas, strict=True)):
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(sigma) and sigma > 0):
            continue
        half = int(min(max_half, max(2, np.ceil(outer * sigma))))
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        y0, y1 = max(cy - half, 0), min(cy + half + 1, ny)
        x0, x1 = max(cx - half, 0), min(cx + half + 1, nx)
        if y1 <= y0 or x1 <= x0:
            continue
        img = np.asarray(img_all[y0:y1, x0:x1], dtype=np.float64)
        var = np.asarray(var_all[y0:y1, x0:x1], dtype=np.float64)
        good = np.isfinite(img) & np.isfinite(var) & (var > 0)
        out["badPixelFraction"][i] = 1.0 - good.mean()
        sign = -1.0 if negative[i] else 1.0
        z = np.zeros_like(img)
        z[good] = sign * img[good] / np.sqrt(var[good])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - x, yy - y)
        in_core = good & (r <= core * sigma)
        in_outer = good & (r <= outer * sigma)
        if in_core.any():
            out["negFraction"][i] = float((z[in_core] < -2.0).mean())
        pos = z[in_outer & (z > 0)].sum()
        if pos > 0:
            out["oppositeFluxRatio"][i] = float(-z[in_outer & (z < 0)].sum() / pos)
        near = good & (r <= 1.5)
        if near.any() and np.isfinite(psf_flux[i]) and psf_flux[i] != 0:
            peak = float((sign * img[near]).max())
            out["peakConcentration"][i] = peak * 2.0 * np.pi * sigma**2 / abs(psf_flux[i])
    return out


def _scene(shape, n, dtype, seed):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    img = rng.normal(0.0, 3.0, shape)
    var = rng.uniform(5.0, 15.0, shape)
    xs = rng.uniform(-3, nx + 2, n)
    ys = rng.uniform(-3, ny + 2, n)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for x, y in zip(xs, ys, strict=True):
        img += rng.uniform(-200, 400) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.6**2))
    img[rng.random(shape) < 0.02] = np.nan
    var[rng.random(shape) < 0.01] = 0.0
    var[rng.random(shape) < 0.01] = np.inf
    sigmas = rng.uniform(0.5, 7.0, n)  # up to past max_half's cap
    sigmas[::13] = np.nan
    sigmas[5::17] = -1.0
    xs[7::19] = np.nan
    negative = rng.random(n) < 0.4
    psf_flux = rng.normal(0, 300, n)
    psf_flux[3::11] = 0.0
    return img.astype(dtype), var.astype(dtype), xs, ys, sigmas, negative, psf_flux


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "seed"), [((61, 47), 1), ((9, 130), 2), ((37, 37), 3)])
def test_matches_numpy_reference(dtype, shape, seed):
    args = _scene(shape, 60, dtype, seed)
    got = stamp_stats(*args)
    want = ref_stats(*args)
    for name in STAMP_STATS:
        # Sums in pixel order against NumPy's pairwise ones: the last bits may differ.
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=0, err_msg=name)
        assert np.array_equal(np.isnan(got[name]), np.isnan(want[name])), name
    assert np.isfinite(got["oppositeFluxRatio"]).sum() > 20  # the scene exercises the sums


def test_other_radii_match_the_reference():
    args = _scene((50, 50), 30, np.float64, 4)
    got = stamp_stats(*args, core_sigmas=1.0, outer_sigmas=4.5, max_half=6)
    want = ref_stats(*args, core=1.0, outer=4.5, max_half=6)
    for name in STAMP_STATS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=0, err_msg=name)


def test_no_sources():
    img = np.zeros((5, 5))
    got = stamp_stats(img, img + 1, [], [], [], np.zeros(0, bool), [])
    assert all(v.shape == (0,) for v in got.values())


def test_input_checks():
    img = np.zeros((5, 5))
    ok = (img, img + 1, [1.0], [1.0], [1.0], [False], [1.0])
    with pytest.raises(TypeError, match="image must be a float32 or float64"):
        stamp_stats(img.astype(int), *ok[1:])
    with pytest.raises(ValueError, match="y must be 1-D of length 1"):
        stamp_stats(img, img, [1.0], [1.0, 2.0], [1.0], [False], [1.0])
    with pytest.raises(ValueError, match="negative must be 1 booleans"):
        stamp_stats(img, img, [1.0], [1.0], [1.0], [0.5], [1.0])
    with pytest.raises(ValueError, match="outer_sigmas must be a finite number > 0"):
        stamp_stats(*ok, outer_sigmas=0.0)
    with pytest.raises(ValueError, match="max_half must be an int >= 2"):
        stamp_stats(*ok, max_half=1)
