"""Detection and measurement on a difference that arrives already subtracted.

The seed's doSubtract=False, doDetection=True: ``diffstream detect DIFFERENCE.fits --out
DIR``.  The file is read like any exposure (diffstream.stream.io.fitsio: LSST MEF with IMAGE/MASK/
VARIANCE and optionally a PSF HDU, or a plain image), calibrated to nJy, and then:

    score (PSF matched filter, diffstream.jitcore.matched_filter) -> coverage check -> variance
    scaling -> then the subtraction's own tail (stream.pipeline.steps): detection ->
    measurement (difference only) -> dipoles (difference only) -> ids -> alerts
    (cutoutDifference only)

The PSF is the file's (or ``psf_path``'s, stream.io.calibrated) at the image centre for the
score, and at each source for measurement.  No background is subtracted: a difference has
none by construction, and LSST does not re-estimate one on difference images either.
Science and template fluxes are null in the alerts (there are no such images).  Outputs:
``alerts.avro``, ``score.fits``, ``metadata.json`` (with every outcome).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffstream.jitcore.masks import UNUSABLE_PLANES, bits
from diffstream.jitcore.matched_filter import matched_filter_score
from diffstream.jitcore.noise import diffim_scale_factors
from diffstream.jitcore.psf import PsfModel
from diffstream.stream.alerts.packets import write_alert_file
from diffstream.stream.io.calibrated import apply_external
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.io.fitsio import load_exposure, load_options
from diffstream.stream.io.outputs import write_planes
from diffstream.stream.io.surveys import exposure_metadata
from diffstream.stream.ops.errors import BadExposure, NoWorkFound
from diffstream.stream.ops.settings import Settings, config_hash
from diffstream.stream.pipeline.dipoles import DipoleStep, dipole_options
from diffstream.stream.pipeline.steps import (
    detect_sources,
    make_alerts,
    make_dia_sources,
    measure_sources,
    note_counts,
    run_dipoles,
    run_trails,
    streak_plane,
    summary_record,
)
from diffstream.stream.provenance.taskmeta import TaskMetadata
from diffstream.stream.provenance.versions import package_versions, versions_hash

__all__ = ["DetectResult", "detect_difference", "detect_exposure", "write_detect_products"]


@dataclass
class DetectResult:
    difference: Exposure  # as loaded (file units)
    image: np.ndarray  # calibrated difference (nJy)
    variance: np.ndarray  # nJy^2, after variance scaling
    score: np.ndarray  # matched-filter S/N, ~N(0, 1) on empty sky
    valid: np.ndarray
    mask: np.ndarray
    psf: PsfModel
    sources: np.ndarray  # measurement rows (MEASURE_DTYPE), dipoles merged
    dipoles: DipoleStep
    dia_sources: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    metadata: TaskMetadata
    mask_planes: dict[str, int]  # ``mask``'s planes (STREAK included)
    summary: dict[str, Any] = field(default_factory=dict)


def detect_difference(
    path: str | Path,
    *,
    settings: Settings,
    visit: int | None = None,
    detector: int | None = None,
    exposure_id: int | None = None,
    psf_path: str | Path | None = None,
    metadata: TaskMetadata | None = None,
) -> DetectResult:
    """Load the difference at ``path`` (timed as ``*.load``) and run :func:`detect_exposure`.

    ``psf_path``: an external PSF stamp for the difference (stream.io.calibrated), e.g. when
    the file has no PSF HDU.  Raises BadExposure/NotCalibrated for unusable files and
    NoWorkFound when too little of the image is usable.
    """
    meta = metadata or TaskMetadata()
    with meta.timer("load"):
        try:
            diff = load_exposure(
                path,
                visit=visit,
                detector=detector,
                exposure_id=exposure_id,
                **load_options(settings),
                # Measuring a PSF that psf_path replaces anyway would be wasted work.
                measure_psf=psf_path is None and settings.psf_from_stars,
                psf_degree=settings.psf_degree,
            )
        except BadExposure as exc:
            if psf_path is None or exc.fields.get("reason") != "no_psf":
                raise
            # stream.io.fitsio requires a PSF (HDU, stars or keyword) to load a file at all.
            raise BadExposure(
                f"{exc.message}; with --psf the file still needs a PSF HDU or a PSF_FWHM, "
                "FWHM or SEEING keyword to be read (the loader has no PSF-less mode)",
                path=None,
                reason="no_psf",
            ) from exc
        diff = apply_external(diff, psf_path=psf_path)
    meta.set(
        "science",
        {
            "path": diff.path,
            "sha256": diff.sha256,
            "layout": diff.layout,
            "kind": "difference",
            **exposure_metadata(diff),
        },  # survey facts and fallbacks (stream.io.surveys)
        step=meta.name,
    )
    meta.set("template", None, step=meta.name)
    return detect_exposure(diff, settings=settings, metadata=meta)


def _note_config(meta: TaskMetadata, settings: Settings) -> None:
    config = {**settings.science_config(), "mode": "detect", **dipole_options(settings)}
    meta.set("config", config, step=meta.name)
    meta.set("configHash", config_hash(config), step=meta.name)
    versions = package_versions()
    meta.set("versions", versions, step=meta.name)
    meta.set("versionsHash", versions_hash(versions), step=meta.name)


def detect_exposure(
    difference: Exposure, *, settings: Settings, metadata: TaskMetadata | None = None
) -> DetectResult:
    """Detect, measure and make alerts on a difference exposure (see the module docstring)."""
    meta = metadata or TaskMetadata()
    t_start = time.perf_counter()

    def note(item: str, value: Any) -> None:
        meta.set(item, value, step=meta.name)

    _note_config(meta, settings)
    if difference.psf is None:
        raise BadExposure("no PSF for the difference image", path=difference.path or None)
    psf = difference.psf
    planes = difference.mask_planes
    mask = difference.mask.astype(np.int32)
    c = 1.0 if difference.photo_calib is None else float(difference.photo_calib)
    image = (difference.image * c).astype(np.float32)
    variance = (difference.variance * (c * c)).astype(np.float32)
    note("photoCalib", {"difference": difference.photo_calib})
    bad = (mask & bits(planes, list(UNUSABLE_PLANES))) != 0
    bad |= ~np.isfinite(image) | ~np.isfinite(variance) | ~(variance >= 0)
    ny, nx = difference.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0

    with meta.timer("score"):
        try:
            score, valid = matched_filter_score(
                image, variance, bad, psf.at(cx, cy), workers=settings.threads()
            )
        except ValueError as exc:
            raise NoWorkFound(f"no usable pixel in the difference: {exc}") from exc
        coverage = float(valid.mean())
        note("templateCoverage", coverage)
        if coverage < settings.required_template_fraction:
            raise NoWorkFound(
                f"difference has usable pixels over {coverage:.1%} < required "
                f"{settings.required_template_fraction:.0%} of the image",
                coverage=coverage,
                required=settings.required_template_fraction,
            )

    with meta.timer("scaleDiffimVariance"):
        f_score, f_diff = diffim_scale_factors(score, image, variance, valid)
        if settings.scale_variance:
            score = (score / np.float32(f_score)).astype(np.float32)
            variance = (variance * np.float32(f_diff**2)).astype(np.float32)
        note("varianceScale", {"score": f_score, "difference": f_diff,
                               "applied": settings.scale_variance})  # fmt: skip

    # The pipeline's own tail (stream.pipeline.steps): the same ordering, and so the same ids.
    found = detect_sources(score, valid, settings=settings, meta=meta)
    mask, planes = streak_plane(score, valid, mask, planes, settings=settings, meta=meta)
    var_meas = np.where(bad, np.nan, variance).astype(np.float32)
    images: dict[str, Any] = {
        "difference": image,
        "difference_variance": var_meas,
        "psf_d_at": psf.at,
        "mask": mask,
        "mask_planes": planes,
    }
    rows = measure_sources(found, images, settings=settings, meta=meta)
    step = run_dipoles(found, rows, images, wcs=difference.wcs, settings=settings, meta=meta,
                       score=score)  # fmt: skip
    rows = step.rows
    row_fields = run_trails(step, images, wcs=difference.wcs, settings=settings, meta=meta)
    # No science or template here: their forced fluxes are not measured (null).
    dia_sources = make_dia_sources(
        rows, difference, settings=settings, meta=meta, row_fields=row_fields,
        overrides={k: None for k in ("scienceFlux", "scienceFluxErr", "templateFlux",
                                     "templateFluxErr")},
    )  # fmt: skip
    # The real/bogus model's features include the science and template fluxes under the
    # source, which a difference alone does not give: reliability stays null, and says why.
    if settings.reliability:
        note("reliability", {"status": "not_scored", "flag": "reliability_no_inputs",
                             "reason": "no science/template image (detect-only)"})  # fmt: skip
    alerts = make_alerts(
        dia_sources, {"cutoutDifference": (image, variance, mask)}, wcs=difference.wcs,
        mask_planes=planes, settings=settings, meta=meta, psfs_at=[psf.at],
    )  # fmt: skip
    note_counts(meta, dia_sources, t_start)
    # No template: the difference came already subtracted.
    summary = summary_record(meta, difference, template_sha256="", coverage=coverage,
                             n=len(dia_sources))  # fmt: skip
    for alert in alerts:
        alert["diffstreamMetadata"] = summary
    return DetectResult(
        difference=difference,
        image=image,
        variance=variance,
        score=score,
        valid=valid,
        mask=mask,
        mask_planes=dict(planes),
        psf=psf,
        sources=rows,
        dipoles=step,
        dia_sources=dia_sources,
        alerts=alerts,
        metadata=meta,
        summary=summary,
    )


def write_detect_products(result: DetectResult, outdir: str | Path) -> dict[str, Path]:
    """``score.fits``, ``alerts.avro`` and ``metadata.json`` (status "done") in ``outdir``."""
    from diffstream.stream.pipeline.products import write_metadata

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    d = result.difference
    paths: dict[str, Path] = {}
    with result.metadata.timer("write"):
        # score.fits: IMAGE is the matched-filter S/N (unitless); VARIANCE 1 where valid.
        paths["score"] = write_planes(
            out / "score.fits",
            image=result.score,
            variance=np.where(result.valid, 1.0, np.nan).astype(np.float32),
            mask=result.mask,
            mask_planes=result.mask_planes,
            wcs=d.wcs,
            header={"VISIT": d.visit or 0, "DETECTOR": d.detector or 0},
            bunit="",
        )
        paths["alerts"] = out / "alerts.avro"
        write_alert_file(paths["alerts"], result.alerts)
    paths["metadata"] = write_metadata(out, result.metadata, status="done",
                                       extra={"mode": "detect"})  # fmt: skip
    return paths
