"""jitcore.dipole and its kernel: NumPy/SciPy references, classification, merging, checks;
diffstream.stream.pipeline.dipoles: schema units and the pipeline step."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import least_squares

from diffstream.jitcore._kernels import dipole as K
from diffstream.jitcore._kernels.psffit import PAD
from diffstream.jitcore.detect import SOURCE_DTYPE, detect
from diffstream.jitcore.dipole import DIPOLE_DTYPE, fit_dipoles, merge_dipoles
from diffstream.jitcore.matched_filter import matched_filter_score
from diffstream.jitcore.measure import MEASURE_DTYPE, measure
from diffstream.jitcore.psf import gaussian_psf
from diffstream.stream.alerts.packets import dia_source_record
from diffstream.stream.pipeline.dipoles import dipole_alert_fields, measure_dipoles

pytestmark = pytest.mark.unit

HYP = settings(max_examples=20, deadline=None)


# --- NumPy references --------------------------------------------------------------------


def nearest(v):
    return int(math.floor(v + 0.5))


def taps_reference(frac):
    """Lagrange weights (taps t = -4..4) from numpy polynomials."""
    nodes = np.arange(8) + math.floor(frac) - 3
    w = np.zeros(9)
    for p, tp in enumerate(nodes):
        others = np.delete(nodes, p)
        w[tp + 4] = np.prod(frac - others) / np.prod(tp - others)
    return w


def place_reference(psf, x, y, shape):
    """The PSF moved to (x, y) on an image of ``shape``: sum over taps (s, t) of the stamp
    shifted by whole pixels (cy + s, cx + t) times wy[s] wx[t] (zero outside its support)."""
    k = psf.shape[0]
    h = k // 2
    cx, cy = nearest(x), nearest(y)
    wx, wy = taps_reference(x - cx), taps_reference(y - cy)
    pad = k + 8
    canvas = np.zeros((shape[0] + 2 * pad, shape[1] + 2 * pad))
    for s in range(-4, 5):
        for t in range(-4, 5):
            j0, i0 = cy - h + s + pad, cx - h + t + pad
            canvas[j0 : j0 + k, i0 : i0 + k] += wy[s + 4] * wx[t + 4] * psf
    return canvas[pad : pad + shape[0], pad : pad + shape[1]]


def model_reference(p, planes, shape):
    """(D, S, T) models for parameters p = (f+, x+, y+, f-, x-, y-)."""
    psf_d, psf_s, psf_t = planes
    pd = place_reference(psf_d, p[1], p[2], shape)
    nd = place_reference(psf_d, p[4], p[5], shape)
    out = [p[0] * pd - p[3] * nd]
    if psf_s is not None:
        out.append(p[0] * place_reference(psf_s, p[1], p[2], shape))
        out.append(p[3] * place_reference(psf_t, p[4], p[5], shape))
    return out


def good_reference(img, var, mask, badbits):
    with np.errstate(invalid="ignore"):
        return ((mask & badbits) == 0) & np.isfinite(img) & np.isfinite(var) & (var > 0)


def add_point(img, x, y, flux, sigma, size):
    h = size // 2
    ix, iy = nearest(x), nearest(y)
    stamp = gaussian_psf(sigma, size, dx=x - ix, dy=y - iy)
    y0, x0 = iy - h, ix - h
    sl = np.s_[max(y0, 0) : iy + h + 1, max(x0, 0) : ix + h + 1]
    img[sl] += flux * stamp[max(-y0, 0) :, max(-x0, 0) :][: img[sl].shape[0], : img[sl].shape[1]]


def _scene(rng, dtype, *, joint, sep, ny=41, nx=45):
    """A dipole (and, when joint, its science and template) with noise; truth parameters."""
    sig_d, sig_s, sig_t, k = 1.5, 1.5, 1.2, 13
    f = rng.uniform(3000, 6000)
    xc, yc = rng.uniform(19, 25), rng.uniform(17, 23)
    ang = rng.uniform(0, 2 * np.pi)
    xp, yp = xc + 0.5 * sep * math.cos(ang), yc + 0.5 * sep * math.sin(ang)
    xn, yn = xc - 0.5 * sep * math.cos(ang), yc - 0.5 * sep * math.sin(ang)
    fp, fn = f, f * rng.uniform(0.8, 1.2)
    imgs = []
    for comps in (((fp, xp, yp, sig_d), (-fn, xn, yn, sig_d)), ((fp, xp, yp, sig_s),),
                  ((fn, xn, yn, sig_t),)):  # fmt: skip
        var = rng.uniform(80, 120, (ny, nx))
        img = rng.normal(size=(ny, nx)) * np.sqrt(var)
        for flux, x, y, sg in comps:
            add_point(img, x, y, flux, sg, k)
        imgs.append((img.astype(dtype), var.astype(dtype)))
    psfs = [gaussian_psf(s, k) for s in (sig_d, sig_s, sig_t)]
    if not joint:
        imgs, psfs = imgs[:1], [psfs[0], None, None]
    return imgs, psfs, np.array([fp, xp, yp, fn, xn, yn])


def _run_kernel(imgs, psfs, start, box, mask, w, *, bound=6.0, max_iter=50):
    (d, dv), *rest = imgs
    s, sv = rest[0] if rest else (d, dv)
    t, tv = rest[1] if rest else (d, dv)
    w_s = w_t = w if rest else 0.0
    pd = psfs[0][None].copy()
    ps = (psfs[1] if rest else psfs[0])[None].copy()
    pt = (psfs[2] if rest else psfs[0])[None].copy()
    m = pd.shape[1] + 2 * PAD
    out = np.empty((1, K.NOUT))
    cov = np.empty((1, 6, 6))
    K.fit_dipole_pairs(
        d, dv, s, sv, t, tv, mask, 1, pd, ps, pt, w_s, w_t, start[None].copy(),
        np.array([box], dtype=np.int64), np.array([bound]), max_iter, 0.5, 1e-6,
        np.empty((2, 5, m, m)), np.empty((5, m, m)), np.empty((5, m, m)), out, cov,
    )  # fmt: skip
    return out[0], cov[0]


@HYP
@given(
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_kernel_matches_scipy_least_squares(dtype, joint, seed):
    """The kernel's optimum, chi^2, pixel count and errors against scipy.optimize on the same
    chi^2 built from the NumPy model (close dipoles in the joint fit, where D alone is
    degenerate; separated lobes on D alone)."""
    rng = np.random.default_rng(seed)
    sep = rng.uniform(0.3, 1.2) if joint else rng.uniform(2.5, 4.0)
    imgs, psfs, truth = _scene(rng, dtype, joint=joint, sep=sep)
    ny, nx = imgs[0][0].shape
    mask = np.zeros((ny, nx), np.int32)
    mask[nearest(truth[2]) + 1, nearest(truth[1]) - 1] = 1  # one skipped pixel in the window
    w = 0.5
    start = truth * np.array([rng.uniform(0.7, 1.3), 1, 1, rng.uniform(0.7, 1.3), 1, 1])
    start[[1, 2, 4, 5]] += rng.uniform(-0.4, 0.4, 4)
    h = psfs[0].shape[0] // 2
    xs, ys = (nearest(start[1]), nearest(start[4])), (nearest(start[2]), nearest(start[5]))
    box = (max(min(xs) - h, 0), min(max(xs) + h, nx - 1), max(min(ys) - h, 0),
           min(max(ys) + h, ny - 1))  # fmt: skip
    res, cov = _run_kernel(imgs, psfs, start, box, mask, w)
    assert res[12] == K.DIPOLE_OK
    par = res[:6]

    win = np.zeros((ny, nx), bool)
    win[box[2] : box[3] + 1, box[0] : box[1] + 1] = True
    goods = [good_reference(i, v, mask, 1) & win for i, v in imgs]
    weights = [1.0] + [w] * (len(imgs) - 1)
    data = [(i.astype(np.float64), v.astype(np.float64)) for i, v in imgs]

    def resid(p, which=None, plane_w=None):
        models = model_reference(p, psfs, (ny, nx))
        out = []
        for k, ((img, var), g, m) in enumerate(zip(data, goods, models, strict=True)):
            if which is not None and k not in which:
                continue
            wk = (plane_w or weights)[k]
            out.append(np.sqrt(wk / var[g]) * (img[g] - m[g]))
        return np.concatenate(out)

    ref = least_squares(resid, par, x_scale=np.array([1e3, 0.1, 0.1, 1e3, 0.1, 0.1]),
                        xtol=1e-12, ftol=1e-12, gtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(par[[1, 2, 4, 5]], ref.x[[1, 2, 4, 5]], atol=2e-4)
    np.testing.assert_allclose(par[[0, 3]], ref.x[[0, 3]], rtol=2e-4)
    # chi^2 of D alone, its good pixels, and chi^2 of a zero model on D.
    chi_d = float(np.sum(resid(par, which={0}) ** 2))
    np.testing.assert_allclose(res[13], chi_d, rtol=1e-6)
    assert res[14] == goods[0].sum()
    d0, v0 = data[0]
    np.testing.assert_allclose(res[17], np.sum(d0[goods[0]] ** 2 / v0[goods[0]]), rtol=1e-6)
    # Errors: inverse Fisher matrix of D alone, or of S and T (weights 1) when joint.
    eps = np.array([1e-3 * par[0], 1e-4, 1e-4, 1e-3 * par[3], 1e-4, 1e-4])
    which = {1, 2} if joint else {0}
    jac = np.column_stack(
        [
            (resid(par + e, which, [1.0, 1.0, 1.0]) - resid(par - e, which, [1.0, 1.0, 1.0]))
            / (2 * e[k])
            for k, e in enumerate(np.diag(eps))
        ]
    )
    fisher_cov = np.linalg.inv(jac.T @ jac)
    np.testing.assert_allclose(cov, fisher_cov, rtol=2e-3, atol=1e-12)
    np.testing.assert_allclose(res[6:12], np.sqrt(np.diag(fisher_cov)), rtol=1e-3)


def test_kernel_failure_codes():
    rng = np.random.default_rng(3)
    imgs, psfs, truth = _scene(rng, np.float64, joint=False, sep=3.0)
    ny, nx = imgs[0][0].shape
    box = (5, 38, 5, 35)
    ok = np.zeros((ny, nx), np.int32)
    # A non-positive starting flux is refused before fitting.
    start = truth.copy()
    start[3] = -1.0
    res, cov = _run_kernel(imgs, psfs, start, box, ok, 0.5)
    assert res[12] == K.DIPOLE_NONPOSITIVE_FLUX and np.isnan(res[6:12]).all()
    # Every pixel masked: no pixels.
    res, _ = _run_kernel(imgs, psfs, truth, box, np.ones((ny, nx), np.int32), 0.5)
    assert res[12] == K.DIPOLE_NO_PIXELS and np.isnan(cov).all()
    # A lobe that must move further than the bound allows.
    far = truth.copy()
    far[1] += 2.0
    res, _ = _run_kernel(imgs, psfs, far, box, ok, 0.5, bound=0.1)
    assert res[12] == K.DIPOLE_OUT_OF_BOUNDS
    # One iteration is not enough from a poor start.
    res, _ = _run_kernel(imgs, psfs, far, box, ok, 0.5, max_iter=1)
    assert res[12] == K.DIPOLE_NOT_CONVERGED
    np.testing.assert_array_equal(res[:6] != far, [True] * 6)  # last iterate reported


# --- the public function -------------------------------------------------------------------


def _difference(rng, lobes, *, sigma=1.5, k=15, shape=(64, 72), noise=10.0, dtype=np.float32):
    """A difference with point lobes (flux, x, y); detections and measurements of it."""
    var = np.full(shape, noise**2)
    img = rng.normal(size=shape) * noise
    for flux, x, y in lobes:
        add_point(img, x, y, flux, sigma, k)
    img, var = img.astype(dtype), var.astype(dtype)
    psf = gaussian_psf(sigma, k)
    score, valid = matched_filter_score(img, var, np.zeros(shape, bool), psf)
    found = detect(score, valid, threshold=5.0)
    rows = measure(found, difference=img, difference_variance=var, psf_d_at=lambda x, y: psf)
    return img, var, psf, found, rows


def test_separated_dipole_recovered_and_classified():
    rng = np.random.default_rng(11)
    lobes = [(4000.0, 33.3, 30.6), (-3600.0, 37.1, 32.2)]
    img, var, psf, found, rows = _difference(rng, lobes)
    assert len(found) == 2 and set(found["sign"]) == {-1, 1}
    dip = fit_dipoles(found, rows, img, var, lambda x, y: psf)
    assert dip["dipoleFitAttempted"].all() and dip["isDipole"].all()
    assert (dip["dipoleFitCode"] == K.DIPOLE_OK).all()
    np.testing.assert_array_equal(dip["dipolePartner"], [1, 0])
    np.testing.assert_array_equal(np.sort(dip["dipoleLobe"]), [-1, 1])
    d = dip[0]
    for got, want, err in (
        (d["dipolePosX"], 33.3, d["dipoleXErr"] * 2),
        (d["dipoleNegY"], 32.2, d["dipoleYErr"] * 2),
        (d["dipolePosFlux"], 4000.0, d["dipolePosFluxErr"]),
        (d["dipoleNegFlux"], 3600.0, d["dipoleNegFluxErr"]),
        (d["dipoleLength"], math.hypot(3.8, 1.6), d["dipoleLengthErr"]),
        (d["dipoleAngle"], math.degrees(math.atan2(-1.6, -3.8)), d["dipoleAngleErr"]),
    ):
        assert abs(got - want) < 5 * err, (got, want, err)
    # Derived quantities are those of the lobes.
    assert d["dipoleMeanFlux"] == pytest.approx(0.5 * (d["dipolePosFlux"] + d["dipoleNegFlux"]))
    assert d["dipoleFluxDiff"] == pytest.approx(d["dipolePosFlux"] - d["dipoleNegFlux"])
    assert d["dipoleX"] == pytest.approx(0.5 * (d["dipolePosX"] + d["dipoleNegX"]))
    assert d["dipoleNdata"] > 100 and d["dipoleChi2"] / d["dipoleNdata"] < 1.5
    # Two 20+ sigma lobes: far above 5 sqrt(2).
    assert d["dipoleSnr"] > 30


def test_lone_sources_are_not_fitted():
    rng = np.random.default_rng(2)
    img, var, psf, found, rows = _difference(rng, [(3000.0, 20.0, 20.0), (-3000.0, 50.0, 45.0)])
    assert len(found) == 2 and (found["adjacent_opposite"] == -1).all()
    dip = fit_dipoles(found, rows, img, var, lambda x, y: psf)
    assert not dip["dipoleFitAttempted"].any() and not dip["isDipole"].any()
    assert (dip["dipoleNdata"] == 0).all() and (dip["dipolePartner"] == -1).all()
    assert np.isnan(dip["dipoleMeanFlux"]).all() and (dip["dipoleFitCode"] == -1).all()


def test_classification_criteria():
    rng = np.random.default_rng(5)
    # One lobe dominating: fitted, but not a dipole (flux ratio).
    img, var, psf, found, rows = _difference(rng, [(9000.0, 33.0, 30.0), (-1500.0, 37.0, 31.0)])
    dip = fit_dipoles(found, rows, img, var, lambda x, y: psf)
    assert dip["dipoleFitAttempted"].all() and not dip["isDipole"].any()
    assert dip["dipolePosFlux"][0] / (dip["dipolePosFlux"][0] + dip["dipoleNegFlux"][0]) > 0.65
    assert fit_dipoles(found, rows, img, var, lambda x, y: psf, max_flux_ratio=0.9)[
        "isDipole"
    ].all()
    # Lobes 5 px apart with sigma 1.5 px: a dipole for maxSeparation 5 sigma, not for 2.
    img, var, psf, found, rows = _difference(rng, [(4000.0, 30.0, 30.0), (-4000.0, 35.0, 30.0)])
    assert fit_dipoles(found, rows, img, var, lambda x, y: psf)["isDipole"].all()
    assert not fit_dipoles(found, rows, img, var, lambda x, y: psf, max_separation=2.0)[
        "isDipole"
    ].any()
    # S/N threshold.
    assert not fit_dipoles(found, rows, img, var, lambda x, y: psf, snr_min=1e4)["isDipole"].any()
    # Footprints larger than max_area are not fitted at all.
    big = fit_dipoles(
        found, rows, img, var, lambda x, y: psf, max_area=int(found["npix"].sum()) - 1
    )
    assert not big["dipoleFitAttempted"].any()


def test_masked_pixels_are_skipped():
    rng = np.random.default_rng(8)
    img, var, psf, found, rows = _difference(rng, [(4000.0, 33.0, 30.0), (-4000.0, 36.5, 31.0)])
    mask = np.zeros(img.shape, np.int32)
    base = fit_dipoles(found, rows, img, var, lambda x, y: psf, mask=mask)
    img2 = img.copy()
    img2[31, 34] += 1e6  # a cosmic ray on the dipole ...
    mask[31, 34] = 1 << 3  # ... flagged CR
    masked = fit_dipoles(found, rows, img2, var, lambda x, y: psf, mask=mask)
    assert masked["dipoleNdata"][0] == base["dipoleNdata"][0] - 1
    assert abs(masked["dipoleLength"][0] - base["dipoleLength"][0]) < base["dipoleLengthErr"][0]
    # Not skipped when CR is not a bad plane: the fit is ruined or moves far.
    hit = fit_dipoles(found, rows, img2, var, lambda x, y: psf, mask=mask, bad_mask_planes=("BAD",))
    assert hit["dipoleChi2"][0] > 100 * base["dipoleChi2"][0]


def test_joint_fit_uses_science_and_template():
    """A 0.4 px dipole: D alone cannot tell flux from length, science + template can."""
    rng = np.random.default_rng(21)
    shape, k, sig = (60, 64), 15, 1.6
    f, xs, ys, dx = 20000.0, 30.2, 29.7, 0.4
    lobes = [(f, xs, ys), (-f, xs + dx, ys)]
    img, var, psf, found, rows = _difference(rng, lobes, sigma=sig, k=k, shape=shape)
    sci = (rng.normal(size=shape) * 10.0).astype(np.float32)
    tpl = (rng.normal(size=shape) * 10.0).astype(np.float32)
    add_point(sci, xs, ys, f, sig, k)
    add_point(tpl, xs + dx, ys, f, sig, k)
    v = np.full(shape, 100.0, np.float32)
    joint = fit_dipoles(
        found, rows, img, var, lambda x, y: psf, science=sci, science_variance=v,
        psf_science_at=lambda x, y: psf, template=tpl, template_variance=v,
        psf_template_at=lambda x, y: psf,
    )  # fmt: skip
    alone = fit_dipoles(found, rows, img, var, lambda x, y: psf)
    j, a = joint[0], alone[0]
    assert j["isDipole"] and abs(j["dipoleLength"] - dx) < 5 * j["dipoleLengthErr"]
    assert j["dipoleLengthErr"] < 0.05
    assert abs(j["dipolePosFlux"] - f) < 5 * j["dipolePosFluxErr"]
    # On D alone the length is far less certain (the flux-length degeneracy).
    assert a["dipoleLengthErr"] > 5 * j["dipoleLengthErr"]
    assert (
        abs(j["dipoleAngle"] - 180.0) < 5 * j["dipoleAngleErr"]
        or abs(j["dipoleAngle"] + 180.0) < 5 * j["dipoleAngleErr"]
    )


def test_merge_dipoles():
    rng = np.random.default_rng(13)
    lobes = [(4000.0, 20.0, 20.0), (-4000.0, 23.0, 21.0), (3000.0, 55.0, 45.0)]
    img, var, psf, found, rows = _difference(rng, lobes)
    assert len(found) == 3
    dip = fit_dipoles(found, rows, img, var, lambda x, y: psf)
    assert dip["isDipole"].sum() == 2
    merged, mdip, index = merge_dipoles(rows, dip)
    assert len(merged) == 2 and len(mdip) == 2
    neg = int(np.flatnonzero(dip["dipoleLobe"] < 0)[0])
    pos = int(np.flatnonzero(dip["dipoleLobe"] > 0)[0])
    assert neg not in index and pos in index
    k = int(np.flatnonzero(index == pos)[0])
    m = merged[k]
    assert m["x"] == dip["dipoleX"][pos] and m["y"] == dip["dipoleY"][pos]
    assert m["psfFlux"] == dip["dipoleFluxDiff"][pos] and not m["isNegative"]
    assert m["snr"] == dip["dipoleSnr"][pos] and m["psfFluxErr"] == dip["dipoleFluxDiffErr"][pos]
    assert m["bboxSize"] >= max(rows["bboxSize"][pos], rows["bboxSize"][neg])
    assert mdip["dipolePartner"][k] == -1
    # The lone source is untouched.
    lone = int(np.flatnonzero(~dip["dipoleFitAttempted"])[0])
    kl = int(np.flatnonzero(index == lone)[0])
    assert merged[kl].tobytes() == rows[lone].tobytes()  # NaN fields: compare bytes
    # Pairs not classified as dipoles stay two sources (partners renumbered).
    dip2 = dip.copy()
    dip2["isDipole"] = False
    merged2, mdip2, index2 = merge_dipoles(rows, dip2)
    np.testing.assert_array_equal(index2, np.arange(3))
    np.testing.assert_array_equal(mdip2["dipolePartner"], dip["dipolePartner"])


# --- checks --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_case():
    rng = np.random.default_rng(1)
    return _difference(rng, [(4000.0, 33.0, 30.0), (-4000.0, 36.0, 31.0)])


def test_checks(pair_case):
    img, var, psf, found, rows = pair_case

    def call(**over):
        args = {"sources": found, "rows": rows, "difference": img, "difference_variance": var,
                "psf_d_at": lambda x, y: psf}  # fmt: skip
        args.update(over)
        return fit_dipoles(**args)

    with pytest.raises(TypeError, match="sources must be a 1-D structured array"):
        call(sources=np.zeros(2))
    no_npix = np.zeros(2, dtype=[(n, SOURCE_DTYPE[n]) for n in ("x", "y", "sign", "bbox")])
    no_npix["x"] = no_npix["y"] = 1.0
    with pytest.raises(TypeError, match=r"sources lacks fields \['npix', 'adjacent_opposite'\]"):
        call(sources=no_npix)
    with pytest.raises(TypeError, match="rows must be a 1-D structured array"):
        call(rows=[1, 2])
    with pytest.raises(TypeError, match=r"rows lacks fields \['psfFlux'\]"):
        call(rows=np.zeros(2, dtype=[("x", "f8"), ("y", "f8")]))
    with pytest.raises(ValueError, match="rows has 1 entries but sources has 2"):
        call(rows=rows[:1])
    with pytest.raises(TypeError, match="difference must be a float32 or float64"):
        call(difference=img.astype(np.int32))
    with pytest.raises(TypeError, match="psf_d_at must be callable"):
        call(psf_d_at=psf)
    with pytest.raises(ValueError, match="science, science_variance and psf_science_at must"):
        call(science=img)
    with pytest.raises(TypeError, match="psf_template_at must be callable"):
        call(template=img, template_variance=var, psf_template_at=psf)
    with pytest.raises(ValueError, match="science must be 2-D|science must be shape"):
        call(science=img[:5], science_variance=var[:5], psf_science_at=lambda x, y: psf)
    with pytest.raises(ValueError, match="science and template must be given together"):
        call(science=img, science_variance=var, psf_science_at=lambda x, y: psf)
    with pytest.raises(ValueError, match="mask must have shape"):
        call(mask=np.zeros((3, 3), np.int32))
    with pytest.raises(TypeError, match="bad_mask_planes must be a sequence of plane names"):
        call(bad_mask_planes="BAD")
    for name, bad, msg in (
        ("rel_weight", 0.0, "rel_weight must be a finite number > 0"),
        ("snr_min", -1.0, "snr_min must be a finite number >= 0"),
        ("max_flux_ratio", 0.4, r"max_flux_ratio must be a finite number >= 0.5 and < 1"),
        ("max_flux_ratio", 1.0, r"max_flux_ratio must be a finite number >= 0.5 and < 1"),
        ("max_area", 1, "max_area must be an integer >= 2"),
        ("max_area", 3.5, "max_area must be an integer >= 2"),
        ("max_separation", math.inf, "max_separation must be a finite number > 0"),
        ("max_iter", 0, "max_iter must be an integer >= 1"),
        ("max_step", True, "max_step must be a finite number > 0"),
        ("tol", float("nan"), "tol must be a finite number > 0"),
    ):
        with pytest.raises(ValueError, match=msg):
            call(**{name: bad})


def test_merge_checks(pair_case):
    img, var, psf, found, rows = pair_case
    dip = fit_dipoles(found, rows, img, var, lambda x, y: psf)
    with pytest.raises(TypeError, match="rows must be a 1-D structured array"):
        merge_dipoles(np.zeros(2), dip)
    with pytest.raises(TypeError, match=r"dipoles must be fit_dipoles output \(DIPOLE_DTYPE\)"):
        merge_dipoles(rows, rows)
    with pytest.raises(ValueError, match="rows has 1 entries but dipoles has 2"):
        merge_dipoles(rows[:1], dip)


def test_empty_inputs():
    img = np.zeros((20, 20), np.float32)
    found = np.zeros(0, SOURCE_DTYPE)
    rows = np.zeros(0, MEASURE_DTYPE)
    dip = fit_dipoles(found, rows, img, img + 1, lambda x, y: gaussian_psf(1.5, 9))
    assert dip.shape == (0,) and dip.dtype == DIPOLE_DTYPE
    merged, mdip, index = merge_dipoles(rows, dip)
    assert merged.shape == (0,) and index.shape == (0,)


# --- stream.pipeline.dipoles ----------------------------------------------------------------------


def _tan_wcs(scale_arcsec=0.2):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [36.0, 32.0]
    s = scale_arcsec / 3600.0
    w.wcs.cd = [[-s, 0.0], [0.0, s]]  # north up, east left
    return w


def test_dipole_alert_fields_in_schema_units():
    dip = np.zeros(3, DIPOLE_DTYPE)
    for name in DIPOLE_DTYPE.names:
        if DIPOLE_DTYPE[name].kind == "f":
            dip[name] = np.nan
    # Negative -> positive along +y (north) then along +x (west), 2 px long; third not fitted.
    dip["dipoleNegX"][:2], dip["dipoleNegY"][:2] = 30.0, 30.0
    dip["dipolePosX"][:2] = [30.0, 32.0]
    dip["dipolePosY"][:2] = [32.0, 30.0]
    dip["dipoleX"][:2] = 0.5 * (dip["dipolePosX"][:2] + 30.0)
    dip["dipoleY"][:2] = 0.5 * (dip["dipolePosY"][:2] + 30.0)
    dip["dipoleLength"][:2] = 2.0
    dip["dipoleMeanFlux"][:2] = 100.0
    out = dipole_alert_fields(dip, _tan_wcs(0.2))
    np.testing.assert_allclose(out["dipoleLength"][:2], 0.4, rtol=1e-6)  # arcsec
    wrapped = (out["dipoleAngle"][:2] - [0.0, 270.0] + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-3)  # north, then west (bearing 270)
    assert np.isnan(out["dipoleLength"][2]) and np.isnan(out["dipoleAngle"][2])
    np.testing.assert_array_equal(out["dipoleMeanFlux"][:2], 100.0)


def test_measure_dipoles_step_and_alert_record():
    rng = np.random.default_rng(13)
    lobes = [(4000.0, 20.0, 20.0), (-4000.0, 23.0, 21.0), (3000.0, 55.0, 45.0)]
    img, var, psf, found, rows = _difference(rng, lobes)
    wcs = _tan_wcs()

    class Knobs:
        dipole_merge = True

    step = measure_dipoles(found, rows, difference=img, difference_variance=var,
                           psf_d_at=lambda x, y: psf, wcs=wcs, settings=Knobs())  # fmt: skip
    assert step.summary == {"nPairs": 1, "nDipoles": 1, "nMerged": 1, "nSingleLobe": 0,
                            "nSingleLobeDipoles": 0}  # fmt: skip
    assert len(step.rows) == len(step.sources) == 2
    np.testing.assert_array_equal(step.sources["x"], found["x"][step.index])
    fields = [step.row_fields(i) for i in range(2)]
    dipole = next(f for f in fields if f["dipoleFitAttempted"])
    lone = next(f for f in fields if not f["dipoleFitAttempted"])
    assert dipole["isDipole"] is np.True_ or dipole["isDipole"] is True
    # One sign, no partner: not a dipole (False), not "not measured" (null).
    assert lone["isDipole"] is False and lone["dipoleNdata"] == 0
    Knobs.dipole_fit = False  # type: ignore[attr-defined]
    off = measure_dipoles(found, rows, difference=img, difference_variance=var,
                          psf_d_at=lambda x, y: psf, wcs=wcs, settings=Knobs())  # fmt: skip
    assert all(off.row_fields(i)["isDipole"] is None for i in range(len(off.rows)))
    assert dipole["dipoleLength"] == pytest.approx(0.2 * math.hypot(3.0, 1.0), rel=0.05)
    row = {n: step.rows[n][0] for n in step.rows.dtype.names}
    row.update(fields[0])
    row.update(diaSourceId=1, ra=150.0, dec=2.0, trailNdata=0)
    rec = dia_source_record(row, visit=1, detector=2, midpoint_mjd_tai=60000.0, band="r",
                            time_processed_mjd_tai=60000.1, exposure_time=30.0,
                            ignore_extra=True)  # fmt: skip
    assert rec["dipoleNdata"] == fields[0]["dipoleNdata"]

    class Off:
        dipole_fit = False
        dipole_merge = True

    off = measure_dipoles(found, rows, difference=img, difference_variance=var,
                          psf_d_at=lambda x, y: psf, wcs=wcs, settings=Off())  # fmt: skip
    assert off.summary == {"nPairs": 0, "nDipoles": 0, "nMerged": 0, "nSingleLobe": 0,
                           "nSingleLobeDipoles": 0} and len(off.rows) == 3  # fmt: skip
    assert not off.dipoles["dipoleFitAttempted"].any()


def _ref_score_peak(score, x, y, radius, sign):
    """The NumPy formulation the kernel replaced (jitcore.dipole, issue 17)."""
    ny, nx = score.shape
    r = int(math.ceil(radius))
    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    x0, x1 = max(ix - r, 0), min(ix + r + 1, nx)
    y0, y1 = max(iy - r, 0), min(iy + r + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return -1, -1, -np.inf
    win = -float(sign) * score[y0:y1, x0:x1].astype(np.float64)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    win = np.where((np.hypot(xx - x, yy - y) <= radius) & np.isfinite(win), win, -np.inf)
    j = int(np.argmax(win))
    if win.flat[j] == -np.inf:
        return -1, -1, -np.inf
    jy, jx = divmod(j, x1 - x0)
    return x0 + jx, y0 + jy, float(win.flat[j])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "seed"), [((40, 53), 0), ((7, 90), 1), ((61, 61), 2)])
def test_score_peaks_match_numpy(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    # Integer-valued scores: ties, where the first pixel in row order must win.
    score = rng.integers(-6, 7, shape).astype(dtype)
    score[rng.random(shape) < 0.05] = np.nan
    score[rng.random(shape) < 0.02] = np.inf
    n = 80
    xs = rng.uniform(-8, shape[1] + 8, n)
    ys = rng.uniform(-8, shape[0] + 8, n)
    radius = rng.uniform(0.3, 9.0, n)
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    out = np.empty((n, 3))
    K.score_peaks(score, xs, ys, radius, sign, out)
    for k in range(n):
        assert tuple(out[k]) == _ref_score_peak(score, xs[k], ys[k], radius[k], sign[k])
    assert (out[:, 0] >= 0).sum() > n // 2  # most windows hold a peak
