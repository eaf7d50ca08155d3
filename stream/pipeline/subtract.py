"""The subtraction pipeline: two exposures in, diaSources and alerts out.

One function, :func:`subtract_exposures`, used by ``diffstream subtract`` and by the stream
worker alike (only the transport differs).  Every step is timed under ``imageDifference.*``
and its numbers go to the task metadata; the numerics live in ``jitcore``.

Steps (the seed ImageDifferenceTask's order): load -> warp -> template coverage check ->
photometric scaling -> background -> PSFs -> star matching -> ZOGY -> detection ->
measurement -> ids -> alerts.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from astropy.time import Time

from diffstream import __version__
from diffstream.jitcore.alardlupton import ALInfo, al_subtract
from diffstream.jitcore.background import subtract_background
from diffstream.jitcore.coverage import template_coverage
from diffstream.jitcore.detect import detect
from diffstream.jitcore.masks import UNUSABLE_PLANES, bits, remap
from diffstream.jitcore.measure import measure
from diffstream.jitcore.noise import diffim_scale_factors, variance_scale_factor
from diffstream.jitcore.planes import combine_planes
from diffstream.jitcore.psf import PsfModel
from diffstream.jitcore.psfmeasure import find_stars, measure_psf
from diffstream.jitcore.starmatch import StarMatch, match_stars
from diffstream.jitcore.tiles import thread_count
from diffstream.jitcore.warp import warp_stamp
from diffstream.jitcore.zogy import ZogyResult, zogy
from diffstream.stream.alerts.cutouts import CutoutMaker
from diffstream.stream.alerts.diasources import assign_ids, dia_source_records
from diffstream.stream.alerts.packets import make_alert
from diffstream.stream.io.calibrated import apply_external
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.io.fitsio import load_exposure, load_options
from diffstream.stream.ops.errors import BadExposure, KernelFailure, NoWorkFound
from diffstream.stream.ops.settings import Settings, config_hash
from diffstream.stream.pipeline.astrometry import refit_mapping
from diffstream.stream.pipeline.dipoles import dipole_options, measure_dipoles
from diffstream.stream.pipeline.warping import warp_template
from diffstream.stream.provenance.taskmeta import TaskMetadata
from diffstream.stream.provenance.versions import package_versions, versions_hash

__all__ = ["SubtractResult", "subtract_files", "subtract_exposures"]

S = TypeVar("S")
T = TypeVar("T")


@dataclass
class SubtractResult:
    science: Exposure
    template_image: np.ndarray  # warped, calibrated, background-subtracted (nJy)
    template_variance: np.ndarray
    template_mask: np.ndarray
    zogy: ZogyResult
    sources: np.ndarray  # measurement rows (structured array, LSST names)
    dia_sources: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    mask: np.ndarray  # combined mask on the science grid
    metadata: TaskMetadata
    summary: dict[str, Any] = field(default_factory=dict)
    # The PSF models ZOGY used (debug plots, diagnostics); None for results built elsewhere.
    psf_science: PsfModel | None = None
    psf_template: PsfModel | None = None
    al: ALInfo | None = None  # Alard-Lupton products (matched image, kernels) with method="al"


def mjd_now() -> float:
    return float(Time.now().tai.mjd)


def subtract_files(
    science_path: str,
    template_path: str,
    *,
    settings: Settings,
    visit: int | None = None,
    detector: int | None = None,
    exposure_id: int | None = None,
    metadata: TaskMetadata | None = None,
    science_psf: str | None = None,
    template_psf: str | None = None,
    science_background: str | None = None,
) -> SubtractResult:
    """Load both files and run :func:`subtract_exposures` (load timed as ``*.load``)."""
    meta = metadata or TaskMetadata()
    with meta.timer("load"):
        # The template loads on a second thread while the science loads here: reading,
        # hashing and decoding a file mostly run outside the GIL.
        with ThreadPoolExecutor(1, "load-template") as pool:
            # The template's own PSF is only a fallback (the PSF on the science grid is
            # measured on the warped template), so a constant one is enough here.
            # The SHA-256s (0.2 s of CPU per 200 MB file) finish on their threads while the
            # subtraction runs, filling the gaps where a step leaves a core idle; they are
            # collected for the metadata at the end (Exposure.checksum).
            template_loaded = pool.submit(
                load_exposure,
                template_path,
                psf_degree=0,
                defer_checksum=True,
                **load_options(settings),
            )
            science = load_exposure(
                science_path,
                visit=visit,
                detector=detector,
                exposure_id=exposure_id,
                psf_degree=settings.psf_degree,
                defer_checksum=True,
                **load_options(settings),
            )
            template = template_loaded.result()
        science = apply_external(science, psf_path=science_psf, background_path=science_background)
        template = apply_external(template, psf_path=template_psf)
    try:
        return subtract_exposures(science, template, settings=settings, metadata=meta)
    finally:  # also for NoWorkFound and failures: their metadata names the inputs too
        # External PSF stamps and backgrounds are inputs too: {"psf"/"background": {path,
        # sha256}} next to the exposure's own (diffstream.stream.io.calibrated.apply_external).
        meta.set(
            "science",
            {"path": science.path, "sha256": science.checksum(), "layout": science.layout,
             **science.info.get("inputs", {})},
            step=meta.name,
        )  # fmt: skip
        meta.set("template", {"path": template.path, "sha256": template.checksum(),
                              **template.info.get("inputs", {})}, step=meta.name)  # fmt: skip


def _calibrate(image: np.ndarray, variance: np.ndarray, calib: float | None):
    c = np.float32(1.0 if calib is None else calib)
    # One float32 pass per plane (a float64 intermediate would double the memory traffic).
    return np.multiply(image, c, dtype=np.float32), np.multiply(variance, c * c, dtype=np.float32)


class _Both:
    """Run a science-side and a template-side callable, on two threads when ``workers``
    (scipy.fft convention) allows more than one; returns both results, in that order.  An
    exception of either side is raised here, after both have finished."""

    def __init__(self, workers: int | None) -> None:
        self.threads = thread_count(workers, 2)

    def __call__(self, science: Callable[[], S], template: Callable[[], T]) -> tuple[S, T]:
        if self.threads == 1:
            return science(), template()
        with ThreadPoolExecutor(1, "template-side") as pool:
            t_future = pool.submit(template)
            try:
                s_result = science()
            finally:
                wait([t_future])
            return s_result, t_future.result()


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
            )  # fmt: skip
        except ValueError:
            pass
    if template.psf is None:
        raise BadExposure("no PSF for the template", path=template.path)
    stamp = template.psf.at(*(np.array(template.shape[::-1]) / 2.0))
    return PsfModel.constant(warp_stamp(stamp, jacobian), shape, source="warped")


def _science_psf(
    science: Exposure, image, variance, mask_bad, settings: Settings, sources
) -> PsfModel:
    """The science PSF; a file PSF (one stamp) is refined into a spatial model from stars.

    The loader already measured a spatial model when the file had no PSF HDU, so only an HDU
    stamp (the PSF at the image centre) is refined here.
    """
    psf = science.psf
    if settings.psf_from_stars and (psf is None or psf.source == "hdu"):
        try:
            return measure_psf(
                image, variance, mask_bad, bad_bits=1, saturation=None,
                degree=settings.psf_degree, subtract_background=False, sources=sources,
            )  # fmt: skip
        except ValueError:
            pass
    if psf is None:
        raise BadExposure("no PSF for the science exposure", path=science.path)
    return psf


def subtract_exposures(
    science: Exposure,
    template: Exposure,
    *,
    settings: Settings,
    metadata: TaskMetadata | None = None,
) -> SubtractResult:
    meta = metadata or TaskMetadata()
    t_start = time.perf_counter()

    def note(item: str, value: Any) -> None:
        # Results of the whole task live on the top-level task (full key imageDifference:item).
        meta.set(item, value, step=meta.name)

    note("config", settings.science_config())
    note("configHash", config_hash(settings.science_config()))
    versions = package_versions()
    note("versions", versions)
    note("versionsHash", versions_hash(versions))
    # The thread count behind the timings (fft_workers resolved against the CPUs this
    # process may use: affinity and cgroup quota, stream/ops/cpus.py).
    threads = settings.threads()
    note("threads", threads)

    planes = science.mask_planes
    no_data = science.bitmask("NO_DATA")

    mapping = None
    if settings.refit_astrometry:
        with meta.timer("fitAstrometry"):
            mapping, astrometry = refit_mapping(science, template, order=settings.astrometry_order)
            note("astrometry", astrometry)
    with meta.timer("warp"):
        t_img, t_var, t_mask, jacobian = warp_template(
            template,
            science,
            step=settings.warp_grid_step,
            order=settings.lanczos_order,
            mapping=mapping,
            workers=threads,
        )
        # The warped mask is in the template's plane layout; everything downstream uses the
        # science layout (files that do not name their planes may differ).  remap returns
        # t_mask itself when the layouts agree (a fresh array here, so that is safe).
        t_mask = remap(t_mask, template.mask_planes, planes)

    with meta.timer("checkTemplateIsSufficient"):
        coverage = template_coverage(
            t_mask,
            no_data_bit=no_data,
            science_mask=science.mask,
            science_no_data_bit=no_data,
        )
        note("templateCoverage", coverage)
        if coverage < settings.required_template_fraction:
            raise NoWorkFound(
                f"template covers {coverage:.1%} < required "
                f"{settings.required_template_fraction:.0%} of the science image",
                coverage=coverage,
                required=settings.required_template_fraction,
            )

    # Science and template go through calibration, background and star finding side by
    # side: the kernels release the GIL, and these steps are single-threaded each.
    both = _Both(threads)
    with meta.timer("scaleVariance"):
        # Photometric scaling: both exposures to nJy (one flux unit).
        (s_img, s_var), (t_img, t_var) = both(
            lambda: _calibrate(science.image, science.variance, science.photo_calib),
            functools.partial(_calibrate, t_img, t_var, template.photo_calib),
        )
        note("photoCalib", {"science": science.photo_calib, "template": template.photo_calib})

    unusable = bits(planes, list(UNUSABLE_PLANES))
    mask, bad = combine_planes(science.mask, t_mask, unusable, s_img, t_img, s_var, t_var)

    with meta.timer("background"):
        (s_img, s_var), (t_img, t_var) = both(
            lambda: subtract_background(s_img, s_var, bad),
            lambda: subtract_background(t_img, t_var, bad),
        )

    if settings.scale_template_variance:
        with meta.timer("scaleTemplateVariance"):
            # The seed's doScaleTemplateVariance / doScaleScienceVariance: stated noise to the
            # measured pixel scatter.  Off by default: warping lowers the template's pixel
            # scatter without lowering the noise a matched filter sees (jitcore/noise.py).
            good = ~bad
            f_s = variance_scale_factor(s_img, s_var, good)
            f_t = variance_scale_factor(t_img, t_var, good)
            s_var = (s_var * np.float32(f_s)).astype(np.float32)
            t_var = (t_var * np.float32(f_t)).astype(np.float32)
            note("inputVarianceScale", {"science": f_s, "template": f_t})

    with meta.timer("psf"):
        # One detection per image serves the PSF measurement and the star matching.
        cats = both(
            lambda: _find_stars_or_none(s_img, s_var, bad),
            lambda: _find_stars_or_none(t_img, t_var, bad),
        )
        # Nothing usable in either: the PSF fallbacks and match_stars' own search.
        s_cat, t_cat = cats
        sources = None if s_cat is None or t_cat is None else (s_cat, t_cat)
        psf_s, psf_t = both(
            lambda: _science_psf(science, s_img, s_var, bad, settings, sources and sources[0]),
            lambda: _template_psf(
                template, t_img, t_var, bad, jacobian, settings, science.shape,
                sources and sources[1],
            ),
        )  # fmt: skip
        cy, cx = (science.shape[0] - 1) / 2.0, (science.shape[1] - 1) / 2.0
        note(
            "psf",
            {
                "science": {"source": psf_s.source, "fwhm": psf_s.fwhm_at(cx, cy),
                            "nstars": psf_s.nstars, "degree": psf_s.degree},
                "template": {"source": psf_t.source, "fwhm": psf_t.fwhm_at(cx, cy),
                             "nstars": psf_t.nstars, "degree": psf_t.degree},
            },
        )  # fmt: skip

    with meta.timer("matchStars"):
        fwhm = max(psf_s.fwhm_at(cx, cy), psf_t.fwhm_at(cx, cy))
        stars: StarMatch = match_stars(
            s_img, s_var, t_img, t_var, bad, aperture=3.0 * fwhm, sources=sources
        )
        note(
            "starMatch",
            {"n": stars.n_matched, "sigmaX": stars.sigma_x, "sigmaY": stars.sigma_y,
             "fluxRatio": stars.flux_ratio, "fluxRatioErr": stars.flux_ratio_err},
        )  # fmt: skip

    al_info: ALInfo | None = None
    with meta.timer("alardLupton" if settings.method == "al" else "zogy"):
        if settings.method == "al":
            # AL decorrelates in its own tiles and has no astrometric term (see al_subtract).
            try:
                z, al_info = al_subtract(
                    s_img, s_var, t_img, t_var, bad, psf_s, psf_t, mode=settings.al_mode,
                    spatial_order=settings.al_spatial_order,
                    background_order=settings.al_background_order,
                    min_stars=settings.al_min_stars,
                    psf_error_fraction=settings.psf_error_fraction,
                    workers=threads,
                )  # fmt: skip
            except ValueError as exc:
                raise KernelFailure(f"Alard-Lupton failed: {exc}") from exc
            note("alardLupton", {
                "direction": al_info.direction, "kernelSum": al_info.kernel_sum,
                "nStarsUsed": al_info.n_stars_used, "nStarsFound": al_info.n_stars_found,
                "residualRms": al_info.residual_rms,
                "basisSigmas": [float(b) for b in al_info.basis_sigmas],
                "kernelSize": al_info.kernel_size,
                "backgroundCoeffs": [float(c) for c in al_info.background_coeffs],
            })  # fmt: skip
        else:
            sig_ast = (stars.sigma_x, stars.sigma_y) if settings.astrometric_noise else (0.0, 0.0)
            try:
                z = zogy(
                    s_img, s_var, t_img, t_var, bad, psf_s, psf_t,
                    f_n=1.0, f_r=1.0, sigma_astrometric=sig_ast, tile_size=settings.tile_size,
                    workers=threads, psf_error_fraction=settings.psf_error_fraction,
                    precision=settings.zogy_precision,
                )  # fmt: skip
            except ValueError as exc:
                raise KernelFailure(f"ZOGY failed: {exc}") from exc

    with meta.timer("scaleDiffimVariance"):
        # Stated noise must match the measured scatter for 5 sigma to mean 5 sigma (see
        # jitcore/noise.py for why the raw ZOGY score is a few per cent wide).
        f_score, f_diff = diffim_scale_factors(
            z.score, z.difference, z.difference_variance, z.valid
        )
        if settings.scale_variance:

            def scale_variances() -> None:
                z.flux_variance *= np.float32(f_score**2)
                z.difference_variance *= np.float32(f_diff**2)

            # Three full-frame passes, the score's beside the two variances' (NumPy's
            # in-place arithmetic releases the GIL).
            both(lambda: np.divide(z.score, np.float32(f_score), out=z.score), scale_variances)
        note("varianceScale", {"score": f_score, "difference": f_diff,
                               "applied": settings.scale_variance})  # fmt: skip

    with meta.timer("detection"):
        found = detect(
            z.score,
            z.valid,
            threshold=settings.detection_threshold,
            min_area=settings.detection_min_area,
            dipole_radius=float(dipole_options(settings)["dipole_radius"]),
        )
        # Stable order => stable ids across reruns of the same exposure.
        if len(found):
            found = found[np.lexsort((found["peak_x"], found["peak_y"]))]
        note("nDetections", int(len(found)))

    # The images every measurement step reads: the difference with its PSF, and the
    # (calibrated, background-subtracted) science and warped template with theirs.
    images: dict[str, Any] = {
        "difference": z.difference,
        "difference_variance": z.difference_variance,
        "psf_d_at": lambda x, y: z.tile_at(x, y).psf_d,
        "science": s_img,
        "science_variance": s_var,
        "psf_science_at": psf_s.at,
        "template": t_img,
        "template_variance": t_var,
        "psf_template_at": psf_t.at,
        "mask": mask,
        "mask_planes": planes,
    }
    with meta.timer("measurement"):
        rows = measure(
            found, flux=z.flux, flux_variance=z.flux_variance, ap_radius=settings.ap_radius,
            workers=threads, **images,
        )  # fmt: skip
        # The schema's snr is "the S/N at which this source was detected": the score peak.
        if len(rows):
            rows["snr"] = np.abs(found["peak_score"])
    with meta.timer("dipoles"):
        dipoles = measure_dipoles(found, rows, wcs=science.wcs, settings=settings, **images)
        found, rows = dipoles.sources, dipoles.rows
        note("dipoles", dipoles.summary)
    with meta.timer("ids"):
        ids = assign_ids(science, len(rows), exposure_bits=settings.exposure_bits)

    with meta.timer("alerts"):
        alerts: list[dict[str, Any]] = []
        summary_meta = None  # filled below, after the timings of this step are known
        dia_sources = dia_source_records(
            rows, ids, science, processed_mjd_tai=mjd_now(), row_fields=dipoles.row_fields
        )
        # One local WCS and one set of header cards per source for its three cutouts.
        maker = CutoutMaker(science.wcs, size=settings.cutout_size, mask_planes=planes)
        cutout_planes = [
            (z.difference, z.difference_variance, mask),
            (s_img, s_var, science.mask),
            (t_img, t_var, t_mask),
        ]
        cutouts = maker.make_many(
            cutout_planes, [s["x"] for s in dia_sources], [s["y"] for s in dia_sources]
        )
        for src, (diff_cut, sci_cut, tmpl_cut) in zip(dia_sources, cutouts, strict=True):
            cut = {
                "cutoutDifference": diff_cut,
                "cutoutScience": sci_cut,
                "cutoutTemplate": tmpl_cut,
            }
            alerts.append(make_alert(src, cutouts=cut, task_metadata=summary_meta))

    if settings.apdb:  # association, forced photometry, histories (stream/pipeline/apdb/)
        from diffstream.stream.pipeline.apdb.step import associate_exposure

        with meta.timer("association"):
            done = associate_exposure(science, dia_sources, alerts, images, settings=settings,
                                      processed_mjd_tai=mjd_now())  # fmt: skip
            note("association", done)
    note("nDiaSources", len(dia_sources))
    note("nPositive", int(sum(1 for s in dia_sources if not s.get("isNegative"))))
    note("nNegative", int(sum(1 for s in dia_sources if s.get("isNegative"))))
    note("totalWallTime", time.perf_counter() - t_start)
    science.checksum()  # the deferred hashes of subtract_files (no-ops otherwise)
    template.checksum()
    summary_meta = task_metadata_summary(meta, science, template, coverage, len(dia_sources))
    for alert in alerts:
        alert["diffstreamMetadata"] = summary_meta
    return SubtractResult(
        science=science,
        template_image=t_img,
        template_variance=t_var,
        template_mask=t_mask,
        zogy=z,
        sources=rows,
        dia_sources=dia_sources,
        alerts=alerts,
        mask=mask,
        metadata=meta,
        summary=summary_meta,
        psf_science=psf_s,
        psf_template=psf_t,
        al=al_info,
    )


def task_metadata_summary(
    meta: TaskMetadata, science: Exposure, template: Exposure, coverage: float, n: int
) -> dict[str, Any]:
    """The compact record that travels with every alert (schemas/diffstream.taskmetadata)."""
    return {
        "pipelineVersion": __version__,
        "method": meta.get("config", step=meta.name)["method"],
        "configHash": meta.get("configHash", step=meta.name),
        "versionsHash": meta.get("versionsHash", step=meta.name),
        "exposureId": int(science.exposure_id or 0),
        "visit": int(science.visit or 0),
        "detector": int(science.detector or 0),
        "timings": {k: float(v) for k, v in meta.timings().items()},
        "nDiaSources": int(n),
        "templateCoverage": float(coverage),
        "scienceSha256": science.sha256,
        "templateSha256": template.sha256,
        "processedMjdTai": mjd_now(),
    }
