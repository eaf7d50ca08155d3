"""diffstream.jitcore.detect: thresholding the ZOGY score, both polarities, sub-pixel peaks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import fft, ndimage
from scipy.special import erfc

from diffstream.jitcore._kernels.measure import refine_peaks
from diffstream.jitcore.detect import SOURCE_DTYPE, _footprints, _footprints_sep, detect
from diffstream.jitcore.labels import _MIN_RUNS
from diffstream.jitcore.psf import gaussian_psf
from tests.ec import ec_count, smoothness

pytestmark = pytest.mark.unit


# --- helpers -----------------------------------------------------------------------------


def correlate_periodic(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Cross-correlate with a centred stamp (the matched filter), periodic boundaries."""
    ker = np.zeros(image.shape)
    h = psf.shape[0] // 2
    ker[: psf.shape[0], : psf.shape[1]] = psf
    ker = np.roll(ker, (-h, -h), axis=(0, 1))
    return fft.irfft2(fft.rfft2(image) * np.conj(fft.rfft2(ker)), s=image.shape)


def score_from_difference(diff: np.ndarray, sigma_noise: float, psf: np.ndarray) -> np.ndarray:
    """Matched-filter score, N(0, 1) on white noise of std sigma_noise."""
    return correlate_periodic(diff, psf) / (sigma_noise * np.sqrt((psf**2).sum()))


def noise_score(rng, shape, psf_sigma) -> np.ndarray:
    """Pure-noise score: white noise filtered with the PSF and renormalised to unit variance."""
    psf = gaussian_psf(psf_sigma)
    return score_from_difference(rng.normal(size=shape), 1.0, psf).astype(np.float32)


def add_point(img, x, y, flux, psf_sigma, size):
    """Add a pixel-integrated Gaussian of total ``flux`` centred at (x, y)."""
    cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
    stamp = gaussian_psf(psf_sigma, size, dx=x - cx, dy=y - cy)
    h = size // 2
    img[cy - h : cy + h + 1, cx - h : cx + h + 1] += flux * stamp


def refine_reference(score, valid, px, py, sign):
    """NumPy reference of the 3x3 quadratic peak refinement."""
    out = np.column_stack([px, py]).astype(np.float64)
    ny, nx = score.shape
    gx, gy = np.meshgrid([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0])
    design = np.column_stack(
        [
            np.ones(9),
            gx.ravel(),
            gy.ravel(),
            gx.ravel() ** 2,
            gx.ravel() * gy.ravel(),
            gy.ravel() ** 2,
        ]
    )
    for n, (i, j, s) in enumerate(zip(px, py, sign, strict=True)):
        if not (1 <= i <= nx - 2 and 1 <= j <= ny - 2):
            continue
        z = s * score[j - 1 : j + 2, i - 1 : i + 2].astype(np.float64)
        if not (valid[j - 1 : j + 2, i - 1 : i + 2].all() and np.isfinite(z).all()):
            continue
        c = np.linalg.lstsq(design, z.ravel(), rcond=None)[0]
        hess = np.array([[2 * c[3], c[4]], [c[4], 2 * c[5]]])
        if hess[0, 0] < 0 and np.linalg.det(hess) > 0:
            d = np.linalg.solve(hess, -c[1:3])
        else:
            cxx = z[1, 0] - 2 * z[1, 1] + z[1, 2]
            cyy = z[0, 1] - 2 * z[1, 1] + z[2, 1]
            d = np.array(
                [
                    0.5 * (z[1, 0] - z[1, 2]) / cxx if cxx < 0 else 0.0,
                    0.5 * (z[0, 1] - z[2, 1]) / cyy if cyy < 0 else 0.0,
                ]
            )
        out[n] = [i + np.clip(d[0], -0.5, 0.5), j + np.clip(d[1], -0.5, 0.5)]
    return out


# --- kernel vs reference -----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([np.float32, np.float64]),
    st.integers(3, 17),
    st.integers(3, 19),
    st.integers(0, 2**32 - 1),
)
def test_refine_peaks_matches_reference(dtype, ny, nx, seed):
    rng = np.random.default_rng(seed)
    score = rng.normal(size=(ny, nx)).astype(dtype)
    valid = rng.random((ny, nx)) > 0.1
    n = 12
    px = rng.integers(0, nx, n).astype(np.int64)  # edges included
    py = rng.integers(0, ny, n).astype(np.int64)
    sign = rng.choice([-1.0, 1.0], n)
    out = np.empty((n, 2))
    refine_peaks(score, valid, px, py, sign, out)
    np.testing.assert_allclose(out, refine_reference(score, valid, px, py, sign), atol=1e-9)


def test_refine_peaks_recovers_quadratic_maximum():
    yy, xx = np.mgrid[0:9, 0:9].astype(float)
    x0, y0 = 4.3, 3.8
    score = 10 - 0.5 * (xx - x0) ** 2 - 0.3 * (yy - y0) ** 2 + 0.1 * (xx - x0) * (yy - y0)
    out = np.empty((1, 2))
    refine_peaks(score, np.ones(score.shape, bool), np.array([4]), np.array([4]), np.ones(1), out)
    np.testing.assert_allclose(out[0], [x0, y0], atol=1e-12)


# --- detect ------------------------------------------------------------------------------


def test_positive_negative_and_dipole_pairing():
    rng = np.random.default_rng(11)
    shape = (120, 150)
    diff = rng.normal(size=shape)
    add_point(diff, 30.3, 40.6, 400.0, 1.5, 15)  # isolated positive
    add_point(diff, 100.0, 80.2, -400.0, 1.5, 15)  # isolated negative
    add_point(diff, 60.0, 90.0, 300.0, 1.5, 15)  # dipole: lobes 4 px apart
    add_point(diff, 64.0, 90.0, -300.0, 1.5, 15)
    score = score_from_difference(diff, 1.0, gaussian_psf(1.5)).astype(np.float32)
    src = detect(score, np.ones(shape, bool))
    assert src.dtype == SOURCE_DTYPE
    assert len(src) == 4
    order = np.lexsort((src["peak_x"], src["peak_y"]))
    np.testing.assert_array_equal(order, np.arange(4))

    def nearest(x, y, sgn):
        d = np.hypot(src["x"] - x, src["y"] - y) + 1e9 * (src["sign"] != sgn)
        return int(np.argmin(d))

    pos, neg = src[nearest(30.3, 40.6, 1)], src[nearest(100, 80.2, -1)]
    assert np.hypot(pos["x"] - 30.3, pos["y"] - 40.6) < 0.3
    assert pos["peak_score"] > 5 and neg["peak_score"] < -5
    assert pos["adjacent_opposite"] == -1 and neg["adjacent_opposite"] == -1
    # The matched filter pushes the lobes of a dipole apart a little; they stay paired.
    ip, ineg = nearest(60, 90, 1), nearest(64, 90, -1)
    assert ip != ineg
    assert src["adjacent_opposite"][ip] == ineg and src["adjacent_opposite"][ineg] == ip
    # peak pixel is the extreme of sign * score in the footprint; bbox contains it
    for s in src:
        x0, x1, y0, y1 = s["bbox"]
        box = s["sign"] * score[y0 : y1 + 1, x0 : x1 + 1]
        j, i = np.unravel_index(np.argmax(box), box.shape)
        assert (i + x0, j + y0) == (s["peak_x"], s["peak_y"])
        assert s["peak_score"] == score[s["peak_y"], s["peak_x"]]
        assert s["npix"] >= 1 and abs(s["x"] - s["peak_x"]) <= 0.5
    # dipole_radius=0 pairs nothing
    assert np.all(detect(score, np.ones(shape, bool), dipole_radius=0)["adjacent_opposite"] == -1)


def test_noise_free_subpixel_peak_is_accurate():
    shape = (64, 64)
    for x0, y0 in [(30.0, 31.0), (30.25, 31.4), (29.5, 32.45)]:
        diff = np.zeros(shape)
        add_point(diff, x0, y0, 1000.0, 2.0, 19)
        score = score_from_difference(diff, 1.0, gaussian_psf(2.0))
        src = detect(score, np.ones(shape, bool))
        assert len(src) == 1
        np.testing.assert_allclose([src["x"][0], src["y"][0]], [x0, y0], atol=0.06)


def test_invalid_and_nonfinite_pixels_are_masked():
    rng = np.random.default_rng(5)
    shape = (80, 90)
    diff = rng.normal(size=shape)
    add_point(diff, 20, 20, 500.0, 1.5, 15)
    add_point(diff, 60, 50, 500.0, 1.5, 15)
    score = score_from_difference(diff, 1.0, gaussian_psf(1.5))
    valid = np.ones(shape, bool)
    valid[10:31, 10:31] = False
    score[45:56, 55:66] = np.nan  # non-finite -> invalid
    score[0, 0] = np.inf
    assert len(detect(score, valid)) == 0
    assert len(detect(score, np.ones(shape, bool))) == 1  # the one not covered by NaN


def test_min_area_and_empty():
    score = np.zeros((30, 40), np.float32)
    score[5, 5] = 9.0  # single pixel
    score[20:23, 20:23] = 7.0  # nine pixels
    valid = np.ones(score.shape, bool)
    assert len(detect(score, valid)) == 2
    src = detect(score, valid, min_area=4)
    assert len(src) == 1 and src["npix"][0] == 9
    np.testing.assert_array_equal(src["bbox"][0], [20, 22, 20, 22])
    empty = detect(np.zeros((10, 10)), np.ones((10, 10), bool))
    assert empty.dtype == SOURCE_DTYPE and empty.shape == (0,)


def test_deblend_splits_close_pair():
    shape = (60, 80)
    diff = np.zeros(shape)
    add_point(diff, 35, 30, 2000.0, 1.5, 15)
    add_point(diff, 42, 30, 2000.0, 1.5, 15)
    score = score_from_difference(diff, 1.0, gaussian_psf(1.5))
    valid = np.ones(shape, bool)
    assert len(detect(score, valid, threshold=3.0)) == 1
    assert len(detect(score, valid, threshold=3.0, deblend=True)) == 2


def test_sep_pixel_buffer_grows_on_demand():
    import sep

    before = sep.get_extract_pixstack()
    sep.set_extract_pixstack(300)
    try:
        score = np.zeros((100, 100), np.float32)
        score[20:80, 20:80] = 6.0  # 3600 active pixels
        src = detect(score, np.ones(score.shape, bool), deblend=True)  # sep's path
        assert len(src) == 1 and src["npix"][0] == 3600
        # jitcore.sources sizes the buffer for the call and puts the process-wide setting
        # back: another thread's extraction never runs with this call's buffer.
        assert sep.get_extract_pixstack() == 300
        src = detect(score, np.ones(score.shape, bool))
        assert len(src) == 1 and src["npix"][0] == 3600
    finally:
        sep.set_extract_pixstack(before)


# --- labeller vs sep ---------------------------------------------------------------------


def footprint_set(src):
    """What both paths must agree on, as a sorted list of tuples."""
    return sorted(
        (int(s["peak_x"]), int(s["peak_y"]), int(s["sign"]), int(s["npix"]), *s["bbox"].tolist())
        for s in src
    )


def scene(dtype):
    """Correlated noise, point sources of both signs (some at the edges and corners, some
    half under invalid pixels or NaNs), and hand-placed diagonal contacts; float scores, so
    no two pixels of a footprint tie (sep's tie order is its pixel list's, not raster)."""
    rng = np.random.default_rng(7)
    shape = (150, 170)
    diff = rng.normal(size=shape)
    psf = gaussian_psf(1.5, 15)
    for x, y, f in [
        (30.3, 40.6, 300.0), (100.0, 80.2, -300.0), (60.0, 90.0, 200.0), (63.5, 90.0, -200.0),
        (0.4, 70.0, 250.0), (169.2, 20.0, -250.0), (80.0, 0.3, 250.0), (120.0, 149.4, -250.0),
        (0.2, 0.3, 250.0), (168.8, 148.9, 250.0), (45.0, 120.0, 250.0), (140.0, 60.0, -250.0),
    ]:  # fmt: skip
        cx, cy = round(x), round(y)
        h = 7
        ys, xs = slice(max(cy - h, 0), cy + h + 1), slice(max(cx - h, 0), cx + h + 1)
        stamp = gaussian_psf(1.5, 15, dx=x - cx, dy=y - cy)
        sy0, sx0 = ys.start - (cy - h), xs.start - (cx - h)
        sub = stamp[sy0 : sy0 + diff[ys, xs].shape[0], sx0 : sx0 + diff[ys, xs].shape[1]]
        diff[ys, xs] += f * sub
    score = score_from_difference(diff, 1.0, psf)
    valid = np.ones(shape, bool)
    valid[115:125, 40:46] = False  # cuts the source at (45, 120)
    score[55:66, 140:143] = np.nan  # cuts the source at (140, 60)
    score[58, 145] = np.inf
    score[62, 136] = -np.inf
    # Diagonal-only contacts: one positive chain, one negative pair, and an opposite-sign
    # diagonal pair that must stay two sources.
    score[10:13, 130:140] = 0.0
    score[10, 130], score[11, 131], score[12, 132] = 6.0, 7.5, 6.5
    score[10, 135], score[11, 136] = -6.0, -8.0
    score[12, 138], score[11, 139] = 7.0, -7.0
    return score.astype(dtype), valid


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("threshold", "min_area"), [(5.0, 1), (3.0, 1), (3.0, 4)])
def test_labeller_matches_sep(dtype, threshold, min_area):
    score, valid = scene(dtype)
    new = _footprints(score, valid, threshold, min_area)
    old = _footprints_sep(score, valid, threshold, min_area, deblend=False)
    assert len(new) > 10
    assert footprint_set(new) == footprint_set(old)
    if min_area == 1:  # the diagonal contacts: three pixels joined, two, opposite signs apart
        got = {(s[0], s[1], s[2]): s[3] for s in footprint_set(new)}
        assert got[(131, 11, 1)] == 3 and got[(136, 11, -1)] == 2
        assert got[(138, 12, 1)] == 1 and got[(139, 11, -1)] == 1


def test_labeller_matches_sep_on_noise_with_holes():
    # Many small components near threshold: pure correlated noise at 2.5 sigma, 5 % of the
    # pixels invalid at random (footprints broken and rejoined around them).
    rng = np.random.default_rng(12)
    score = noise_score(rng, (256, 300), 1.2)
    valid = rng.random(score.shape) > 0.05
    new = _footprints(score, valid, 2.5, 1)
    assert len(new) > 200
    assert footprint_set(new) == footprint_set(_footprints_sep(score, valid, 2.5, 1, False))


def test_float64_threshold_is_compared_in_float32_like_sep():
    score = np.zeros((5, 5))
    score[1, 1] = 5.0 + 1e-12  # float32 rounds it to the threshold: not above, in both
    score[3, 3] = -(5.0 + 1e-12)
    valid = np.ones(score.shape, bool)
    assert len(_footprints_sep(score, valid, 5.0, 1, False)) == 0
    assert len(detect(score, valid)) == 0
    score[2, 2] = 5.0 + 1e-6
    assert footprint_set(detect(score, valid)) == [(2, 2, 1, 1, 2, 2, 2, 2)]


def test_run_table_grows_past_first_guess():
    # A checkerboard of opposite signs: every pixel a run of its own, far more runs than
    # the first table holds (_MIN_RUNS); 8-connected, each sign is one diagonal net.
    n = int(np.ceil(np.sqrt(4 * _MIN_RUNS)))
    yy, xx = np.mgrid[0:n, 0:n]
    # Distinct values (no tied peaks), all within 1e-3: sep's 32 sub-thresholds, which it
    # builds even without deblending, then see one component each (see the next test).
    jitter = np.random.default_rng(1).uniform(0.0, 1e-3, (n, n))
    score = np.where((xx + yy) % 2 == 0, 6.0, -6.0) + jitter
    valid = np.ones(score.shape, bool)
    src = _footprints(score, valid, 5.0, 1)
    assert n * n > _MIN_RUNS and len(src) == 2 and src["npix"].sum() == n * n
    assert footprint_set(src) == footprint_set(_footprints_sep(score, valid, 5.0, 1, False))


def test_labeller_has_no_sub_object_limit():
    # sep builds its deblending tree even with deblend_cont=1, and a large footprint that
    # falls apart into > sep.set_sub_object_limit() (1024) pieces at a higher sub-threshold
    # makes it raise (whether it does here depends on sep's process-wide buffers, which
    # other tests change, so only the labeller is asserted).  The labeller only labels.
    n = 128
    yy, xx = np.mgrid[0:n, 0:n]
    jitter = np.random.default_rng(1).uniform(0.0, 1.0, (n, n))
    score = np.where((xx + yy) % 2 == 0, 6.0, -6.0) + jitter
    valid = np.ones(score.shape, bool)
    src = _footprints(score, valid, 5.0, 1)
    assert len(src) == 2 and src["npix"].sum() == n * n


def test_noncontiguous_inputs():
    score, valid = scene(np.float32)
    ref = detect(score, valid)
    wide = np.zeros((score.shape[0], 2 * score.shape[1]), np.float32)
    wide[:, ::2] = score
    wvalid = np.zeros(wide.shape, bool)
    wvalid[:, ::2] = valid
    np.testing.assert_array_equal(detect(wide[:, ::2], wvalid[:, ::2]), ref)


def test_all_invalid_gives_empty():
    score, valid = scene(np.float64)
    for v, s in ((np.zeros_like(valid), score), (valid, np.full(score.shape, np.nan))):
        empty = detect(s, v)
        assert empty.dtype == SOURCE_DTYPE and empty.shape == (0,)


def test_peak_ties_go_to_first_pixel_in_raster_order():
    # Exact ties need constant patches (never seen in a real float score).  sep takes the
    # first pixel of its pixel list, which is raster order for this block but not for every
    # shape (see diffstream.jitcore.detect); the labeller's rule is raster order always.
    score = np.zeros((30, 40), np.float32)
    score[20:23, 20:24] = 7.0
    score[5:9, 3] = -6.0
    score[5, 3:9] = -6.0
    src = detect(score, np.ones(score.shape, bool))
    assert [(s["peak_x"], s["peak_y"]) for s in src] == [(3, 5), (20, 20)]


# --- statistics (seeded) -----------------------------------------------------------------


@pytest.mark.science
def test_false_detections_on_pure_noise():
    """Counts agree with connected components, pixel counts with Gaussian tails, and the
    number of excursions with the Euler-characteristic expectation of a smooth field."""
    rng = np.random.default_rng(2024)
    psf_sigma, nmap, shape = 2.0, 4, (1024, 1024)
    area = nmap * shape[0] * shape[1]
    counts = {3.0: 0, 3.5: 0, 5.0: 0}
    npix3 = 0
    labelled = 0
    for _ in range(nmap):
        score = noise_score(rng, shape, psf_sigma)
        valid = np.ones(shape, bool)
        for u in counts:
            src = detect(score, valid, threshold=u)
            counts[u] += len(src)
            if u == 3.0:
                npix3 += int(src["npix"].sum())
        for sgn in (1, -1):
            labelled += ndimage.label(sgn * score > 3.5, structure=np.ones((3, 3)))[1]
    assert counts[3.5] == labelled
    tail = erfc(3.0 / np.sqrt(2))  # P(|z| > 3), both polarities
    assert 0.9 < npix3 / (tail * area) < 1.1
    # EC density (Adler, tests/ec.py) with lambda = 1 / (2 sigma_eff^2) for a Gaussian PSF
    # (pixel integration adds 1/12); the smoothness measured from the field agrees.
    lam = 1.0 / (2.0 * (psf_sigma**2 + 1.0 / 12.0))
    assert smoothness(score, valid) == pytest.approx(lam, rel=0.03)

    def expected(u):
        return ec_count(area, lam, u)

    # The lattice misses excursions smaller than a pixel, so the count is a little below.
    assert 0.75 < counts[3.5] / expected(3.5) < 1.05
    # ~0.3 expected per Mpix at 5 sigma (both polarities) for this PSF; Poisson(1.2) > 8 has
    # probability ~1e-5.
    assert counts[5.0] <= 8


@pytest.mark.science
def test_completeness_well_above_threshold():
    rng = np.random.default_rng(77)
    psf_sigma, size = 1.5, 15
    psf = gaussian_psf(psf_sigma, size)
    shape = (512, 768)
    diff = rng.normal(size=shape)
    truth = []
    snr_peak = 8.0  # expected peak score: flux * sqrt(sum P^2) / sigma
    flux = snr_peak / np.sqrt((psf**2).sum())
    for y in range(24, shape[0] - 20, 32):
        for x in range(24, shape[1] - 20, 32):
            xs, ys = x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)
            sgn = rng.choice([-1, 1])
            add_point(diff, xs, ys, sgn * flux, psf_sigma, size)
            truth.append((xs, ys, sgn))
    truth = np.array(truth)
    src = detect(score_from_difference(diff, 1.0, psf).astype(np.float32), np.ones(shape, bool))
    found = 0
    for xs, ys, sgn in truth:
        d = np.hypot(src["x"] - xs, src["y"] - ys)
        found += np.any((d < 1.5) & (src["sign"] == sgn))
    assert found / len(truth) > 0.97
    # Few spurious ones: far from every injected source.
    dmin = np.min(np.hypot(src["x"][:, None] - truth[:, 0], src["y"][:, None] - truth[:, 1]), 1)
    assert np.sum(dmin > 3) <= 3


# --- input checks ------------------------------------------------------------------------


def test_checks():
    valid = np.ones((5, 5), bool)
    with pytest.raises(TypeError, match="score must be a float32 or float64 ndarray, got int64"):
        detect(np.zeros((5, 5), np.int64), valid)
    with pytest.raises(TypeError, match="score must be a float32 or float64 ndarray, got list"):
        detect([[0.0]], valid)
    with pytest.raises(ValueError, match=r"score must be 2-D, got shape \(5,\)"):
        detect(np.zeros(5), valid)
    with pytest.raises(TypeError, match="valid must be a bool ndarray, got float64"):
        detect(np.zeros((5, 5)), np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"valid shape \(4, 5\) differs from score shape"):
        detect(np.zeros((5, 5)), np.ones((4, 5), bool))
    for bad in (0, -1.0, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
            detect(np.zeros((5, 5)), valid, threshold=bad)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="min_area must be an integer >= 1"):
            detect(np.zeros((5, 5)), valid, min_area=bad)
    for bad in (-1.0, float("inf")):
        with pytest.raises(ValueError, match="dipole_radius must be a finite number >= 0"):
            detect(np.zeros((5, 5)), valid, dipole_radius=bad)
