"""The output directory of ``diffstream subtract``: alerts.avro, difference.fits, score.fits,
metadata.json.  metadata.json is written in every outcome (done, no work, bad input) so that an
operator always finds out what happened to a pair."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from diffstream.stream.alerts.packets import ALERT_SCHEMA, schema_fingerprint, write_alert_file
from diffstream.stream.io.outputs import write_json, write_planes
from diffstream.stream.pipeline.subtract import SubtractResult
from diffstream.stream.provenance.taskmeta import TaskMetadata

__all__ = ["write_products", "write_metadata"]


def write_metadata(
    outdir: str | Path,
    meta: TaskMetadata,
    *,
    status: str,
    error: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    root = meta.steps().get(meta.name, {})
    doc: dict[str, Any] = {
        "status": status,
        "task": meta.name,
        "timings": meta.timings(),
        "config": root.get("config"),
        "configHash": root.get("configHash"),
        "versions": root.get("versions"),
        "versionsHash": root.get("versionsHash"),
        "inputs": {"science": root.get("science"), "template": root.get("template")},
        "schemas": {"alert": {"name": ALERT_SCHEMA["name"],
                              "fingerprint": schema_fingerprint(ALERT_SCHEMA)}},
        "counts": {k: root.get(k) for k in ("nDetections", "nDiaSources", "nPositive",
                                            "nNegative") if k in root},
        "templateCoverage": root.get("templateCoverage"),
        "steps": {k: v for k, v in meta.steps().items() if k != meta.name},
        "fullMetadata": meta.full_metadata(),
    }  # fmt: skip
    for key in (
        "psf",
        "starMatch",
        "photoCalib",
        "totalWallTime",
        "astrometry",
        "dipoles",
        "varianceScale",
        "inputVarianceScale",
        "alardLupton",
    ):
        if key in root:
            doc[key] = root[key]
    if error is not None:
        doc["error"] = error
    if extra:
        doc.update(extra)
    return write_json(Path(outdir) / "metadata.json", doc)


def write_products(result: SubtractResult, outdir: str | Path) -> dict[str, Path]:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    z = result.zogy
    sci = result.science
    planes = result.mask_planes or sci.mask_planes
    paths: dict[str, Path] = {}
    with result.metadata.timer("write"), ThreadPoolExecutor(2, "write") as pool:
        # The alerts (Avro encoding, then deflate on threads) and score.fits are written while
        # difference.fits goes out here: byte swapping, deflate and file writes all run
        # outside the GIL.
        alerts_written = pool.submit(write_alert_file, out / "alerts.avro", result.alerts)
        # score.fits: IMAGE is S_corr (unitless, ~N(0,1)); VARIANCE is 1 where valid.
        score_var = np.where(z.valid, np.float32(1.0), np.float32(np.nan))
        score_written = pool.submit(
            write_planes,
            out / "score.fits",
            image=z.score,
            variance=score_var,
            mask=result.mask,
            mask_planes=planes,
            wcs=sci.wcs.deepcopy(),  # wcslib structs are not safe to share between threads
            bunit="",
        )
        paths["difference"] = write_planes(
            out / "difference.fits",
            image=z.difference,
            variance=z.difference_variance,
            mask=result.mask,
            mask_planes=planes,
            wcs=sci.wcs,
            header={"VISIT": sci.visit or 0, "DETECTOR": sci.detector or 0},
            # The difference's PSF at the image centre: detect (and any LSST-layout reader)
            # can use the file on its own.
            psf=z.tile_at((sci.shape[1] - 1) / 2.0, (sci.shape[0] - 1) / 2.0).psf_d,
        )
        if result.al is not None:
            al = result.al
            paths["matched"] = write_planes(
                out / "matched.fits",
                image=al.matched,
                variance=al.matched_variance,
                mask=result.mask,
                mask_planes=planes,
                wcs=sci.wcs,
                header={"VISIT": sci.visit or 0, "DETECTOR": sci.detector or 0,
                        "ALDIR": al.direction, "ALKSUM": float(al.kernel_sum),
                        "ALKSIZE": int(al.kernel_size)},
            )  # fmt: skip
        paths["score"] = score_written.result()
        alerts_written.result()
        paths["alerts"] = out / "alerts.avro"
    paths["metadata"] = write_metadata(out, result.metadata, status="done")
    return paths
