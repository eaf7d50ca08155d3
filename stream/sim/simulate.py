"""Seeded simulator of science/template exposure pairs with known difference sources.

:func:`simulate_pair` renders a science exposure and a deeper template of the same patch of
sky, with different seeing, photometric scale, pointing and rotation, plus a truth table of
injected difference sources (new transients, brightening and fading variables) whose ideal S/N
on the difference image spans a requested range.  :func:`write_exposure` / :func:`write_pair`
(from :mod:`diffstream.stream.sim.fits`) write them as LSST-like multi-extension FITS (or a plain
single-HDU image).  Used by ``diffstream demo``, the science tests and the benchmarks;
everything is fixed by ``seed``.  The data model (:class:`Instrument`, :class:`SimImage`,
:class:`SimPair`) is in :mod:`stream.sim.model`, the pixels in :mod:`stream.sim.render`.

Model (units: electrons for noise, counts = electrons / gain in the written images, nJy for
calibrated fluxes, ``photo_calib`` nJy per count):

* Science: one ``exptime`` exposure, gain ``g``, read noise ``rn`` e-, full well ``fw`` e-.
  Template: a coadd of ``template_depth`` such exposures in its own count unit (gain
  ``template_gain``), so its sky-noise variance relative to flux is ``template_depth`` times
  lower and its ``photo_calib`` differs.
* PSF: pixel-integrated Gaussian, sigma = FWHM / 2.3548 at the image centre, varying linearly
  by ``psf_gradient`` across the field (in each image along its own random direction); or a
  Moffat of that FWHM whose index beta varies too (``psf_profile``).  Rendered by the
  simulator's own :mod:`diffstream.stream.sim.psf`, never by the pipeline's PSF code.
* Optional (all off by default, so earlier pairs are unchanged): defects in the template,
  sources free to sit on defects, Sersic host galaxies under transients, correlated
  (resampled) template noise; see :func:`simulate_pair`.
* Pixels: Poisson(sky + sources) in electrons + Gaussian read noise; pixels at or above the
  full well are clipped to SATURATE and flagged SAT (charge bled along the columns first).
  The variance plane is the expected variance ``(sky + sources) / g + (rn / g)^2`` (counts^2).
  With ``sky_subtracted`` (the default, like an LSST calexp/coadd) the known sky is removed.
* Truth S/N (``snr_expected``): ``|flux_diff| / sigma_F`` with
  ``sigma_F^2 = 1/F_S + Q_n c_n / g_n F_sci + Q_r c_r / g_r F_tmpl`` (nJy^2), where F_S is ZOGY's
  flux-estimate normaliser for the two PSFs at the source and the two local background noises
  in nJy (:func:`stream.sim.render.zogy_flux_variance`), ``Q = sum P^3 / (sum P^2)^2`` turns
  a source's own photon noise into PSF-fit flux variance, ``c`` is photo_calib, ``F_sci`` and
  ``F_tmpl`` are the source's total fluxes (nJy) in each image.  Ignored: the template's
  resampling, PSF ellipticity/rotation in F_S, sub-pixel phase.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS, Sip

from diffstream.jitcore.masks import DEFAULT_PLANES, MASK_DTYPE
from diffstream.stream.sim import galaxies, render, trails

# The data model and the FITS writers live in stream.sim.model and stream.sim.fits;
# they are imported here (listed in __all__, or as ``X as X``) so that
# ``from diffstream.stream.sim.simulate import write_pair`` and the like keep working.
from diffstream.stream.sim.fits import CALIB_KEYWORDS as CALIB_KEYWORDS
from diffstream.stream.sim.fits import LAYOUTS as LAYOUTS
from diffstream.stream.sim.fits import write_exposure, write_pair, write_truth_csv
from diffstream.stream.sim.model import AB_NJY as AB_NJY
from diffstream.stream.sim.model import Instrument, SimImage, SimPair
from diffstream.stream.sim.psf import PROFILES, PsfProfile

STAR_DTYPE = render.STAR_DTYPE
TRUTH_DTYPE = render.TRUTH_DTYPE

__all__ = [
    "STAR_DTYPE",
    "TRUTH_DTYPE",
    "Instrument",
    "SimImage",
    "SimPair",
    "simulate_pair",
    "write_exposure",
    "write_pair",
    "write_truth_csv",
]

WCS_KINDS = ("tan", "sip")


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def _check_shape(name: str, shape) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a pair of ints (ny, nx), got {shape!r}") from exc
    if ny < 64 or nx < 64:
        raise ValueError(f"{name} must be at least 64 x 64 pixels, got {shape!r}")
    return ny, nx


def _tan_wcs(crval, crpix, cd) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(crval[0]), float(crval[1])]
    w.wcs.crpix = [float(crpix[0]), float(crpix[1])]
    w.wcs.cd = np.asarray(cd, dtype=np.float64)
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def _add_sip(w: WCS, rng: np.random.Generator, shape: tuple[int, int]) -> WCS:
    """Order-2 SIP with ~1 px distortion at the corners (small, like a fitted CCD)."""
    ny, nx = shape
    r2 = (0.5 * max(nx, ny)) ** 2
    a = np.zeros((3, 3))
    b = np.zeros((3, 3))
    for i, j in ((2, 0), (1, 1), (0, 2)):
        a[i, j] = rng.uniform(-0.5, 0.5) / r2
        b[i, j] = rng.uniform(-0.5, 0.5) / r2
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.set()
    return w


def _border_points(shape: tuple[int, int], margin: float, n: int = 33) -> np.ndarray:
    ny, nx = shape
    xs = np.linspace(-margin, nx - 1 + margin, n)
    ys = np.linspace(-margin, ny - 1 + margin, n)
    return np.concatenate(
        [
            np.column_stack([xs, np.full(n, ys[0])]),
            np.column_stack([xs, np.full(n, ys[-1])]),
            np.column_stack([np.full(n, xs[0]), ys]),
            np.column_stack([np.full(n, xs[-1]), ys]),
        ]
    )


def _template_wcs(sci_wcs: WCS, shape, offset, rotation_deg, template_shape, margin):
    """Template TAN WCS: centred on the science centre + offset, rotated; shape to cover."""
    ny, nx = shape
    centre = np.array([(nx - 1) / 2 + offset[0], (ny - 1) / 2 + offset[1]])
    crval = sci_wcs.all_pix2world(centre[None, :], 0)[0]
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cd = sci_wcs.wcs.cd @ rot
    if template_shape is None:
        # Map the science border (plus margin) through the sky into a template frame centred
        # on pixel 0, then size the template to hold it: exact, SIP included.
        probe = _tan_wcs(crval, (1.0, 1.0), cd)
        sky = sci_wcs.all_pix2world(_border_points(shape, margin), 0)
        pt = probe.wcs_world2pix(sky, 0)
        half = np.ceil(np.abs(pt).max(axis=0))
        template_shape = (int(2 * half[1] + 1), int(2 * half[0] + 1))
    nty, ntx = template_shape
    return _tan_wcs(crval, ((ntx - 1) / 2 + 1, (nty - 1) / 2 + 1), cd), (nty, ntx)


def simulate_pair(
    *,
    seed: int,
    shape=(1024, 1024),
    template_shape=None,
    n_stars: int = 400,
    n_transients: int = 60,
    n_variables: int = 20,
    science_fwhm: float = 3.0,
    template_fwhm: float = 2.4,
    template_depth: float = 4.0,
    psf_gradient: float = 0.10,
    template_offset_px=(7.3, -4.6),
    template_rotation_deg: float = 1.5,
    n_saturated: int = 3,
    n_cosmic_rays: int = 15,
    n_bad_columns: int = 2,
    n_cosmic_rays_template: int = 0,
    n_bad_columns_template: int = 0,
    avoid_defects: bool = True,
    psf_profile: str = "gaussian",
    moffat_beta: float = 3.0,
    moffat_beta_gradient: float = 0.0,
    n_hosted: int = 0,
    resampled_template_noise: float = 0.0,
    snr_range=(5.0, 60.0),
    transients: bool = True,
    wcs_kind: str = "tan",
    band: str = "r",
    instrument: Instrument | None = None,
    psf_ellipticity: float = 0.0,
    sky_gradient: float = 0.0,
    sky_subtracted: bool = True,
    bleed: bool = True,
    edge_px: int = 0,
    star_slope: float = 0.8,
    bright_snr: float = 50.0,
    min_separation_px: float = 15.0,
    edge_margin_px: float = 20.0,
    sky_centre: tuple[float, float] | None = None,
    n_trails: int = 0,
    trail_length_px: tuple[float, float] = (5.0, 40.0),
    trail_snr: tuple[float, float] = (20.0, 60.0),
    streaks: tuple[tuple[float, float, float, float], ...] = (),
    streak_peak_snr: float = 3.0,
) -> SimPair:
    """Simulate a science/template pair; see the module docstring for the model.

    Sizes in pixels, FWHMs in pixels at the image centre, ``template_offset_px`` is where the
    template's centre falls in science pixels relative to the science centre, and
    ``template_rotation_deg`` its rotation on the sky.  ``template_shape=None`` sizes the
    template to cover the science footprint plus 32 px; a given (smaller) shape may cover only
    part of it (difference sources are then placed only where both images have data).
    ``snr_range`` bounds ``snr_expected`` (log-uniform, stratified so that every S/N bin gets
    its share).  Stars: ``n_stars`` per science-image area, cumulative counts N(>F) ~
    F^-star_slope from S/N 3 up to half the saturation level, plus ``n_saturated`` saturated
    ones (peak 3-30 x the full well, bled along columns when ``bleed``).  Difference sources
    keep ``edge_margin_px`` from the edges and ``min_separation_px`` from each other, from
    stars with science S/N > ``bright_snr``, from SAT pixels and from bad columns.
    ``transients=False`` gives the same stars with no difference sources.  ``edge_px`` flags
    a border band EDGE in the science mask.  ``n_cosmic_rays_template`` and
    ``n_bad_columns_template`` put defects (flagged CR / BAD) in the template too, in its own
    pixel frame.  ``avoid_defects=False`` stops difference sources from keeping clear of bad
    columns and cosmic rays (the test of defect interpolation, issue 12); the sources, stars
    and geometry are then the same whatever the defects.  Raises ValueError on invalid input
    or when the sources cannot be placed.  ``psf_profile="moffat"`` gives both images Moffat
    PSFs (wings) of index ``moffat_beta`` at the centre, changing by
    ``moffat_beta_gradient`` across each field along its own direction
    (:class:`diffstream.stream.sim.psf.PsfProfile`).  ``n_hosted`` of the transients sit on
    Sersic host galaxies (:mod:`diffstream.stream.sim.galaxies`; their truth S/N counts the
    host's light).  ``resampled_template_noise`` f in [0, 0.5] gives the template the
    correlated noise of a resampled coadd: its noise is shifted by f px in x and y with
    bilinear weights, which lowers the per-pixel scatter by ((1-f)^2 + f^2)^2 (the variance
    plane follows, as a warper propagating variance per pixel would) while the noise a
    matched filter sees stays nearly what it was.  ``n_trails`` fast movers (science only,
    :mod:`diffstream.stream.sim.trails`: length uniform in ``trail_length_px``, random angle,
    S/N log-uniform in ``trail_snr``) go in ``SimPair.trails``.  ``streaks``: satellite
    streaks (x0, y0, x1, y1) on the science, their ridge ``streak_peak_snr`` times the
    per-pixel background noise (recorded in ``params["streaks"]``).
    """
    ny, nx = _check_shape("shape", shape)
    if template_shape is not None:
        template_shape = _check_shape("template_shape", template_shape)
    counts = {
        "n_stars": n_stars,
        "n_transients": n_transients,
        "n_variables": n_variables,
        "n_saturated": n_saturated,
        "n_cosmic_rays": n_cosmic_rays,
        "n_bad_columns": n_bad_columns,
        "n_cosmic_rays_template": n_cosmic_rays_template,
        "n_bad_columns_template": n_bad_columns_template,
        "n_hosted": n_hosted,
        "edge_px": edge_px,
        "n_trails": n_trails,
    }
    for name, count in counts.items():
        if int(count) != count or count < 0:
            raise ValueError(f"{name} must be an int >= 0, got {count!r}")
    for name, value in (
        ("science_fwhm", science_fwhm),
        ("template_fwhm", template_fwhm),
        ("template_depth", template_depth),
        ("star_slope", star_slope),
    ):
        _check_positive(name, value)
    for name, fraction, high in (
        ("psf_gradient", psf_gradient, 1.0),
        ("sky_gradient", sky_gradient, 1.0),
        ("psf_ellipticity", psf_ellipticity, 0.5),
    ):
        if not 0.0 <= fraction < high:
            raise ValueError(f"{name} must be in [0, {high:g}), got {fraction!r}")
    lo_snr, hi_snr = (float(v) for v in snr_range)
    if not 0 < lo_snr <= hi_snr < math.inf:
        raise ValueError(f"snr_range must satisfy 0 < low <= high < inf, got {snr_range!r}")
    if not 0.0 <= resampled_template_noise <= 0.5:
        raise ValueError(
            f"resampled_template_noise must be in [0, 0.5], got {resampled_template_noise!r}"
        )
    if n_hosted > n_transients:
        raise ValueError(f"n_hosted must be <= n_transients ({n_transients}), got {n_hosted}")
    if psf_profile not in PROFILES:
        raise ValueError(f"psf_profile must be one of {PROFILES}, got {psf_profile!r}")
    if wcs_kind not in WCS_KINDS:
        raise ValueError(f"wcs_kind must be one of {WCS_KINDS}, got {wcs_kind!r}")
    inst = instrument or Instrument()
    if inst.full_well <= 4 * inst.sky_rate * inst.exptime:
        raise ValueError(
            f"instrument full_well {inst.full_well:g} e- must exceed 4 x the sky "
            f"({inst.sky_rate * inst.exptime:g} e-) to leave room for unsaturated stars"
        )

    # One independent stream per ingredient: switching transients off (or changing how many
    # cosmic rays there are) leaves the geometry, the stars and the other defects unchanged.
    # spawn(n)[:8] does not depend on n, so the template's defect streams (added later) left
    # every earlier pair unchanged.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(13)]
    rng_geom, rng_star, rng_diff, rng_nsci, rng_ntmp, rng_cr, rng_bad, rng_meta = streams[:8]
    rng_cr_t, rng_bad_t, rng_beta, rng_gal, rng_trail = streams[8:]

    sci, tmp = _frames(
        rng_geom,
        inst,
        (ny, nx),
        template_shape,
        sky_centre=sky_centre,
        wcs_kind=wcs_kind,
        offset=template_offset_px,
        rotation_deg=template_rotation_deg,
        fwhm=(science_fwhm, template_fwhm),
        depth=template_depth,
        psf_gradient=psf_gradient,
        sky_gradient=sky_gradient,
    )
    if psf_profile != "gaussian":
        # Its own stream: the Gaussian pairs of every seed stay as they were.
        beta_angles = rng_beta.uniform(0, 2 * math.pi, 2)
        for frame, angle in zip((sci, tmp), beta_angles, strict=True):
            frame.profile = PsfProfile(
                kind=psf_profile, beta=moffat_beta, beta_gradient=moffat_beta_gradient,
                angle=float(angle), shape=frame.shape,
            )  # fmt: skip
    stars = render.draw_stars(
        rng_star,
        sci,
        tmp,
        n_stars=n_stars,
        n_saturated=n_saturated,
        slope=star_slope,
        bright_snr=bright_snr,
        ellipticity=psf_ellipticity,
    )
    sci_model = render.static_model(sci, stars, "x", "y", ellipticity=psf_ellipticity, bleed=bleed)
    tmp_model = render.static_model(
        tmp, stars, "x_template", "y_template", ellipticity=psf_ellipticity, bleed=bleed
    )
    # Bad-column geometry is drawn now so that difference sources can avoid it.
    bad_cols = _bad_columns(rng_bad, n_bad_columns, (ny, nx))
    bad_cols_t = _bad_columns(rng_bad_t, n_bad_columns_template, tmp.shape)

    truth = np.zeros(0, dtype=TRUTH_DTYPE)
    if transients and n_transients + n_variables:
        truth = render.difference_sources(
            rng_diff,
            sci,
            tmp,
            stars,
            sci_sat=sci_model >= sci.full_well,
            tmp_sat=tmp_model >= tmp.full_well,
            bad_cols=bad_cols if avoid_defects else [],
            n_transients=n_transients,
            n_variables=n_variables,
            snr=(lo_snr, hi_snr),
            min_sep=min_separation_px,
            margin=edge_margin_px,
            ellipticity=psf_ellipticity,
        )
        if n_hosted:
            hosts = galaxies.place_hosts(rng_gal, truth, sci, tmp, n_hosted)
            host_e = [
                galaxies.add_galaxies(
                    model, frame, hosts, xk, yk, thk, ellipticity=psf_ellipticity
                )  # fmt: skip
                for frame, model, xk, yk, thk in (
                    (sci, sci_model, "x", "y", "theta"),
                    (tmp, tmp_model, "x_template", "y_template", "theta_template"),
                )
            ]
            galaxies.rescore(truth, hosts, sci, tmp, *host_e, ellipticity=psf_ellipticity)
        for frame, model, xk, yk, fk in (
            (sci, sci_model, "x", "y", "flux_science_njy"),
            (tmp, tmp_model, "x_template", "y_template", "flux_template_njy"),
        ):
            render.add_point_sources(
                model,
                truth[xk],
                truth[yk],
                frame.electrons(truth[fk]),
                frame.sigma_map(truth[xk], truth[yk]),
                ellipticity=psf_ellipticity,
                profile=frame.profile,
            )

    trail_truth = np.zeros(0, dtype=trails.TRAIL_TRUTH_DTYPE)
    if n_trails:
        bright = stars[stars["bright"]]
        avoid = np.concatenate([np.column_stack([truth["x"], truth["y"]]),
                                np.column_stack([bright["x"], bright["y"]])])  # fmt: skip
        trail_truth = trails.draw_trails(
            rng_trail, sci, tmp, n_trails, length_px=trail_length_px, snr=trail_snr,
            avoid_xy=avoid, min_sep=min_separation_px, margin=edge_margin_px,
        )  # fmt: skip
        trails.add_trails(sci_model, sci, trail_truth)
    for ends in streaks:
        trails.add_streak(sci_model, sci, ends, streak_peak_snr)

    planes = dict(DEFAULT_PLANES)
    sci_e = render.noisy(rng_nsci, sci, sci_model)
    sci_mask = np.zeros((ny, nx), dtype=MASK_DTYPE)
    cr_low = 40 * sci.read_noise + 20 * math.sqrt(sci.sky_e_centre)  # >> noise in any setup
    render.add_cosmic_rays(
        sci_e,
        sci_mask,
        planes["CR"],
        rng_cr,
        n_cosmic_rays,
        avoid=np.column_stack([truth["x"], truth["y"]]),
        avoid_radius=10.0 if avoid_defects else 0.0,
        level_e=(cr_low, max(0.3 * sci.full_well, 2 * cr_low)),
    )
    sci_raw, sci_var = render.read_out(sci, sci_model, sci_e, sci_mask, planes)
    render.add_bad_columns(
        sci_raw,
        sci_mask,
        planes["BAD"],
        rng_bad,
        bad_cols,
        sky=sci.sky_e_centre / sci.gain,
        saturation=sci.full_well / sci.gain,
    )
    if edge_px:
        edge = np.ones((ny, nx), dtype=bool)
        edge[edge_px:-edge_px, edge_px:-edge_px] = False
        sci_mask[edge] |= np.int32(1 << planes["EDGE"])
    tmp_mask = np.zeros(tmp.shape, dtype=MASK_DTYPE)
    tmp_e = render.noisy(rng_ntmp, tmp, tmp_model)
    if resampled_template_noise:
        tmp_e = tmp_model + _bilinear_shift(tmp_e - tmp_model, resampled_template_noise)
    render.add_cosmic_rays(
        tmp_e,
        tmp_mask,
        planes["CR"],
        rng_cr_t,
        n_cosmic_rays_template,
        avoid=np.column_stack([truth["x_template"], truth["y_template"]]),
        avoid_radius=10.0 if avoid_defects else 0.0,
        level_e=(cr_low, max(0.3 * sci.full_well, 2 * cr_low)),
    )
    tmp_raw, tmp_var = render.read_out(tmp, tmp_model, tmp_e, tmp_mask, planes)
    if resampled_template_noise:
        f = resampled_template_noise
        tmp_var *= ((1 - f) ** 2 + f**2) ** 2
    render.add_bad_columns(
        tmp_raw,
        tmp_mask,
        planes["BAD"],
        rng_bad_t,
        bad_cols_t,
        sky=tmp.sky_e_centre / tmp.gain,
        saturation=tmp.full_well / tmp.gain,
    )

    mjd_sci = float(60300.0 + rng_meta.uniform(0, 700))
    mjd_tmp = float(mjd_sci - rng_meta.uniform(200, 600))
    visit_sci, visit_tmp = (int(v) for v in rng_meta.integers(10**9, 2 * 10**9, 2))
    detector = int(rng_meta.integers(0, 189))
    size = sci.stamp_size(
        max(sci.sigma_map.sigma0, tmp.sigma_map.sigma0) * (1 + psf_gradient),
        ellipticity=psf_ellipticity,
    )

    def sim_image(frame, raw, variance, mask, mjd, exptime, visit) -> SimImage:
        if sky_subtracted:
            raw -= frame.sky_e / frame.gain
        cy, cx = (frame.shape[0] - 1) / 2, (frame.shape[1] - 1) / 2
        return SimImage(
            image=raw.astype(np.float32),
            variance=variance.astype(np.float32),
            mask=mask,
            wcs=frame.wcs,
            psf_sigma_map=frame.sigma_map,
            psf_centre=frame.psf_stamp(cx, cy, size, ellipticity=psf_ellipticity),
            psf_profile=frame.profile,
            photo_calib=frame.calib,
            gain=frame.gain,
            read_noise=frame.read_noise,
            sky=frame.sky_e_centre / frame.gain,
            saturation=frame.full_well / frame.gain,
            mjd_obs=mjd,
            exptime=exptime,
            band=band,
            visit=visit,
            detector=detector,
            sky_subtracted=sky_subtracted,
            sky_max=float(frame.sky_e.max() / frame.gain),
            psf_ellipticity=psf_ellipticity,
            mask_planes=dict(planes),
        )

    params = {
        "seed": seed,
        "shape": (ny, nx),
        "template_shape": tmp.shape,
        "science_fwhm": science_fwhm,
        "template_fwhm": template_fwhm,
        "template_depth": template_depth,
        "psf_gradient": psf_gradient,
        "template_offset_px": tuple(template_offset_px),
        "template_rotation_deg": template_rotation_deg,
        "wcs_kind": wcs_kind,
        "snr_range": (lo_snr, hi_snr),
        "transients": transients,
        "bad_columns": bad_cols,
        "bad_columns_template": bad_cols_t,
        "psf_profile": psf_profile,
        "moffat_beta": moffat_beta,
        "moffat_beta_gradient": moffat_beta_gradient,
        "resampled_template_noise": resampled_template_noise,
        "streaks": [tuple(float(v) for v in e) for e in streaks],
    }
    return SimPair(
        science=sim_image(sci, sci_raw, sci_var, sci_mask, mjd_sci, inst.exptime, visit_sci),
        template=sim_image(
            tmp, tmp_raw, tmp_var, tmp_mask, mjd_tmp, inst.exptime * template_depth, visit_tmp
        ),
        truth=truth,
        stars=stars,
        params=params,
        trails=trail_truth,
    )


def _bilinear_shift(noise: np.ndarray, f: float) -> np.ndarray:
    """``noise`` resampled at a shift of f px in x and y (bilinear weights, edges repeated)."""
    p = np.pad(noise, ((0, 1), (0, 1)), mode="edge")
    return ((1 - f) ** 2 * p[:-1, :-1] + f * (1 - f) * (p[:-1, 1:] + p[1:, :-1])
            + f * f * p[1:, 1:])  # fmt: skip


def _bad_columns(rng, n: int, shape: tuple[int, int]) -> list[tuple[int, int, int]]:
    """``n`` (x, y0, y1) column segments: half of them whole columns, half from a random row."""
    ny, nx = shape
    cols = []
    for _ in range(n):
        x = int(rng.integers(8, nx - 8))
        y0 = int(rng.integers(0, ny // 2)) if rng.random() < 0.5 else 0
        cols.append((x, y0, ny))
    return cols


def _frames(
    rng,
    inst: Instrument,
    shape,
    template_shape,
    *,
    sky_centre,
    wcs_kind,
    offset,
    rotation_deg,
    fwhm,
    depth,
    psf_gradient,
    sky_gradient,
):
    """Science and template frames: WCSs, PSF maps, skies, detector constants."""
    ny, nx = shape
    if sky_centre is None:
        sky_centre = (float(rng.uniform(20, 340)), float(rng.uniform(-60, 20)))
    scale = inst.pixel_scale_arcsec / 3600.0
    sci_wcs = _tan_wcs(sky_centre, ((nx - 1) / 2 + 1, (ny - 1) / 2 + 1), [[-scale, 0], [0, scale]])
    if wcs_kind == "sip":
        sci_wcs = _add_sip(sci_wcs, rng, shape)
    tmp_wcs, tshape = _template_wcs(sci_wcs, shape, offset, rotation_deg, template_shape, 32.0)
    angles = rng.uniform(0, 2 * math.pi, 4)  # PSF and sky gradient directions
    frames = []
    # The template is a coadd of `depth` science-like exposures in its own count unit.
    for k, (fshape, wcs, gain, t, n_exp) in enumerate(
        (
            (shape, sci_wcs, inst.gain, inst.exptime, 1.0),
            (tshape, tmp_wcs, inst.template_gain, inst.exptime * depth, depth),
        )
    ):
        sky_e = inst.sky_rate * t
        frames.append(
            render.Frame(
                shape=fshape,
                wcs=wcs,
                sigma_map=render.LinearSigmaMap(
                    fwhm[k] / render.FWHM_PER_SIGMA, psf_gradient, float(angles[k]), fshape
                ),
                gain=gain,
                read_noise=inst.read_noise * math.sqrt(n_exp),
                full_well=inst.full_well * n_exp,
                calib=gain * inst.njy_per_e_s / t,
                sky_e=render.sky_map(fshape, sky_e, sky_gradient, float(angles[2 + k])),
                sky_e_centre=sky_e,
            )
        )
    return frames[0], frames[1]
