"""stream.pipeline.warping with real astropy WCS pairs: TAN (offset + rotated), SIP, TPV."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from astropy.io.fits import Header
from astropy.wcs import WCS, FITSFixedWarning
from numpy.testing import assert_allclose, assert_array_equal

from diffstream.jitcore.coverage import template_coverage
from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.jitcore.warp import local_jacobian, mapping_grid, warp_image
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.pipeline.warping import BAD_PLANES, warp_template, wcs_mapping

pytestmark = pytest.mark.unit

SCALE = 0.2 / 3600.0  # deg / px
RA0, DEC0 = 150.0, 2.0
SCI_SHAPE = (200, 230)  # (ny, nx)
TPL_SHAPE = (260, 280)
NO_DATA = 1 << DEFAULT_PLANES["NO_DATA"]
EDGE = 1 << DEFAULT_PLANES["EDGE"]
SAT = 1 << DEFAULT_PLANES["SAT"]


def tan_header(shape, *, crval=(RA0, DEC0), rot_deg=0.0, scale=SCALE, kind="TAN"):
    ny, nx = shape
    h = Header()
    h["NAXIS"] = 2
    h["NAXIS1"], h["NAXIS2"] = nx, ny
    h["CTYPE1"], h["CTYPE2"] = f"RA---{kind}", f"DEC--{kind}"
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = (nx + 1) / 2.0, (ny + 1) / 2.0
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    # East left: CD = scale * [[-1, 0], [0, 1]] @ R(rot).
    h["CD1_1"], h["CD1_2"] = -scale * c, scale * s
    h["CD2_1"], h["CD2_2"] = scale * s, scale * c
    return h


def make_wcs(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def offset(ra, dec, dx_px, dy_px):
    """Sky position dx_px, dy_px science pixels (east-left frame) away from (ra, dec)."""
    return ra - dx_px * SCALE / math.cos(math.radians(dec)), dec + dy_px * SCALE


def science_wcs():
    return make_wcs(tan_header(SCI_SHAPE))


def template_tan():
    return make_wcs(tan_header(TPL_SHAPE, crval=offset(RA0, DEC0, 7.3, -11.6), rot_deg=1.5))


def template_sip():
    h = tan_header(TPL_SHAPE, crval=offset(RA0, DEC0, -4.2, 5.9), rot_deg=-1.2, kind="TAN-SIP")
    h["A_ORDER"], h["B_ORDER"] = 2, 2
    # ~0.1-0.3 px of distortion at the corners (u, v up to ~140 px).
    h["A_2_0"], h["A_1_1"], h["A_0_2"] = 1.2e-5, -6e-6, 4e-6
    h["B_2_0"], h["B_1_1"], h["B_0_2"] = -5e-6, 8e-6, 1.0e-5
    return make_wcs(h)


def template_tpv():
    h = tan_header(TPL_SHAPE, crval=offset(RA0, DEC0, 3.1, 2.4), rot_deg=2.0, kind="TPV")
    # TPV polynomials act on intermediate coordinates in degrees (~0.008 deg at the corners).
    pv = {
        "PV1_0": 0.0, "PV1_1": 1.0, "PV1_2": 0.0, "PV1_4": 0.08, "PV1_5": 0.03, "PV1_6": -0.05,
        "PV2_0": 0.0, "PV2_1": 1.0, "PV2_2": 0.0, "PV2_4": 0.04, "PV2_5": -0.06, "PV2_6": 0.02,
    }  # fmt: skip
    for key, value in pv.items():
        h[key] = value
    return make_wcs(h)


TEMPLATES = {"tan": template_tan, "sip": template_sip, "tpv": template_tpv}


def direct_map(sci, tpl, shape):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return wcs_mapping(sci, tpl)(x, y)


def test_distortions_are_really_present():
    """Guard against a header astropy silently reads as plain TAN (the tests would pass)."""
    sci = science_wcs()
    for name in ("sip", "tpv"):
        tpl = TEMPLATES[name]()
        plain = make_wcs(
            {"tpv": tan_header(TPL_SHAPE, crval=offset(RA0, DEC0, 3.1, 2.4), rot_deg=2.0),
             "sip": tan_header(TPL_SHAPE, crval=offset(RA0, DEC0, -4.2, 5.9), rot_deg=-1.2)}[name]
        )  # fmt: skip
        dxt, dyt = direct_map(sci, tpl, SCI_SHAPE)
        pxt, pyt = direct_map(sci, plain, SCI_SHAPE)
        assert np.max(np.hypot(dxt - pxt, dyt - pyt)) > 0.05, name


@pytest.mark.parametrize("name", ["tan", "sip", "tpv"])
@pytest.mark.parametrize("step", [32, 64])
def test_mapping_grid_matches_direct_wcs(name, step):
    sci, tpl = science_wcs(), TEMPLATES[name]()
    xt, yt = mapping_grid(wcs_mapping(sci, tpl), SCI_SHAPE, step=step)
    dxt, dyt = direct_map(sci, tpl, SCI_SHAPE)
    err = np.max(np.hypot(xt - dxt, yt - dyt))
    assert err < 0.01, err


def test_mapping_round_trip_and_offset():
    sci, tpl = science_wcs(), template_tan()
    mapping = wcs_mapping(sci, tpl)
    # The science centre sits 7.3, -11.6 px (rotated by 1.5 deg) from the template's CRPIX.
    xc, yc = (SCI_SHAPE[1] - 1) / 2.0, (SCI_SHAPE[0] - 1) / 2.0
    xt, yt = mapping(np.array([xc]), np.array([yc]))
    tx0, ty0 = (TPL_SHAPE[1] - 1) / 2.0, (TPL_SHAPE[0] - 1) / 2.0
    assert math.hypot(xt[0] - tx0, yt[0] - ty0) == pytest.approx(math.hypot(7.3, 11.6), rel=1e-3)
    back = wcs_mapping(tpl, sci)(xt, yt)
    assert_allclose([back[0][0], back[1][0]], [xc, yc], atol=1e-6)


def render(shape, positions, amplitudes, inv_covs):
    """Point-sampled Gaussians exp(-d^T M d / 2) * amplitude, M the inverse covariance."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for (x0, y0), amp, m in zip(positions, amplitudes, inv_covs, strict=True):
        dx, dy = xx - x0, yy - y0
        q = m[0, 0] * dx * dx + 2 * m[0, 1] * dx * dy + m[1, 1] * dy * dy
        out += amp * np.exp(-0.5 * q)
    return out


def numeric_jacobian(mapping, x, y, h=0.5):
    xp, yp = mapping(np.array([x + h, x - h, x, x]), np.array([y, y, y + h, y - h]))
    return np.array(
        [[(xp[0] - xp[1]) / (2 * h), (xp[2] - xp[3]) / (2 * h)],
         [(yp[0] - yp[1]) / (2 * h), (yp[2] - yp[3]) / (2 * h)]]
    )  # fmt: skip


def star_field(name, *, sigma=2.0, nstars=25, seed=11):
    """(template Exposure, science Exposure, science-frame truth) for one WCS pair."""
    rng = np.random.default_rng(seed)
    sci, tpl = science_wcs(), TEMPLATES[name]()
    ny, nx = SCI_SHAPE
    sx = rng.uniform(8, nx - 9, nstars)
    sy = rng.uniform(8, ny - 9, nstars)
    ra, dec = sci.all_pix2world(sx, sy, 0)
    tx, ty = tpl.all_world2pix(ra, dec, 0)
    amps = rng.uniform(100.0, 1000.0, nstars)
    eye = np.eye(2) / sigma**2
    template_img = render(TPL_SHAPE, list(zip(tx, ty, strict=True)), amps, [eye] * nstars)
    # In the science frame the template's circular star has inverse covariance J^T J / s^2,
    # J = d(template pix)/d(science pix) at the star (shape changes with SIP/TPV).
    mapping = wcs_mapping(sci, tpl)
    inv_covs = []
    for x0, y0 in zip(sx, sy, strict=True):
        jac = numeric_jacobian(mapping, x0, y0)
        inv_covs.append(jac.T @ jac / sigma**2)
    truth = render(SCI_SHAPE, list(zip(sx, sy, strict=True)), amps, inv_covs)
    planes = dict(DEFAULT_PLANES)
    template = Exposure(
        image=template_img.astype(np.float32),
        variance=np.ones(TPL_SHAPE, np.float32),
        mask=np.zeros(TPL_SHAPE, np.int32),
        mask_planes=planes,
        wcs=tpl,
        psf=None,
        photo_calib=1.0,
        path="template.fits",
    )
    science = Exposure(
        image=np.zeros(SCI_SHAPE, np.float32),
        variance=np.ones(SCI_SHAPE, np.float32),
        mask=np.zeros(SCI_SHAPE, np.int32),
        mask_planes=planes,
        wcs=sci,
        psf=None,
        photo_calib=1.0,
        path="science.fits",
    )
    return template, science, truth


@pytest.mark.parametrize("name", ["tan", "sip", "tpv"])
def test_warped_star_field_matches_direct_rendering(name):
    template, science, truth = star_field(name)
    image, variance, mask, jac = warp_template(template, science)
    assert image.shape == SCI_SHAPE and image.dtype == np.float32
    assert mask.dtype == np.int32 and variance.dtype == np.float32
    good = (mask & NO_DATA) == 0
    # The template (260x280, offset by < 12 px) covers the whole science frame.
    assert good.all()
    assert template_coverage(mask, no_data_bit=NO_DATA) == 1.0
    peak = truth.max()
    err = np.max(np.abs(image[good] - truth[good])) / peak
    assert err < 0.01, err
    # Same pixel scale, small rotation: J is a near-rotation with |det| ~ 1.
    assert abs(np.linalg.det(jac) - 1) < 0.01
    sci_c = ((SCI_SHAPE[1] - 1) // 2, (SCI_SHAPE[0] - 1) // 2)
    want = numeric_jacobian(wcs_mapping(science.wcs, template.wcs), *sci_c)
    assert_allclose(jac, want, atol=1e-6)


def test_warp_template_rotation_sign_in_jacobian():
    template, science, _ = star_field("tan", nstars=1)
    *_, jac = warp_template(template, science)
    # Template pixels rotated by +1.5 deg relative to science: J = R(-1.5 deg) or R(+1.5 deg)
    # depending on handedness; either way the off-diagonal terms are +-sin(1.5 deg).
    angle = math.degrees(math.atan2(jac[1, 0], jac[0, 0]))
    assert abs(abs(angle) - 1.5) < 1e-3
    assert_allclose(jac[0, 1], -jac[1, 0], atol=1e-6)


def test_warp_template_masks_partial_overlap_and_planes():
    template, science, _ = star_field("tan", nstars=3)
    # Shift the template's WCS so it covers only part of the science frame.
    h = tan_header(TPL_SHAPE, crval=offset(RA0, DEC0, 7.3 + 150.0, -11.6), rot_deg=1.5)
    template.wcs = make_wcs(h)
    template.mask[100:105, 20:25] = SAT
    template.mask[:, :2] |= 1 << DEFAULT_PLANES["BAD"]
    image, variance, mask, _ = warp_template(template, science)
    nodata = (mask & NO_DATA) != 0
    cov = template_coverage(mask, no_data_bit=NO_DATA)
    # The geometry fixes the coverage: science pixels whose sky position falls on the
    # template, computed here with astropy alone (the warp may lose a kernel's margin).
    yy, xx = np.mgrid[: science.shape[0], : science.shape[1]]
    tx, ty = template.wcs.world_to_pixel_values(*science.wcs.pixel_to_world_values(xx, yy))
    inside = (tx >= 0) & (tx <= TPL_SHAPE[1] - 1) & (ty >= 0) & (ty <= TPL_SHAPE[0] - 1)
    assert 0.2 < inside.mean() < 0.8  # the premise: a partial overlap
    assert cov == pytest.approx(inside.mean(), abs=0.02)
    assert np.all(np.isnan(image[nodata])) and np.all(np.isnan(variance[nodata]))
    assert np.all(np.isfinite(image[~nodata]))
    assert np.any(mask & EDGE)  # the cut through the template is marked EDGE as well
    # SAT is carried (dilated), not turned into NO_DATA.
    sat = (mask & SAT) != 0
    assert sat.any() and not np.any(sat & nodata & ((mask & EDGE) == 0))


def test_no_overlap_far_away_template_is_all_no_data():
    template, science, _ = star_field("tan", nstars=1)
    # On the other side of the sky a TAN projection cannot reach the science pixels.
    template.wcs = make_wcs(tan_header(TPL_SHAPE, crval=(RA0 + 180.0, -DEC0)))
    image, _, mask, jac = warp_template(template, science)
    assert template_coverage(mask, no_data_bit=NO_DATA) == 0.0
    assert np.all(np.isnan(image))
    assert np.all(np.isnan(jac))


def test_warp_template_validation():
    template, science, _ = star_field("tan", nstars=1)
    planes = dict(template.mask_planes)
    del planes["NO_DATA"]
    template.mask_planes = planes
    with pytest.raises(BadExposure, match="template.fits: template mask planes must include"):
        warp_template(template, science)
    template, science, _ = star_field("tan", nstars=1)
    h = Header()
    h["NAXIS"] = 2
    h["CTYPE1"], h["CTYPE2"] = "LINEAR", "LINEAR"
    science.wcs = make_wcs(h)
    with pytest.raises(BadExposure, match="science.fits: science WCS must be a 2-axis celestial"):
        warp_template(template, science)
    template, science, _ = star_field("tan", nstars=1)
    template.wcs = "not a wcs"
    with pytest.raises(BadExposure, match="template WCS must be an astropy.wcs.WCS, got str"):
        warp_template(template, science)


def test_wcs_mapping_validation_and_shapes():
    sci, tpl = science_wcs(), template_tan()
    with pytest.raises(TypeError, match="science_wcs must be an astropy.wcs.WCS, got dict"):
        wcs_mapping({}, tpl)
    with pytest.raises(ValueError, match="template_wcs must be a 2-axis celestial WCS"):
        wcs_mapping(sci, make_wcs(Header({"NAXIS": 1, "CTYPE1": "WAVE"})))
    mapping = wcs_mapping(sci, tpl)
    xt, yt = mapping(np.zeros((3, 4)), np.ones((3, 4)))
    assert xt.shape == (3, 4) and yt.shape == (3, 4)


# --- warp_template: the fused, threaded warp against the full-frame path ------------------
def full_frame_warp(template, science, mapping):
    """warp_template as it was built before the fused kernel: full-frame xt/yt, then
    warp_image on one thread, and the Jacobian searched on the full grid."""
    planes = template.mask_planes
    xt, yt = mapping_grid(mapping, science.shape)
    edge = 1 << planes["EDGE"]
    bad = sum(1 << planes[p] for p in BAD_PLANES)
    out = warp_image(template.image, template.variance, template.mask, xt, yt,
                     no_data_bit=1 << planes["NO_DATA"], edge_bit=edge, bad_bits=bad,
                     workers=None)  # fmt: skip
    ny, nx = xt.shape
    cx, cy = (nx - 1) // 2, (ny - 1) // 2
    finite = np.isfinite(xt) & np.isfinite(yt)
    ok = np.zeros_like(finite)
    ok[1:-1, 1:-1] = (finite[1:-1, 1:-1] & finite[:-2, 1:-1] & finite[2:, 1:-1]
                      & finite[1:-1, :-2] & finite[1:-1, 2:])  # fmt: skip
    jj, ii = np.nonzero(ok)
    k = int(np.argmin((ii - cx) ** 2 + (jj - cy) ** 2))
    return (*out, local_jacobian(xt, yt, int(ii[k]), int(jj[k])))


@pytest.mark.parametrize("workers", [None, 2, -1])
@pytest.mark.parametrize("left_half_missing", [False, True])
def test_warp_template_equals_full_frame_path(workers, left_half_missing):
    template, science, _ = star_field("sip", nstars=10)
    wcs_map = wcs_mapping(science.wcs, template.wcs)

    def mapping(x, y):
        # Optionally no template left of x = 140: the centre (x = 114) has no map, so the
        # Jacobian comes from the nearest pixel that has one.
        xt, yt = wcs_map(x, y)
        return (np.where(x < 140, np.nan, xt), yt) if left_half_missing else (xt, yt)

    got = warp_template(template, science, mapping=mapping, workers=workers)
    want = full_frame_warp(template, science, mapping)
    for a, b in zip(got[:3], want[:3], strict=True):
        assert_array_equal(a, b)
    assert_array_equal(got[3], want[3])
    assert np.all(np.isfinite(got[3]))
    assert np.isnan(got[0]).any() == left_half_missing


def test_warp_template_workers_validation():
    template, science, _ = star_field("tan", nstars=1)
    with pytest.raises(TypeError, match="workers must be an int or None, got str"):
        warp_template(template, science, workers="2")
