"""The pipeline's tail, one function a step: detection -> measurement -> dipoles -> ids ->
diaSources -> alerts, and the compact task-metadata record every alert carries.

Both entry points run these same functions: :mod:`diffstream.stream.pipeline.subtract` (two
exposures in) and :mod:`diffstream.stream.pipeline.detect_only` (a difference that arrives
already made), so a detection found by one is ordered, measured, numbered and packaged exactly
as by the other.  Each step times itself under the caller's :class:`TaskMetadata`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from astropy.time import Time

from diffstream import __version__
from diffstream.jitcore.detect import detect
from diffstream.jitcore.measure import measure
from diffstream.stream.alerts.cutouts import CutoutMaker, cutout_size
from diffstream.stream.alerts.diasources import assign_ids, dia_source_records
from diffstream.stream.alerts.packets import make_alert
from diffstream.stream.alerts.reliability import ReliabilityModelError, features, load_model
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.dipoles import DipoleStep, dipole_options, measure_dipoles
from diffstream.stream.pipeline.streaks import mark_streaks, streak_summary
from diffstream.stream.pipeline.trails import measure_trails
from diffstream.stream.provenance.taskmeta import TaskMetadata

__all__ = [
    "detect_sources",
    "make_alerts",
    "make_dia_sources",
    "measure_sources",
    "mjd_now",
    "note",
    "note_counts",
    "run_dipoles",
    "run_trails",
    "score_reliability",
    "start_cutouts",
    "Cutouts",
    "streak_plane",
    "summary_record",
]

log = logging.getLogger(__name__)


def mjd_now() -> float:
    return float(Time.now().tai.mjd)


def note(meta: TaskMetadata, item: str, value: Any) -> None:
    """A result of the whole task: it lives on the top-level task (key imageDifference:item)."""
    meta.set(item, value, step=meta.name)


def detect_sources(
    score: np.ndarray, valid: np.ndarray, *, settings: Settings, meta: TaskMetadata
) -> np.ndarray:
    """Positive and negative detections on the score, in a stable order (row-major peaks).

    The order matters beyond tidiness: ids are handed out in it, so a rerun of the same
    exposure gives the same diaSourceIds.
    """
    with meta.timer("detection"):
        found = detect(
            score,
            valid,
            threshold=settings.detection_threshold,
            min_area=settings.detection_min_area,
            dipole_radius=float(dipole_options(settings)["dipole_radius"]),
        )
        if len(found):
            found = found[np.lexsort((found["peak_x"], found["peak_y"]))]
        note(meta, "nDetections", int(len(found)))
    return found


def streak_plane(
    score: np.ndarray,
    valid: np.ndarray,
    mask: np.ndarray,
    planes: Mapping[str, int],
    *,
    settings: Settings,
    meta: TaskMetadata,
) -> tuple[np.ndarray, dict[str, int]]:
    """(mask with satellite streaks as the STREAK plane, its planes):
    :mod:`diffstream.stream.pipeline.streaks`, on the detection mask of ``score``."""
    with meta.timer("streaks"):
        out, out_planes, found = mark_streaks(
            score, valid, mask, planes, threshold=settings.detection_threshold,
            min_length=settings.streak_min_length,
        )  # fmt: skip
        note(meta, "streaks", streak_summary(found))
    return out, out_planes


def measure_sources(
    found: np.ndarray,
    images: Mapping[str, Any],
    *,
    settings: Settings,
    meta: TaskMetadata,
    flux: np.ndarray | None = None,
    flux_variance: np.ndarray | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Measurement rows of ``found`` on ``images`` (the keyword arguments of
    :func:`diffstream.jitcore.measure.measure`: the difference with its PSF, and optionally the
    science and template with theirs, the mask and its planes)."""
    with meta.timer("measurement"):
        rows = measure(
            found, flux=flux, flux_variance=flux_variance, ap_radius=settings.ap_radius,
            workers=workers, **images,
        )  # fmt: skip
        # The schema's snr is "the S/N at which this source was detected": the score peak.
        if len(rows):
            rows["snr"] = np.abs(found["peak_score"])
    return rows


def run_dipoles(
    found: np.ndarray,
    rows: np.ndarray,
    images: Mapping[str, Any],
    *,
    wcs: Any,
    settings: Settings,
    meta: TaskMetadata,
    score: np.ndarray | None = None,
) -> DipoleStep:
    """Fit, classify and merge dipoles (:mod:`diffstream.stream.pipeline.dipoles`);
    ``score`` (the detection S/N image) is where undetected opposite lobes are looked for."""
    with meta.timer("dipoles"):
        step = measure_dipoles(found, rows, wcs=wcs, settings=settings, score=score, **images)
        note(meta, "dipoles", step.summary)
    return step


def run_trails(
    step: DipoleStep,
    images: Mapping[str, Any],
    *,
    wcs: Any,
    settings: Settings,
    meta: TaskMetadata,
    workers: int | None = None,
) -> Callable[[int], dict[str, Any]]:
    """Trailed-source fits of the (merged) rows (:mod:`diffstream.stream.pipeline.trails`);
    returns the row -> alert fields function that make_dia_sources takes, the dipoles' fields
    included."""
    with meta.timer("trails"):
        fields, summary = measure_trails(step.sources, step.rows, wcs=wcs, settings=settings,
                                         workers=workers, **images)  # fmt: skip
        note(meta, "trails", summary)

    def row_fields(i: int) -> dict[str, Any]:
        return {**step.row_fields(i), **{k: v[i] for k, v in fields.items()}}

    return row_fields


def make_dia_sources(
    rows: np.ndarray,
    exposure: Exposure,
    *,
    settings: Settings,
    meta: TaskMetadata,
    row_fields: Callable[[int], Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Deterministic ids, then one schema-complete diaSource record per row."""
    with meta.timer("ids"):
        ids = assign_ids(exposure, len(rows), exposure_bits=settings.exposure_bits)
    # Timed with the alerts they become (the seed's step names; entering adds up).
    with meta.timer("alerts"):
        return dia_source_records(
            rows, ids, exposure, processed_mjd_tai=mjd_now(), row_fields=row_fields,
            overrides=overrides,
        )  # fmt: skip


def score_reliability(
    rows: np.ndarray,
    dia_sources: Sequence[dict[str, Any]],
    difference: np.ndarray,
    difference_variance: np.ndarray,
    *,
    settings: Settings,
    meta: TaskMetadata,
) -> None:
    """Fill ``reliability`` and ``reliabilityVersion`` of ``dia_sources`` (aligned with the
    measurement ``rows``) in place, from the real/bogus model (stream/alerts/reliability.py).

    The model's version and its file's SHA-256 go into the task metadata (item
    ``reliability``), so that every score is traceable to the file that made it.  A model
    that cannot be loaded leaves both fields null, with a WARNING and ``status: "failed"``
    in that item: never a silent fallback.
    """
    if not settings.reliability:
        note(meta, "reliability", {"status": "off"})
        return
    with meta.timer("reliability"):
        try:
            model = load_model(settings.reliability_model)
        except ReliabilityModelError as exc:
            log.warning("reliability left null on %d diaSources: %s", len(dia_sources), exc)
            note(meta, "reliability", {"status": "failed", "flag": "reliability_model_unavailable",
                                       "error": str(exc)})  # fmt: skip
            return
        scores = model.predict(features(rows, dia_sources, difference, difference_variance))
        for src, p in zip(dia_sources, scores, strict=True):
            src["reliability"] = float(p)
            src["reliabilityVersion"] = model.version
        note(meta, "reliability", {"status": "ok", "model": model.version,
                                   "sha256": model.sha256, "path": model.path})  # fmt: skip


def make_alerts(
    dia_sources: Sequence[dict[str, Any]],
    planes: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    wcs: Any,
    mask_planes: Mapping[str, int],
    settings: Settings,
    meta: TaskMetadata,
    psfs_at: Sequence[Callable[[float, float], np.ndarray] | None] | None = None,
    cutouts: Cutouts | None = None,
) -> list[dict[str, Any]]:
    """One alert per diaSource, with a cutout of each of ``planes`` (cutout field name ->
    (image, variance, mask)) and, from ``psfs_at`` (one per plane), its PSFIMAGE; the task
    metadata is attached later (:func:`summary_record`).  Rubin's side: the footprint's bbox
    clamped to [cutout_size (30), 102] px.  ``cutouts``: those cutouts already started by
    :func:`start_cutouts` (``planes`` and ``psfs_at`` are then not read again)."""
    with meta.timer("alerts"):
        if cutouts is None:
            cutouts = start_cutouts(
                [s["x"] for s in dia_sources], [s["y"] for s in dia_sources],
                [s["bboxSize"] for s in dia_sources], planes, wcs=wcs, mask_planes=mask_planes,
                settings=settings, psfs_at=psfs_at, threads=1,
            )  # fmt: skip
        made = cutouts.result(dia_sources)
        names = list(planes)
        return [
            make_alert(src, cutouts=dict(zip(names, cuts, strict=True)), task_metadata=None)
            for src, cuts in zip(dia_sources, made, strict=True)
        ]


class Cutouts:
    """The cutouts of a list of positions, being made on a second thread (or, with one
    thread, when asked for); see :func:`start_cutouts`."""

    def __init__(self, key: tuple[np.ndarray, ...], make: Callable[[], list[list[bytes]]],
                 threads: int) -> None:  # fmt: skip
        self._key = key
        self._result: Callable[[], list[list[bytes]]]
        if threads > 1:
            pool = ThreadPoolExecutor(1, "cutouts")
            future = pool.submit(make)
            self._result = lambda: future.result()
            pool.shutdown(wait=False)  # the thread ends with its one task
        else:
            self._result = make

    def result(self, dia_sources: Sequence[Mapping[str, Any]]) -> list[list[bytes]]:
        """The cutouts, once made, for ``dia_sources``, which must be the sources they were
        started for (same x, y and bboxSize, in order): the cutouts were cut before the
        diaSource records existed, so a mismatch is a pipeline bug, raised, never a
        cutout of the wrong place."""
        key = _positions([s["x"] for s in dia_sources], [s["y"] for s in dia_sources],
                         [s["bboxSize"] for s in dia_sources])  # fmt: skip
        if not all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(key, self._key, strict=True)
        ):
            msg = "cutouts were started for other positions than the diaSources'"
            raise RuntimeError(msg)
        return self._result()


def start_cutouts(
    xs: Sequence[float] | np.ndarray,
    ys: Sequence[float] | np.ndarray,
    bbox_sizes: Sequence[Any] | np.ndarray,
    planes: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    wcs: Any,
    mask_planes: Mapping[str, int],
    settings: Settings,
    psfs_at: Sequence[Callable[[float, float], np.ndarray] | None] | None = None,
    threads: int = 1,
) -> Cutouts:
    """Start the cutouts of :func:`make_alerts` for sources at (``xs``, ``ys``) with
    footprints of ``bbox_sizes``; with ``threads`` > 1 they are made on a second thread.

    Why: the cutouts are ~0.1 s of Python per 4k exposure (1250 sources, three cutouts
    each) that holds the GIL, and the trail fits, which come before the alerts but do not
    change a position, run in Numba without it.  The subtraction starts the cutouts after
    the dipole merge (the last step that moves a source) and the two overlap (issue 17).
    The local WCSs are computed here, on the calling thread (CutoutMaker.make_many), and the
    images must not change until the cutouts are taken.  Untimed: the caller times the part
    made here (the "alerts" step); that of the second thread shows in the steps it overlaps."""
    # One local WCS and one set of header cards per source for all its cutouts.
    maker = CutoutMaker(wcs, size=settings.cutout_size, mask_planes=mask_planes)
    x_list, y_list = [float(v) for v in xs], [float(v) for v in ys]
    sizes = [cutout_size(b, minimum=settings.cutout_size) for b in bbox_sizes]
    cutouts = maker.make_many([planes[n] for n in planes], x_list, y_list, sizes=sizes,
                              psfs_at=psfs_at)  # fmt: skip
    return Cutouts(_positions(x_list, y_list, bbox_sizes), lambda: list(cutouts), threads)


def _positions(xs: Any, ys: Any, bbox_sizes: Any) -> tuple[np.ndarray, ...]:
    """What a source's cutouts depend on, as float arrays (NaN compares equal to NaN)."""
    return tuple(np.array(v, dtype=float) for v in (xs, ys, bbox_sizes))


def note_counts(meta: TaskMetadata, dia_sources: Sequence[Mapping[str, Any]], t_start: float):
    note(meta, "nDiaSources", len(dia_sources))
    note(meta, "nPositive", int(sum(1 for s in dia_sources if not s.get("isNegative"))))
    note(meta, "nNegative", int(sum(1 for s in dia_sources if s.get("isNegative"))))
    note(meta, "totalWallTime", time.perf_counter() - t_start)


def summary_record(
    meta: TaskMetadata,
    science: Exposure,
    *,
    template_sha256: str,
    coverage: float,
    n: int,
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
        "templateSha256": template_sha256,
        "processedMjdTai": mjd_now(),
    }
