"""The subtraction pipeline: two exposures in, diaSources and alerts out.

:func:`subtract_exposures` (the ``run()`` of the pipeline), used by ``diffstream subtract`` and
by the stream worker alike (only the transport differs), calls one function per step: the head
steps are here, the tail (detection onwards) is :mod:`diffstream.stream.pipeline.steps`, shared
with :mod:`diffstream.stream.pipeline.detect_only`.  Every step is timed under
``imageDifference.*`` and its numbers go to the task metadata; the numerics live in ``jitcore``.

Steps (the seed ImageDifferenceTask's order): load -> defect interpolation -> warp ->
template coverage check -> photometric scaling -> background -> PSFs -> star matching ->
ZOGY -> detection -> measurement -> ids -> alerts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from diffstream.jitcore.background import subtract_background
from diffstream.jitcore.coverage import template_coverage
from diffstream.jitcore.extendedness import extendedness
from diffstream.jitcore.hostfit import hosts_from_catalogues, psf_fluxes, vet_detections
from diffstream.jitcore.masks import UNUSABLE_PLANES, bits, remap
from diffstream.jitcore.noise import variance_scale_factor
from diffstream.jitcore.planes import combine_planes_hard
from diffstream.jitcore.psf import PsfModel
from diffstream.jitcore.starmatch import StarMatch
from diffstream.jitcore.zogy import ZogyResult, zogy
from diffstream.stream.alerts.packets import dia_source_column
from diffstream.stream.io.calibrated import apply_external
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.io.fitsio import load_exposure, load_options
from diffstream.stream.io.surveys import exposure_metadata, flag
from diffstream.stream.ops.errors import BadExposure, KernelFailure, NoWorkFound
from diffstream.stream.ops.settings import Settings, config_hash
from diffstream.stream.pipeline.astrometry import refit_mapping
from diffstream.stream.pipeline.defects import hard_bits, interpolate_defects
from diffstream.stream.pipeline.dipoles import dipole_options
from diffstream.stream.pipeline.psfs import (
    aperture_corrections,
    apply_aperture_corrections,
    match,
    measure_psfs,
    template_scale,
)
from diffstream.stream.pipeline.state import Both, Prepared
from diffstream.stream.pipeline.steps import (
    detect_sources,
    make_alerts,
    make_dia_sources,
    measure_sources,
    mjd_now,
    note,
    note_counts,
    run_dipoles,
    run_trails,
    score_reliability,
    start_cutouts,
    streak_plane,
    summary_record,
)
from diffstream.stream.pipeline.variance import (
    measure_noise_correlation,
    scale_difference_variance,
    scale_psf_flux_errors,
)
from diffstream.stream.pipeline.warping import warp_template
from diffstream.stream.provenance.taskmeta import TaskMetadata
from diffstream.stream.provenance.versions import package_versions, versions_hash

if TYPE_CHECKING:  # Alard-Lupton loads (1-2 s of imports) only when a run asks for it.
    from diffstream.jitcore.alardlupton import ALInfo

__all__ = ["SubtractResult", "mjd_now", "subtract_exposures", "subtract_files"]

log = logging.getLogger(__name__)


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
    # The planes of ``mask`` (the science's plus STREAK); None: the science's.
    mask_planes: dict[str, int] | None = None


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
    science_files: Mapping[str, Any] | None = None,
    template_files: Mapping[str, Any] | None = None,
) -> SubtractResult:
    """Load both files and run :func:`subtract_exposures` (load timed as ``*.load``).

    ``science_files`` / ``template_files`` are :func:`load_exposure`'s survey keywords for
    each side: ``hdu``, ``variance_path``, ``variance_kind``, ``mask_path``.
    """
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
                **(template_files or {}),
            )
            science = load_exposure(
                science_path,
                visit=visit,
                detector=detector,
                exposure_id=exposure_id,
                psf_degree=settings.psf_degree,
                defer_checksum=True,
                **load_options(settings),
                **(science_files or {}),
            )
            template = template_loaded.result()
        if science.exposure_id is None:
            flag(
                science.info, science.path, "no_exposure_id",
                "no exposure id (no --exposure-id, no integer EXPID/EXPNUM keyword): "
                "diaSourceIds are made with exposure id 0 and may collide across exposures",
            )  # fmt: skip
        science = apply_external(science, psf_path=science_psf, background_path=science_background)
        template = apply_external(template, psf_path=template_psf)
    # The pipeline gets the only references to the pixels (a call's arguments stay referenced
    # by the caller until it returns, hence the list it empties): the raw planes are freed
    # once repaired and warped, ~400 MB at 4k (issue 17).  The metadata below needs none.
    owned = [science, template]
    science, template = science.without_pixels(), template.without_pixels()
    del template_loaded
    try:
        return _subtract_owned(owned, settings=settings, metadata=meta, pixels_owned=True)
    finally:  # also for NoWorkFound and failures: their metadata names the inputs too
        # External PSF stamps and backgrounds are inputs too: {"psf"/"background": {path,
        # sha256}} next to the exposure's own (diffstream.stream.io.calibrated.apply_external).
        # The survey facts (instrument, band, filter, where each id came from) and every
        # fallback taken while loading (stream.io.surveys): never silent.
        meta.set(
            "science",
            {"path": science.path, "sha256": science.checksum(), "layout": science.layout,
             **science.info.get("inputs", {}), **exposure_metadata(science)},
            step=meta.name,
        )  # fmt: skip
        meta.set("template", {"path": template.path, "sha256": template.checksum(),
                              "layout": template.layout, **template.info.get("inputs", {}),
                              **exposure_metadata(template)}, step=meta.name)  # fmt: skip


def _calibrate(
    image: np.ndarray, variance: np.ndarray, calib: float | None, *, in_place: bool = False
):
    """Both planes times ``calib`` (nJy per count) as float32: new arrays, or with
    ``in_place`` the planes themselves when they are float32 (the warp's output, which the
    pipeline owns: two 64 MB planes fewer at 4k)."""
    c = np.float32(1.0 if calib is None else calib)
    # One float32 pass per plane (a float64 intermediate would double the memory traffic).
    if in_place and image.dtype == np.float32 and variance.dtype == np.float32:
        return np.multiply(image, c, out=image), np.multiply(variance, c * c, out=variance)
    return np.multiply(image, c, dtype=np.float32), np.multiply(variance, c * c, dtype=np.float32)


MIN_IMAGE_SIDE = 16


def check_processable(science: Exposure, template: Exposure) -> None:
    """BadExposure (with the file and the reason) for an image too small to process: a side
    below :data:`MIN_IMAGE_SIDE` or below the larger of the two PSF stamps (the stamp and the
    kernel built from it must fit inside the image)."""
    stamps = [int(e.psf.basis.shape[-1]) for e in (science, template) if e.psf is not None]
    need = max([MIN_IMAGE_SIDE, *stamps])
    for exposure, what in ((science, "science"), (template, "template")):
        ny, nx = exposure.shape
        if min(ny, nx) < need:
            raise BadExposure(
                f"{what} image {nx} x {ny} px is too small to process: each side must be >= "
                f"{need} px (the PSF stamp, {max(stamps, default=0)} px, and at least "
                f"{MIN_IMAGE_SIDE} px)",
                path=exposure.path,
                reason="too_small",
                shape=[int(ny), int(nx)],
            )


def note_provenance(meta: TaskMetadata, settings: Settings) -> int:
    """Config, versions and the thread count on the task; returns that thread count (the
    fft_workers setting resolved against the CPUs this process may use, ops/cpus.py)."""
    note(meta, "config", settings.science_config())
    note(meta, "configHash", config_hash(settings.science_config()))
    versions = package_versions()
    note(meta, "versions", versions)
    note(meta, "versionsHash", versions_hash(versions))
    threads = settings.threads()
    note(meta, "threads", threads)
    return threads


def repair_defects(
    science: Exposure, template: Exposure, *, meta: TaskMetadata, both: Both | None = None,
    in_place: bool = False,
) -> tuple[Exposure, Exposure]:  # fmt: skip
    """Both exposures with their BAD/CR pixels interpolated (INTRP), each in its own frame.

    Before any convolution (the template's first is the warp): a defect left as no data
    would blank the whole kernel footprint around it (issue 12).  ``both``: the two sides
    on two threads (full-frame NumPy passes and the kriging kernel release the GIL).
    ``in_place``: the planes are the pipeline's own (subtract_files), repaired where they are.
    """
    both = both or Both(1)
    with meta.timer("interpolateDefects"):
        (science, s_fix), (template, t_fix) = both(
            lambda: interpolate_defects(science, name="science", in_place=in_place),
            lambda: interpolate_defects(template, name="template", in_place=in_place),
        )
        note(meta, "interpolation", {"science": s_fix, "template": t_fix})
    return science, template


def warp_and_check(
    science: Exposure, template: Exposure, *, settings: Settings, meta: TaskMetadata, threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Optional astrometric refit, the warp onto the science grid, and the coverage check
    (NoWorkFound below ``required_template_fraction``)."""
    planes = science.mask_planes
    no_data = science.bitmask("NO_DATA")
    mapping = None
    if settings.refit_astrometry:
        with meta.timer("fitAstrometry"):
            mapping, astrometry = refit_mapping(science, template, order=settings.astrometry_order)
            note(meta, "astrometry", astrometry)
    with meta.timer("warp"):
        t_img, t_var, t_mask, jacobian = warp_template(
            template,
            science,
            step=settings.warp_grid_step,
            order=settings.lanczos_order,
            mapping=mapping,
            workers=threads,
            bad_planes=("NO_DATA",),  # unrepaired defects are NO_DATA (repair_defects)
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
        note(meta, "templateCoverage", coverage)
        if coverage < settings.required_template_fraction:
            raise NoWorkFound(
                f"template covers {coverage:.1%} < required "
                f"{settings.required_template_fraction:.0%} of the science image",
                coverage=coverage,
                required=settings.required_template_fraction,
            )
    return t_img, t_var, t_mask, jacobian, coverage


def calibrate_pair(
    science: Exposure,
    template: Exposure,
    warped: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
    *,
    settings: Settings,
    meta: TaskMetadata,
    both: Both,
) -> Prepared:
    """Both images to nJy, the combined mask, background subtraction, optional variance
    rescaling.  Science and template run side by side (the kernels release the GIL).  The
    warped template planes (``warped``) are calibrated in place: they are the pipeline's own."""
    t_img, t_var, t_mask, jacobian, coverage = warped
    planes = science.mask_planes
    with meta.timer("scaleVariance"):
        # Photometric scaling: both exposures to nJy (one flux unit).
        (s_img, s_var), (t_img, t_var) = both(
            lambda: _calibrate(science.image, science.variance, science.photo_calib),
            functools.partial(_calibrate, t_img, t_var, template.photo_calib, in_place=True),
        )
        note(meta, "photoCalib", {"science": science.photo_calib, "template": template.photo_calib})

    unusable = bits(planes, list(UNUSABLE_PLANES))
    # ``no_data``: only what has no data is blanked (background: 0 and NaN); repaired
    # defects stay data.  Both maps in one pass over the planes.
    mask, bad, no_data = combine_planes_hard(
        science.mask, t_mask, unusable, hard_bits(planes), s_img, t_img, s_var, t_var
    )

    with meta.timer("background"):
        (s_img, s_var), (t_img, t_var) = both(
            # In place: both pairs are this step's own copies (_calibrate).
            lambda: subtract_background(s_img, s_var, no_data, overwrite=True),
            lambda: subtract_background(t_img, t_var, no_data, overwrite=True),
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
            note(meta, "inputVarianceScale", {"science": f_s, "template": f_t})
    return Prepared(s_img, s_var, t_img, t_var, t_mask, mask, bad, jacobian, coverage, no_data)


def difference(
    p: Prepared,
    psf_s: PsfModel,
    psf_t: PsfModel,
    stars: StarMatch,
    *,
    settings: Settings,
    meta: TaskMetadata,
    threads: int,
    f_r: float = 1.0,
    sources: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[ZogyResult, ALInfo | None]:
    """The difference and its score: ZOGY (template scaled by ``f_r``), or Alard-Lupton
    with decorrelation (which fits its own kernel sum).  ``sources``: the PSF step's star
    catalogues (science, template), from which AL takes its kernel-star candidates."""
    al_info: ALInfo | None = None
    with meta.timer("alardLupton" if settings.method == "al" else "zogy"):
        if settings.method == "al":
            from diffstream.jitcore.alardlupton import al_subtract

            # AL decorrelates in its own tiles and has no astrometric term (see al_subtract).
            # Its kernel stars come from the PSF step's science catalogue where it has enough
            # of them (jitcore/alstars.py): its own sep pass was 0.5 s at 4k (issue 17).
            # Without one (no stars found there) AL detects again, and says so.
            if sources is None:
                log.warning("no star catalogue from the PSF step: Alard-Lupton runs its own "
                            "detection for its kernel stars")  # fmt: skip
            try:
                z, al_info = al_subtract(
                    p.s_img, p.s_var, p.t_img, p.t_var, p.no_data, psf_s, psf_t,
                    mode=settings.al_mode,
                    spatial_order=settings.al_spatial_order,
                    background_order=settings.al_background_order,
                    min_stars=settings.al_min_stars,
                    psf_error_fraction=settings.psf_error_fraction,
                    workers=threads,
                    # The decorrelation's tiles and frame FFTs as ZOGY's (issue 17: single
                    # precision and 512 px tiles halved its 4k time).
                    tile_size=settings.tile_size,
                    precision=settings.zogy_precision,
                    science_sources=None if sources is None else sources[0],
                )  # fmt: skip
            except ValueError as exc:
                raise KernelFailure(f"Alard-Lupton failed: {exc}") from exc
            note(meta, "alardLupton", {
                "direction": al_info.direction, "kernelSum": al_info.kernel_sum,
                "nStarsUsed": al_info.n_stars_used, "nStarsFound": al_info.n_stars_found,
                # "catalogue": the PSF step's; "detection": AL's own pass (no catalogue, or
                # too few stars from it).
                "starCandidates": al_info.star_candidates,
                "residualRms": al_info.residual_rms,
                "basisSigmas": [float(b) for b in al_info.basis_sigmas],
                "kernelSize": al_info.kernel_size,
                "backgroundCoeffs": [float(c) for c in al_info.background_coeffs],
                # Where the step's wall time went (issue 17's profile, from every run).
                "stageWallTimes": {k: round(v, 4) for k, v in al_info.stage_times.items()},
            })  # fmt: skip
        else:
            sig_ast = (stars.sigma_x, stars.sigma_y) if settings.astrometric_noise else (0.0, 0.0)
            try:
                z = zogy(
                    p.s_img, p.s_var, p.t_img, p.t_var, p.no_data, psf_s, psf_t,
                    f_n=1.0, f_r=f_r, sigma_astrometric=sig_ast, tile_size=settings.tile_size,
                    workers=threads, psf_error_fraction=settings.psf_error_fraction,
                    precision=settings.zogy_precision, mask_edges=settings.zogy_edges,
                )  # fmt: skip
            except ValueError as exc:
                raise KernelFailure(f"ZOGY failed: {exc}") from exc
    return z, al_info


def _inside(x: float, y: float, shape: tuple[int, ...]) -> tuple[float, float]:
    """(x, y) clamped onto the image: a source by the edge (valid there since jitcore.zogy's
    "light" edges) can have its centroid fitted a fraction of a pixel off the image, where
    the nearest tile's PSF is the one to use."""
    return min(max(x, 0.0), shape[1] - 1.0), min(max(y, 0.0), shape[0] - 1.0)


def host_test(
    found: np.ndarray,
    z: ZogyResult,
    p: Prepared,
    psf_t: PsfModel,
    sources: tuple[np.ndarray, np.ndarray] | None,
    f_r: float,
    *,
    settings: Settings,
    meta: TaskMetadata,
) -> np.ndarray:
    """Bright-star residuals out by their shape, sources on stars kept (issue 12; off by
    default, see Settings.host_test and jitcore/hostfit.py)."""
    if not (settings.host_test and len(found)):
        return found
    with meta.timer("hostTest"):
        # Hosts from the template only: a new source is in the science catalogue and would
        # be its own "host"; a star is in both.  Fluxes in science units (F_r).
        cats = [] if sources is None else [sources[1]]
        hosts_xy, _ = hosts_from_catalogues(cats, p.t_var)
        hosts = (hosts_xy, psf_fluxes(p.t_img, psf_t.at, hosts_xy) / f_r)
        found, _, counts = vet_detections(
            found, z.difference, z.difference_variance, z.valid,
            lambda x, y: z.tile_at(x, y).psf_d, *hosts, score=z.score,
            threshold=settings.detection_threshold,
            dipole_radius=float(dipole_options(settings)["dipole_radius"]),
        )  # fmt: skip
        note(meta, "hostTest", {"hosts": len(hosts[0]), **counts})
        note(meta, "nDetections", int(len(found)))
    return found


def measure_extendedness(
    science: Exposure, p: Prepared, psf_s: PsfModel, rows: np.ndarray, *, meta: TaskMetadata
) -> np.ndarray:
    """On the science image, as LSST's: PSF flux against an aperture model flux."""
    with meta.timer("extendedness"):
        unusable = bits(science.mask_planes, list(UNUSABLE_PLANES))
        return extendedness(
            p.s_img, p.s_var, p.mask, unusable, rows["x"], rows["y"], psf_s.at,
            rows["scienceFlux"], rows["scienceFluxErr"],
        )  # fmt: skip


def subtract_exposures(
    science: Exposure,
    template: Exposure,
    *,
    settings: Settings,
    metadata: TaskMetadata | None = None,
) -> SubtractResult:
    """Run the steps, in the seed ImageDifferenceTask's order (see the module docstring)."""
    return _subtract_owned([science, template], settings=settings, metadata=metadata)


def _subtract_owned(
    owned: list[Exposure], *, settings: Settings, metadata: TaskMetadata | None,
    pixels_owned: bool = False,
) -> SubtractResult:  # fmt: skip
    """:func:`subtract_exposures` on ``[science, template]``, which it empties: with no other
    reference held, each input plane is freed after its last step.  ``pixels_owned``: no
    caller reads the planes either (subtract_files), so steps may write into them."""
    science, template = owned
    owned.clear()
    meta = metadata or TaskMetadata()
    t_start = time.perf_counter()
    threads = note_provenance(meta, settings)
    check_processable(science, template)
    both = Both(threads)

    science, template = repair_defects(science, template, meta=meta, both=both,
                                       in_place=pixels_owned)  # fmt: skip
    warped = warp_and_check(science, template, settings=settings, meta=meta, threads=threads)
    # The template's pixels and the warped planes before calibration are read no more.
    template = template.without_pixels()
    p = calibrate_pair(science, template, warped, settings=settings, meta=meta, both=both)
    del warped
    psf_s, psf_t, sources = measure_psfs(science, template, p, settings=settings, meta=meta,
                                         both=both)  # fmt: skip
    stars = match(p, psf_s, psf_t, sources, meta=meta)
    f_r = template_scale(science, template, stars, settings=settings, meta=meta)
    z, al_info = difference(p, psf_s, psf_t, stars, settings=settings, meta=meta, threads=threads,
                            f_r=f_r, sources=sources)  # fmt: skip
    measure_noise_correlation(p, psf_s, psf_t, meta=meta, both=both)
    psf_err_scale = scale_difference_variance(z, settings=settings, meta=meta, both=both)

    found = detect_sources(z.score, z.valid, settings=settings, meta=meta)
    found = host_test(found, z, p, psf_t, sources, f_r, settings=settings, meta=meta)
    # The difference's mask: the combined mask plus the STREAK plane of satellite streaks.
    d_mask, d_planes = streak_plane(z.score, z.valid, p.mask, science.mask_planes,
                                    settings=settings, meta=meta)  # fmt: skip
    # The images every measurement step reads: the difference with its PSF, and the
    # (calibrated, background-subtracted) science and warped template with theirs.
    images: dict[str, Any] = {
        "difference": z.difference,
        "difference_variance": z.difference_variance,
        "psf_d_at": lambda x, y: z.tile_at(*_inside(x, y, z.score.shape)).psf_d,
        "science": p.s_img,
        "science_variance": p.s_var,
        "psf_science_at": psf_s.at,
        "template": p.t_img,
        "template_variance": p.t_var,
        "psf_template_at": psf_t.at,
        "mask": d_mask,
        "mask_planes": d_planes,
    }
    rows = measure_sources(found, images, settings=settings, meta=meta, flux=z.flux,
                           flux_variance=z.flux_variance, workers=threads)  # fmt: skip
    scale_psf_flux_errors(rows, psf_err_scale)
    dipoles = run_dipoles(found, rows, images, wcs=science.wcs, settings=settings, meta=meta,
                          score=z.score)  # fmt: skip
    planes = {
        "cutoutDifference": (z.difference, z.difference_variance, d_mask),
        "cutoutScience": (p.s_img, p.s_var, science.mask),
        "cutoutTemplate": (p.t_img, p.t_var, p.t_mask),
    }
    # Each cutout carries its own image's PSF at the source (PSFIMAGE).
    psfs_at = [images["psf_d_at"], psf_s.at, psf_t.at]
    # No step after the dipole merge moves a source or writes these planes: the cutouts are
    # made on a second thread while extendedness and the trail fits run (steps.start_cutouts).
    # Centred on the records' x and y (float32, as the alert carries them).
    with meta.timer("alerts"):
        cutouts = start_cutouts(
            dia_source_column("x", dipoles.rows["x"]), dia_source_column("y", dipoles.rows["y"]),
            dia_source_column("bboxSize", dipoles.rows["bboxSize"]), planes,
            wcs=science.wcs, mask_planes=d_planes, settings=settings, psfs_at=psfs_at,
            threads=both.threads,
        )  # fmt: skip
    ext = measure_extendedness(science, p, psf_s, dipoles.rows, meta=meta)
    # After extendedness, which compares the fitted PSF flux with its own aperture model.
    apply_aperture_corrections(
        dipoles.rows,
        aperture_corrections(p, psf_s, psf_t, science.mask_planes, settings=settings, meta=meta),
    )
    trail_fields = run_trails(dipoles, images, wcs=science.wcs, settings=settings, meta=meta,
                              workers=threads)  # fmt: skip

    def row_fields(i: int) -> dict[str, Any]:
        return {**trail_fields(i), "extendedness": ext[i]}

    dia_sources = make_dia_sources(dipoles.rows, science, settings=settings, meta=meta,
                                   row_fields=row_fields)  # fmt: skip
    score_reliability(dipoles.rows, dia_sources, z.difference, z.difference_variance,
                      settings=settings, meta=meta)  # fmt: skip
    alerts = make_alerts(dia_sources, planes, psfs_at=psfs_at, wcs=science.wcs,
                         mask_planes=d_planes, settings=settings, meta=meta,
                         cutouts=cutouts)  # fmt: skip
    if settings.apdb:  # association, forced photometry, histories (stream/pipeline/apdb/)
        from diffstream.stream.pipeline.apdb.step import associate_exposure

        with meta.timer("association"):
            done = associate_exposure(science, dia_sources, alerts, images, settings=settings,
                                      processed_mjd_tai=mjd_now())  # fmt: skip
            note(meta, "association", done)

    note_counts(meta, dia_sources, t_start)
    science.checksum()  # the deferred hashes of subtract_files (no-ops otherwise)
    template.checksum()
    summary_meta = summary_record(meta, science, template_sha256=template.sha256,
                                  coverage=p.coverage, n=len(dia_sources))  # fmt: skip
    for alert in alerts:
        alert["diffstreamMetadata"] = summary_meta
    return SubtractResult(
        science=science,
        template_image=p.t_img,
        template_variance=p.t_var,
        template_mask=p.t_mask,
        zogy=z,
        sources=dipoles.rows,
        dia_sources=dia_sources,
        alerts=alerts,
        mask=d_mask,
        mask_planes=d_planes,
        metadata=meta,
        summary=summary_meta,
        psf_science=psf_s,
        psf_template=psf_t,
        al=al_info,
    )
