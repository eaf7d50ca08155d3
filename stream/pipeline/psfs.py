"""The PSF step: both PSFs on the science grid (measured from stars, a file's HDU, a warped
template PSF, a keyword fallback never silent), the star matching, and the template's flux
scale for uncalibrated pairs."""

from __future__ import annotations

import logging

import numpy as np

from diffstream.jitcore.apcorr import aperture_correction
from diffstream.jitcore.measure import forced_psf_flux
from diffstream.jitcore.psf import PsfModel
from diffstream.jitcore.psfmeasure import measure_psf
from diffstream.jitcore.sources import find_stars
from diffstream.jitcore.starmatch import StarMatch, match_stars
from diffstream.jitcore.warp import warp_stamp
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.state import Both, Prepared
from diffstream.stream.pipeline.steps import note
from diffstream.stream.provenance.taskmeta import TaskMetadata

log = logging.getLogger(__name__)


def _analytic_fallback(psf: PsfModel, exposure: Exposure) -> bool:
    """True when ``psf`` is the keyword Gaussian, directly or warped onto the science grid."""
    file_psf = exposure.psf.source if exposure.psf is not None else None
    return psf.source == "keyword" or (psf.source == "warped" and file_psf == "keyword")


def _find_stars_or_none(image, variance, bad) -> np.ndarray | None:
    try:
        return find_stars(image, variance, bad)
    except ValueError:
        return None


def _template_psf(
    template: Exposure, image, variance, mask_bad, jacobian, settings: Settings, shape, sources
) -> PsfModel:
    """The template PSF on the science grid.

    Measured on the warped template when it has enough stars: that PSF already contains the
    rotation and the small blur of the Lanczos resampling, which a PSF from the file lacks.
    Otherwise the file's PSF is resampled through the local Jacobian of the mapping.
    """
    external = template.psf is not None and template.psf.source == "external"
    if settings.psf_from_stars and not external:
        try:
            return measure_psf(
                image, variance, mask_bad, bad_bits=1, saturation=None,
                degree=settings.psf_degree, subtract_background=False, sources=sources,
                size_sigmas=settings.psf_stamp_sigmas,
            )  # fmt: skip
        except ValueError:
            pass
    if template.psf is None:
        raise BadExposure("no PSF for the template", path=template.path)
    stamp = template.psf.at(*(np.array(template.shape[::-1]) / 2.0))
    return PsfModel.constant(warp_stamp(stamp, jacobian), shape, source="warped")


MIN_STARS_OVER_HDU = 5


def _science_psf(
    science: Exposure, image, variance, mask_bad, settings: Settings, sources
) -> PsfModel:
    """The science PSF; a file PSF (one stamp) is refined into a spatial model from stars.

    The loader already measured a spatial model when the file had no PSF HDU, so only an HDU
    stamp (the PSF at the image centre) is refined here.
    """
    psf = science.psf
    # "keyword": the loader found too few stars on the raw plane; the pipeline's plane has
    # the combined mask and background, so it tries once more before the Gaussian stays.
    if settings.psf_from_stars and (psf is None or psf.source in ("hdu", "keyword")):
        try:
            measured = measure_psf(
                image, variance, mask_bad, bad_bits=1, saturation=None,
                degree=settings.psf_degree, subtract_background=False, sources=sources,
                size_sigmas=settings.psf_stamp_sigmas,
            )  # fmt: skip
        except ValueError:
            measured = None
        # A file's PSF HDU comes from the survey's own model, made from many stars: a model
        # from a handful of ours is no improvement.  With fewer than MIN_STARS_OVER_HDU the
        # HDU stays (a 10-visit simulated field: 3-4 stars gave FWHM 1.3-4.6 px for a true
        # 3.1, and forced fluxes biased by 1 sigma; tests/science/test_apdb_sequence.py).
        # Without an HDU, 3 stars are still better than a keyword Gaussian (real DECam).
        if measured is not None and (
            psf is None or psf.source != "hdu" or measured.nstars >= MIN_STARS_OVER_HDU
        ):
            return measured
    if psf is None:
        raise BadExposure("no PSF for the science exposure", path=science.path)
    return psf


# No PSF, matching kernel or astrometric fit fits in an image narrower than this: a 1 x N
# image made the warp's Jacobian NaN and surfaced as a ValueError traceback (issue 16).


def measure_psfs(
    science: Exposure,
    template: Exposure,
    p: Prepared,
    *,
    settings: Settings,
    meta: TaskMetadata,
    both: Both,
) -> tuple[PsfModel, PsfModel, tuple[np.ndarray, np.ndarray] | None]:
    """Both PSFs on the science grid, and the star catalogues they came from (or None)."""
    with meta.timer("psf"):
        # One detection per image serves the PSF measurement and the star matching.
        s_cat, t_cat = both(
            lambda: _find_stars_or_none(p.s_img, p.s_var, p.bad),
            lambda: _find_stars_or_none(p.t_img, p.t_var, p.bad),
        )
        # Nothing usable in either: the PSF fallbacks and match_stars' own search.
        sources = None if s_cat is None or t_cat is None else (s_cat, t_cat)
        psf_s, psf_t = both(
            lambda: _science_psf(
                science, p.s_img, p.s_var, p.bad, settings, sources and sources[0]
            ),
            lambda: _template_psf(
                template, p.t_img, p.t_var, p.bad, p.jacobian, settings, science.shape,
                sources and sources[1],
            ),
        )  # fmt: skip
        cy, cx = (science.shape[0] - 1) / 2.0, (science.shape[1] - 1) / 2.0
        psf_note = {}
        for role, psf, exp in (("science", psf_s, science), ("template", psf_t, template)):
            fallback = _analytic_fallback(psf, exp)
            psf_note[role] = {"source": psf.source, "fwhm": psf.fwhm_at(cx, cy),
                              "nstars": psf.nstars, "degree": psf.degree,
                              "fallback": fallback}  # fmt: skip
            if fallback:
                # Never silent (issue 12): a Gaussian from a FWHM keyword misses the real
                # wings (psfFlux 0.81x on DECam), so the run says so where people look.
                why = exp.psf.info.get("measure_error", "") if exp.psf is not None else ""
                psf_note[role]["fallbackReason"] = why
                log.warning(
                    "%s PSF is the FWHM-keyword Gaussian (%s), not measured from its stars: "
                    "%s", role, exp.path or "in memory", why or "measurement disabled",
                )  # fmt: skip
        note(meta, "psf", psf_note)
    return psf_s, psf_t, sources


def match(
    p: Prepared,
    psf_s: PsfModel,
    psf_t: PsfModel,
    sources: tuple[np.ndarray, np.ndarray] | None,
    *,
    meta: TaskMetadata,
) -> StarMatch:
    """Matched stars: the registration scatter (ZOGY's astrometric term) and flux ratio."""
    with meta.timer("matchStars"):
        ny, nx = p.s_img.shape
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        fwhm = max(psf_s.fwhm_at(cx, cy), psf_t.fwhm_at(cx, cy))
        stars: StarMatch = match_stars(
            p.s_img, p.s_var, p.t_img, p.t_var, p.bad, aperture=3.0 * fwhm, sources=sources
        )
        note(
            meta,
            "starMatch",
            {"n": stars.n_matched, "sigmaX": stars.sigma_x, "sigmaY": stars.sigma_y,
             "fluxRatio": stars.flux_ratio, "fluxRatioErr": stars.flux_ratio_err},
        )  # fmt: skip
    return stars


def template_scale(
    science: Exposure, template: Exposure, stars: StarMatch, *, settings: Settings,
    meta: TaskMetadata,
) -> float:  # fmt: skip
    """ZOGY's F_r: 1 for calibrated pairs; the matched stars' flux ratio for uncalibrated
    counts (--allow-uncalibrated), whose throughputs differ (DECam epochs 18 vs 04: 6-9%):
    unscaled, every bright star left a point-source residual of that fraction of its flux,
    hiding sources on it (issue 12).  3 matched stars suffice (jitcore/starmatch.py).
    ``settings.template_flux_ratio``, when set, is used instead of the stars' ratio (which is
    still noted, as ``fRStars``): a calibration measured without the sources now on the
    stars."""
    f_r = 1.0
    source = "none"
    uncalibrated = science.photo_calib is None or template.photo_calib is None
    if settings.method == "zogy" and uncalibrated:
        if settings.template_flux_ratio is not None:
            f_r, source = float(settings.template_flux_ratio), "given"
        elif stars.n_matched >= 3:
            f_r, source = stars.flux_ratio, "stars"
    elif settings.template_flux_ratio is not None:
        # Calibrated pairs (and AL, which fits its own kernel sum) have their scale already.
        log.warning("template_flux_ratio %g ignored: the pair is calibrated or the method is "
                    "%s", settings.template_flux_ratio, settings.method)  # fmt: skip
        source = "ignored"
    note(meta, "photoScale", {"fR": f_r, "applied": f_r != 1.0, "source": source,
                              "fRStars": stars.flux_ratio, "nStars": stars.n_matched})  # fmt: skip
    return f_r


# Rows' PSF fluxes and the PSF whose aperture correction scales each: the difference's PSF is
# the science PSF through the matching kernel, so a new source in D loses the wings the
# science stamp lacks (checked by the star-stamp fakes of tests/science/test_real_decam.py).
_AP_CORR_FIELDS = {"science": ("psfFlux", "psfFluxErr", "scienceFlux", "scienceFluxErr"),
                   "template": ("templateFlux", "templateFluxErr")}  # fmt: skip


def aperture_corrections(
    p: Prepared, psf_s: PsfModel, psf_t: PsfModel, planes, *, settings: Settings,
    meta: TaskMetadata,
) -> dict[str, float]:  # fmt: skip
    """Per image, the factor from a PSF flux to the flux in ``ap_corr_radius`` FWHM,
    measured on that image's PSF stars (jitcore/apcorr.py).

    Only PSFs measured here have their stars at hand; a file's or an external PSF is the
    survey's model and used as given (noted, not warned).  A measured PSF whose stars cannot
    give a factor keeps 1: a WARNING and ``fallback`` in the metadata.
    """
    out: dict[str, float] = {"science": 1.0, "template": 1.0}
    if not settings.aperture_correction:
        note(meta, "apertureCorrection", {"applied": False, "reason": "disabled"})
        return out
    with meta.timer("apertureCorrection"):
        record: dict[str, dict] = {}
        ny, nx = p.s_img.shape
        for role, img, var, psf in (("science", p.s_img, p.s_var, psf_s),
                                    ("template", p.t_img, p.t_var, psf_t)):  # fmt: skip
            xy = np.asarray(psf.info.get("star_xy", []), dtype=np.float64).reshape(-1, 2)
            if psf.source != "measured" or not len(xy):
                record[role] = {"applied": False, "reason": f"PSF source {psf.source}"}
                continue
            radius = settings.ap_corr_radius * psf.fwhm_at((nx - 1) / 2.0, (ny - 1) / 2.0)
            try:
                flux, _, flag = forced_psf_flux(img, var, psf.at, xy[:, 0], xy[:, 1],
                                                mask=p.mask, mask_planes=planes)  # fmt: skip
                ac = aperture_correction(img, var, p.bad, np.where(flag, np.nan, flux),
                                         xy[:, 0], xy[:, 1], radius=radius)  # fmt: skip
            except ValueError as exc:
                record[role] = {"applied": False, "fallback": True, "reason": str(exc)}
                log.warning("%s aperture correction not measured, PSF fluxes left as fitted "
                            "(%s): %s", role, "1.0", exc)  # fmt: skip
                continue
            out[role] = ac.factor
            record[role] = {"applied": True, "factor": ac.factor, "err": ac.err,
                            "nstars": ac.nstars, "radius": ac.radius}  # fmt: skip
        note(meta, "apertureCorrection", record)
    return out


def apply_aperture_corrections(rows: np.ndarray, factors: dict[str, float]) -> None:
    """Scale the measured rows' PSF fluxes (and errors) in place by their image's factor."""
    for role, names in _AP_CORR_FIELDS.items():
        f = factors.get(role, 1.0)
        if f != 1.0 and len(rows):
            for name in names:
                rows[name] *= f
