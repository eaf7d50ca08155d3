"""The seeded pair simulator (diffstream.stream.sim.simulate) and its FITS writers."""

from __future__ import annotations

import csv
import functools
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.jitcore.psf import gaussian_psf, psf_moments
from diffstream.stream.sim import render
from diffstream.stream.sim.simulate import (
    TRUTH_DTYPE,
    Instrument,
    simulate_pair,
    write_exposure,
    write_pair,
)

pytestmark = pytest.mark.unit

FWHM = (3.0, 2.4)  # simulate_pair's default science and template FWHM, px
SMALL = {
    "shape": (256, 256),
    "n_stars": 40,
    "n_transients": 8,
    "n_variables": 4,
    "n_cosmic_rays": 5,
    "n_saturated": 1,
}


@functools.lru_cache(maxsize=16)
def _cached(seed: int, items: tuple):
    return simulate_pair(seed=seed, **dict(items))


def make_pair(seed: int = 11, **kw):
    """Factory with a cache: tests must not modify what it returns."""
    return _cached(seed, tuple(sorted(kw.items())))


def bit(name: str) -> int:
    return 1 << DEFAULT_PLANES[name]


# --- determinism --------------------------------------------------------------------------


def test_same_seed_gives_identical_pair():
    a = simulate_pair(seed=5, **SMALL)
    b = simulate_pair(seed=5, **SMALL)
    for sa, sb in ((a.science, b.science), (a.template, b.template)):
        assert_array_equal(sa.image, sb.image)
        assert_array_equal(sa.variance, sb.variance)
        assert_array_equal(sa.mask, sb.mask)
        assert sa.wcs.to_header_string() == sb.wcs.to_header_string()
        assert (sa.mjd_obs, sa.visit, sa.detector) == (sb.mjd_obs, sb.visit, sb.detector)
    assert_array_equal(a.truth, b.truth)
    assert_array_equal(a.stars, b.stars)


def test_different_seed_gives_different_pair():
    a = simulate_pair(seed=5, **SMALL)
    c = simulate_pair(seed=6, **SMALL)
    assert not np.array_equal(a.science.image, c.science.image)
    assert not np.array_equal(a.truth["x"], c.truth["x"])


# --- expected S/N ---------------------------------------------------------------------------


def test_snr_expected_spans_range_log_uniformly():
    pair = make_pair()
    snr = pair.truth["snr_expected"]
    n = len(snr)
    assert n == 80
    assert snr.min() >= 5.0 and snr.max() <= 60.0
    # Stratified draws: one per log bin of width log(12)/80, so the ends are reached.
    step = math.log(12.0) / n
    assert snr.min() < 5.0 * math.exp(step) and snr.max() > 60.0 * math.exp(-step)
    for lo, hi in ((5, 7), (7, 10), (10, 20), (20, 60)):
        expected = n * math.log(hi / lo) / math.log(12.0)
        got = np.count_nonzero((snr >= lo) & (snr < hi))
        assert abs(got - expected) <= 2, (lo, hi, got, expected)
    u = np.log(snr / 5.0) / math.log(12.0)
    assert stats.kstest(u, "uniform").pvalue > 0.05
    # The same shape for each kind of source, not just overall.
    for kind in ("transient", "brightening", "fading"):
        assert np.count_nonzero(pair.truth["kind"] == kind) > 0
    assert np.all(pair.truth["flux_diff_njy"][pair.truth["kind"] == "fading"] < 0)
    assert np.all(pair.truth["flux_diff_njy"][pair.truth["kind"] != "fading"] > 0)


def _reference_flux_sigma(pair, row) -> float:
    """sigma_F re-derived from the public SimImage attributes with a full complex FFT."""
    sci, tmp = pair.science, pair.template
    size = 41
    pn = gaussian_psf(float(sci.psf_sigma_map(row["x"], row["y"])), size)
    pr = gaussian_psf(float(tmp.psf_sigma_map(row["x_template"], row["y_template"])), size)
    n = 128
    fn = np.abs(np.fft.fft2(pn, s=(n, n))) ** 2
    fr = np.abs(np.fft.fft2(pr, s=(n, n))) ** 2

    def bg(sim):  # background noise per pixel in nJy (sky in counts, read noise in e-)
        return math.sqrt(sim.sky / sim.gain + (sim.read_noise / sim.gain) ** 2) * sim.photo_calib

    f_s = np.sum(fn * fr / (bg(sci) ** 2 * fr + bg(tmp) ** 2 * fn)) / n**2
    q = [float((p**3).sum() / (p**2).sum() ** 2) for p in (pn, pr)]
    var = 1 / f_s
    var += q[0] * sci.photo_calib / sci.gain * row["flux_science_njy"]
    var += q[1] * tmp.photo_calib / tmp.gain * row["flux_template_njy"]
    return math.sqrt(var)


def test_snr_expected_matches_independent_formula():
    pair = make_pair()
    for row in pair.truth[::7]:
        sigma = _reference_flux_sigma(pair, row)
        assert_allclose(row["sigma_flux_njy"], sigma, rtol=1e-6)
        assert_allclose(row["snr_expected"], abs(row["flux_diff_njy"]) / sigma, rtol=1e-6)
        assert_allclose(row["flux_science_njy"] - row["flux_template_njy"], row["flux_diff_njy"])


@pytest.mark.parametrize("size", [9, 15, 21])
def test_zogy_flux_variance_closed_forms(size):
    p1 = gaussian_psf(1.1, size)
    p2 = gaussian_psf(1.7, size)
    s1, s2 = 3.0, 5.0
    # Noise-free reference: the single-image PSF-fit variance sigma^2 / sum(P^2).
    assert_allclose(render.zogy_flux_variance(p1, p2, s1, 0.0), s1**2 / (p1**2).sum(), rtol=1e-9)
    # Equal PSFs: the two noises add.
    assert_allclose(
        render.zogy_flux_variance(p1, p1, s1, s2), (s1**2 + s2**2) / (p1**2).sum(), rtol=1e-9
    )
    # Symmetric in which image is which, and never better than either image alone.
    v = render.zogy_flux_variance(p1, p2, s1, s2)
    assert_allclose(v, render.zogy_flux_variance(p2, p1, s2, s1), rtol=1e-12)
    assert v > s1**2 / (p1**2).sum() and v > s2**2 / (p2**2).sum()


def test_poisson_psf_factor():
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    assert render.poisson_psf_factor(delta) == pytest.approx(1.0)
    # Wide Gaussian: integral P^3 / (integral P^2)^2 = 4/3 for any sigma.
    assert render.poisson_psf_factor(gaussian_psf(5.0, 61)) == pytest.approx(4 / 3, rel=1e-3)


def test_injected_fluxes_are_recovered_with_truth_errors():
    """PSF fit at the truth positions on each image: unbiased, errors as in the truth table.

    With a template 1e6 times deeper the ZOGY sigma_F reduces to the science PSF-fit error, so
    the variance plane, calibration, PSF and positions are all checked against the truth.
    """
    pair = make_pair(
        shape=(512, 512),
        n_stars=0,
        n_saturated=0,
        n_transients=50,
        n_variables=30,
        template_depth=1e6,
    )
    pulls_s, pulls_t, ratio = [], [], []
    for row in pair.truth:
        f, e = _psf_fit(pair.science, row["x"], row["y"])
        pulls_s.append((f - row["flux_science_njy"]) / e)
        ratio.append(e / row["sigma_flux_njy"])
        if row["kind"] != "transient":
            f, e = _psf_fit(pair.template, row["x_template"], row["y_template"])
            pulls_t.append((f - row["flux_template_njy"]) / e)
    for pulls in (np.array(pulls_s), np.array(pulls_t)):
        assert abs(pulls.mean()) < 5 / math.sqrt(len(pulls))
        assert 0.75 < pulls.std() < 1.25
    # Optimal weights (P/V) vs the formula's background weights: never worse, and only
    # better by a few % where the source's own photons matter (bright variables).
    ratio = np.array(ratio)
    assert np.all((ratio > 0.9) & (ratio < 1.002))
    assert_allclose(np.median(ratio), 1.0, atol=0.01)


def _psf_fit(sim, x, y, half=8):
    ix, iy = int(round(x)), int(round(y))
    p = gaussian_psf(float(sim.psf_sigma_map(x, y)), 2 * half + 1, dx=x - ix, dy=y - iy)
    img = sim.image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
    var = sim.variance[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
    norm = (p * p / var).sum()
    return (p * img / var).sum() / norm * sim.photo_calib, sim.photo_calib / math.sqrt(norm)


# --- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(101, 97), (64, 65)])
def test_add_point_sources_conserves_flux_and_centroid(shape):
    rng = np.random.default_rng(0)
    n = 12
    x = rng.uniform(15, shape[1] - 16, n)
    y = rng.uniform(15, shape[0] - 16, n)
    flux = rng.uniform(10, 1e5, n)
    sigma = rng.uniform(0.8, 2.5, n)
    out = np.zeros(shape)
    render.add_point_sources(out, x, y, flux, sigma)
    assert_allclose(out.sum(), flux.sum(), rtol=1e-12)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for i in range(n):
        one = np.zeros(shape)
        render.add_point_sources(one, x[i : i + 1], y[i : i + 1], flux[i : i + 1], sigma[i : i + 1])
        assert_allclose(one.sum(), flux[i], rtol=1e-12)
        assert_allclose((one * xx).sum() / flux[i], x[i], atol=1e-4)
        assert_allclose((one * yy).sum() / flux[i], y[i], atol=1e-4)
        ixx, iyy, _ = psf_moments(one)
        # A pixel-integrated Gaussian adds 1/12 px^2 (a unit box) to the variance.
        assert_allclose([ixx, iyy], sigma[i] ** 2 + 1 / 12, rtol=1e-3)


def test_add_point_sources_clips_at_edges():
    out = np.zeros((40, 40))
    render.add_point_sources(
        out,
        np.array([0.0, -50.0]),
        np.array([20.0, 20.0]),
        np.array([100.0, 100.0]),
        np.array([1.5, 1.5]),
    )
    # Half of the first source lands on the image (plus its central column), none of the second.
    assert 50.0 < out.sum() < 70.0


def test_bleed_conserves_charge_along_column():
    model = np.full((200, 11), 100.0)
    model[100, 5] = 10_000.0
    before = model.sum()
    render.bleed_columns(model, 1000.0, [5], half_width=3)
    assert model.max() <= 1000.0
    assert_allclose(model.sum(), before)
    assert np.count_nonzero(model[:, 5] == 1000.0) == 11  # 9900 e over 900 e of room each
    assert_array_equal(model[:, :5], 100.0)


def test_psf_truth_and_centre_stamp():
    pair = make_pair()
    for sim, fwhm in ((pair.science, 3.0), (pair.template, 2.4)):
        ny, nx = sim.shape
        sigma0 = fwhm / render.FWHM_PER_SIGMA
        assert_allclose(sim.psf_sigma_map((nx - 1) / 2, (ny - 1) / 2), sigma0)
        corners = sim.psf_sigma_map(
            np.array([0, nx - 1, 0, nx - 1]), np.array([0, 0, ny - 1, ny - 1])
        )
        spread = (corners.max() - corners.min()) / sigma0
        assert 0.10 - 1e-9 <= spread <= 0.10 * math.sqrt(2) + 1e-9
        stamp = sim.psf_centre
        assert stamp.shape[0] == stamp.shape[1] and stamp.shape[0] % 2 == 1
        assert_allclose(stamp.sum(), 1.0)
        ixx, iyy, _ = psf_moments(stamp)
        assert_allclose([ixx, iyy], sigma0**2 + 1 / 12, rtol=1e-3)


# --- geometry, depth, calibration -----------------------------------------------------------


def _science_border_in_template(pair):
    ny, nx = pair.science.shape
    t = np.linspace(0, 1, 41)
    border = np.concatenate(
        [
            np.column_stack([t * (nx - 1), np.zeros_like(t)]),
            np.column_stack([t * (nx - 1), np.full_like(t, ny - 1)]),
            np.column_stack([np.zeros_like(t), t * (ny - 1)]),
            np.column_stack([np.full_like(t, nx - 1), t * (ny - 1)]),
        ]
    )
    sky = pair.science.wcs.all_pix2world(border, 0)
    return pair.template.wcs.all_world2pix(sky, 0)


@pytest.mark.parametrize(
    "kw",
    [{}, {"wcs_kind": "sip"}, {"template_rotation_deg": 12.0, "template_offset_px": (-40.0, 25.5)}],
)
def test_template_covers_science_footprint(kw):
    pair = make_pair(**SMALL, **kw)
    nty, ntx = pair.template.shape
    assert nty > pair.science.shape[0] and ntx > pair.science.shape[1]
    pt = _science_border_in_template(pair)
    margin = 30.0
    assert pt[:, 0].min() >= margin and pt[:, 0].max() <= ntx - 1 - margin
    assert pt[:, 1].min() >= margin and pt[:, 1].max() <= nty - 1 - margin
    # The template is rotated by the requested angle relative to the science.
    cd_s, cd_t = pair.science.wcs.wcs.cd, pair.template.wcs.wcs.cd
    angle = math.degrees(math.atan2(cd_t[1, 0], cd_t[1, 1]) - math.atan2(cd_s[1, 0], cd_s[1, 1]))
    assert_allclose(angle, kw.get("template_rotation_deg", 1.5), atol=1e-9)


def test_small_template_covers_part_and_sources_stay_inside():
    pair = make_pair(**{**SMALL, "shape": (320, 320)}, template_shape=(200, 260))
    assert pair.template.shape == (200, 260)
    pt = _science_border_in_template(pair)
    assert pt[:, 1].min() < 0 or pt[:, 1].max() > 199  # not fully covered
    tr = pair.truth
    assert len(tr) == 12
    assert np.all((tr["x_template"] >= 20) & (tr["x_template"] <= 259 - 20))
    assert np.all((tr["y_template"] >= 20) & (tr["y_template"] <= 199 - 20))


def test_template_depth_and_photometric_scale():
    pair = make_pair(**SMALL, template_depth=6.0)
    sci, tmp = pair.science, pair.template
    inst = Instrument()
    # Background variance in nJy^2 (from the variance planes' medians): depth x lower.
    v_s = np.median(sci.variance) * sci.photo_calib**2
    v_t = np.median(tmp.variance) * tmp.photo_calib**2
    assert_allclose(v_s / v_t, 6.0, rtol=0.03)
    assert_allclose(tmp.photo_calib / sci.photo_calib, inst.template_gain / (inst.gain * 6.0))
    assert tmp.exptime == pytest.approx(6.0 * sci.exptime)
    # The pixels really have that noise: robust std of star-free pixels vs the variance plane.
    for sim in (sci, tmp):
        clean = sim.image[(sim.mask == 0)]
        mad = stats.median_abs_deviation(clean, scale="normal")
        assert_allclose(mad, math.sqrt(np.median(sim.variance)), rtol=0.05)


def test_sky_left_in_and_sky_gradient():
    pair = make_pair(**SMALL, sky_subtracted=False, sky_gradient=0.2)
    sci = pair.science
    assert_allclose(np.median(sci.image), sci.sky, rtol=0.05)
    # The variance follows the sky gradient (20% across the field).
    rows = np.median(sci.variance, axis=1)
    cols = np.median(sci.variance, axis=0)
    spread = max(np.ptp(rows), np.ptp(cols)) / np.median(sci.variance)
    assert 0.08 < spread < 0.3


# --- stars, masks, defects ------------------------------------------------------------------


def test_saturated_stars_are_clipped_and_flagged():
    pair = make_pair(n_saturated=4)
    stars = pair.stars
    assert stars["saturated"].sum() == 4
    for sim, xk, yk in ((pair.science, "x", "y"), (pair.template, "x_template", "y_template")):
        sat = (sim.mask & bit("SAT")) != 0
        ix = np.round(stars[xk]).astype(int)
        iy = np.round(stars[yk]).astype(int)
        inside = (ix >= 0) & (iy >= 0) & (ix < sim.shape[1]) & (iy < sim.shape[0])
        at_star = np.zeros(len(stars), dtype=bool)
        at_star[inside] = sat[iy[inside], ix[inside]]
        assert_array_equal(at_star[inside], stars["saturated"][inside])
        level = sim.saturation - (sim.sky if sim.sky_subtracted else 0.0)
        assert_allclose(sim.image[sat], level, rtol=1e-5)
        # Bleed trails: the saturated area is longer along columns than along rows.
        ys, xs = np.nonzero(sat)
        assert np.ptp(ys) > 0 and sat.sum() > 4 * 9


def test_cosmic_rays_and_bad_columns():
    pair = make_pair()
    sci = pair.science
    cr = (sci.mask & bit("CR")) != 0
    assert 15 <= cr.sum() <= 45
    sigma = np.sqrt(sci.variance[cr])
    assert np.all(sci.image[cr] > 10 * sigma)
    bad = (sci.mask & bit("BAD")) != 0
    cols = np.unique(np.nonzero(bad)[1])
    assert len(cols) == 2
    for x, y0, y1 in pair.params["bad_columns"]:
        assert bad[y0:y1, x].all()
    assert not ((pair.template.mask & (bit("CR") | bit("BAD"))) != 0).any()
    edge = make_pair(**SMALL, edge_px=4).science.mask & bit("EDGE")
    assert np.count_nonzero(edge) == 256 * 256 - 248 * 248


def test_difference_sources_placed_clear_of_trouble():
    pair = make_pair()
    tr, sci = pair.truth, pair.science
    ny, nx = sci.shape
    assert np.all((tr["x"] > 20) & (tr["x"] < nx - 21) & (tr["y"] > 20) & (tr["y"] < ny - 21))
    xy = np.column_stack([tr["x"], tr["y"]])
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).T)
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 15
    bright = pair.stars[pair.stars["bright"]]
    db = np.hypot(tr["x"][:, None] - bright["x"], tr["y"][:, None] - bright["y"])
    assert db.min() >= 15
    ty, tx = np.nonzero((sci.mask & (bit("SAT") | bit("BAD"))) != 0)
    assert len(tx) > 0
    dt = np.hypot(tr["x"][:, None] - tx, tr["y"][:, None] - ty)
    assert dt.min() >= 14.5  # half a pixel of slack: the check works on whole pixels


def test_pure_noise_pair_has_no_truth_rows():
    noise = make_pair(**SMALL, transients=False)
    with_sources = make_pair(**SMALL)
    assert len(noise.truth) == 0 and noise.truth.dtype == TRUTH_DTYPE
    assert len(with_sources.truth) == 12
    assert_array_equal(noise.stars, with_sources.stars)


def test_star_power_law_and_positions():
    pair = make_pair()
    stars = pair.stars[~pair.stars["saturated"]]
    assert 350 <= np.count_nonzero(stars["in_science"]) <= 450
    # x, y and ra, dec agree through the science WCS.
    xy = pair.science.wcs.all_world2pix(np.column_stack([stars["ra"], stars["dec"]]), 0)
    assert_allclose(xy, np.column_stack([stars["x"], stars["y"]]), atol=1e-6)
    # Cumulative counts N(>F) ~ F^-0.8: the MLE of the truncated Pareto slope.
    f = stars["flux_njy"]
    slope = len(f) / np.log(f / f.min()).sum()
    assert 0.65 < slope < 0.95


# --- FITS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wcs_kind", ["tan", "sip"])
def test_write_lsst_mef_round_trip(tmp_path, wcs_kind):
    pair = make_pair(**SMALL, wcs_kind=wcs_kind)
    sci_path, tmp_path_ = write_pair(pair, tmp_path)
    assert sci_path.name == "science.fits" and tmp_path_.name == "template.fits"
    for path, sim, xk, yk in (
        (sci_path, pair.science, "x", "y"),
        (tmp_path_, pair.template, "x_template", "y_template"),
    ):
        with fits.open(path) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF"]
            hdr = hdul[0].header
            for key, value in (
                ("EXPTIME", sim.exptime),
                ("FILTER", "r"),
                ("VISIT", sim.visit),
                ("DETECTOR", sim.detector),
                ("GAIN", sim.gain),
                ("SATURATE", sim.saturation),
                ("PHOTCALIB", sim.photo_calib),
                ("MJD-OBS", sim.mjd_obs),
            ):
                assert hdr[key] == value, key
            assert hdul["IMAGE"].data.dtype == np.dtype(">f4")
            assert hdul["MASK"].data.dtype == np.dtype(">i4")
            assert_array_equal(hdul["IMAGE"].data, sim.image)
            assert_array_equal(hdul["MASK"].data, sim.mask)
            assert_array_equal(hdul["VARIANCE"].data, sim.variance)
            for plane, b in DEFAULT_PLANES.items():
                assert hdul["MASK"].header[f"MP_{plane}"] == b
            psf = hdul["PSF"].data
            assert psf.shape[0] % 2 == 1 and psf.sum() == pytest.approx(1.0)
            wcs = WCS(hdul["IMAGE"].header)
            assert wcs.sip is not None if (wcs_kind == "sip" and sim is pair.science) else True
            xy = wcs.all_world2pix(np.column_stack([pair.truth["ra"], pair.truth["dec"]]), 0)
            assert np.abs(xy - np.column_stack([pair.truth[xk], pair.truth[yk]])).max() < 0.01
    with (tmp_path / "truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(pair.truth)
    assert_allclose([float(r["snr_expected"]) for r in rows], pair.truth["snr_expected"])
    assert [r["kind"] for r in rows] == list(pair.truth["kind"])


def test_write_plain_layout(tmp_path):
    pair = make_pair(**SMALL)
    sim = pair.science
    path = write_exposure(sim, tmp_path / "plain.fits", layout="plain")
    with fits.open(path) as hdul:
        assert len(hdul) == 1
        hdr, data = hdul[0].header, hdul[0].data
        assert "PHOTCALIB" not in hdr and "EXTNAME" not in hdr
        assert hdr["MAGZP"] == pytest.approx(31.4 - 2.5 * math.log10(sim.photo_calib))
        assert hdr["GAIN"] == sim.gain
        bad = (sim.mask & bit("BAD")) != 0
        assert_array_equal(np.isnan(data), bad)
        assert_array_equal(data[~bad], sim.image[~bad])
        # SATURATE is the level in the image as written: every SAT pixel reaches it.
        sat = (sim.mask & bit("SAT")) != 0
        assert sat.any() and np.all(data[sat] >= hdr["SATURATE"] - 1e-3)
        wcs = WCS(hdr)
        xy = wcs.all_world2pix(np.column_stack([pair.truth["ra"], pair.truth["dec"]]), 0)
        assert np.abs(xy - np.column_stack([pair.truth["x"], pair.truth["y"]])).max() < 0.01


def test_calib_keyword_choices_and_no_psf(tmp_path):
    sim = make_pair(**SMALL).science
    p = write_exposure(sim, tmp_path / "f0.fits", calib_keyword="FLUXMAG0", include_psf=False)
    with fits.open(p) as hdul:
        assert "PSF" not in [h.name for h in hdul]
        assert hdul[0].header["FLUXMAG0"] * sim.photo_calib == pytest.approx(10 ** (31.4 / 2.5))
        assert "PHOTCALIB" not in hdul[0].header
    p = write_exposure(sim, tmp_path / "none.fits", calib_keyword="none")
    with fits.open(p) as hdul:
        assert not {"PHOTCALIB", "MAGZP", "FLUXMAG0"} & set(hdul[0].header)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"shape": (100,)}, "shape must be a pair of ints"),
        ({"shape": (32, 512)}, "shape must be at least 64 x 64"),
        ({"template_shape": (512, 10)}, "template_shape must be at least 64 x 64"),
        ({"n_transients": -1}, "n_transients must be an int >= 0, got -1"),
        ({"n_stars": 2.5}, "n_stars must be an int >= 0, got 2.5"),
        ({"science_fwhm": 0.0}, "science_fwhm must be finite and > 0, got 0.0"),
        ({"template_depth": float("nan")}, "template_depth must be finite and > 0"),
        ({"psf_gradient": 1.5}, r"psf_gradient must be in \[0, 1\), got 1.5"),
        ({"sky_gradient": -0.1}, r"sky_gradient must be in \[0, 1\)"),
        ({"psf_ellipticity": 0.7}, r"psf_ellipticity must be in \[0, 0.5\)"),
        ({"snr_range": (10, 5)}, "snr_range must satisfy 0 < low <= high"),
        ({"wcs_kind": "tpv"}, "wcs_kind must be one of"),
        ({"shape": (96, 96), "n_transients": 60}, "could place only .* of 64 difference sources"),
        ({"instrument": Instrument(full_well=2000.0)}, "full_well 2000 e- must exceed 4 x"),
    ],
)
def test_simulate_pair_rejects_bad_input(kw, match):
    args = {**SMALL, **kw}
    with pytest.raises(ValueError, match=match):
        simulate_pair(seed=1, **args)


def test_write_exposure_rejects_bad_input(tmp_path):
    sim = make_pair(**SMALL).science
    with pytest.raises(ValueError, match="layout must be one of"):
        write_exposure(sim, tmp_path / "x.fits", layout="hdf5")
    with pytest.raises(ValueError, match="calib_keyword must be one of"):
        write_exposure(sim, tmp_path / "x.fits", calib_keyword="ZP")
