"""8-connected footprints above a threshold, as runs (jitcore._kernels.label), for detection
on the score (jitcore.detect) and star finding on an S/N plane (jitcore.psfmeasure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffstream.jitcore._kernels.label import COMP_COLUMNS, RUN_COLUMNS, find_runs, label_runs

__all__ = ["Footprints", "label_footprints", "threshold_pixels"]

# First size of the run table, in runs per pixel of the image (floored at _MIN_RUNS): a
# difference image has ~1e-3 runs per pixel, so one scan nearly always suffices; a bad
# subtraction with more runs costs a second scan with a table of the exact size.  np.empty
# leaves untouched pages unmapped, so the generous first size costs no memory traffic.
_RUNS_PER_PIXEL = 1 / 256
_MIN_RUNS = 4096


def _runs(values: np.ndarray, valid: np.ndarray, threshold: float):
    """(run table, run peaks, number of runs) of ``float32(|values|) > threshold``."""
    thr = np.float32(threshold)
    cap = max(_MIN_RUNS, int(values.size * _RUNS_PER_PIXEL))
    runs = np.empty((cap, len(RUN_COLUMNS)), dtype=np.int64)
    peak = np.empty(cap)
    nruns = find_runs(values, valid, thr, runs, peak)
    if nruns > cap:
        runs = np.empty((nruns, len(RUN_COLUMNS)), dtype=np.int64)
        peak = np.empty(nruns)
        find_runs(values, valid, thr, runs, peak)
    return runs, peak, int(nruns)


def threshold_pixels(
    values: np.ndarray, valid: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int64 of the pixels of ``valid & isfinite(values) & (float32(|values|) >
    threshold)``, both polarities, in raster order: ``np.nonzero`` of that mask, reversed.

    The footprints' own pixels (:func:`label_footprints`' test, without the labelling), from
    one scan of ``values`` that reads ``valid`` only where the value passes: the boolean
    image and its ``np.nonzero`` cost five full-frame passes (~0.13 s at 4096^2, the streak
    step's largest part; issue 17).  Same input rules as :func:`label_footprints`."""
    runs, _, nruns = _runs(values, valid, threshold)
    runs = runs[:nruns]
    lengths = runs[:, 2] - runs[:, 1] + 1
    ys = np.repeat(runs[:, 0], lengths)
    # Each run's x0, x0 + 1, ..., x1: a global arange minus each run's offset in it.
    starts = np.cumsum(lengths) - lengths
    xs = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(runs[:, 1] - starts, lengths)
    return xs, ys


@dataclass
class Footprints:
    runs: np.ndarray  # (nruns, RUN_COLUMNS) int64, raster order
    nruns: int
    parent: np.ndarray  # root run of each run's component
    comp: np.ndarray  # (ncomp, COMP_COLUMNS) int64, components with npix >= min_area


def label_footprints(
    values: np.ndarray, valid: np.ndarray, threshold: float, min_area: int
) -> Footprints:
    """Components of ``valid & (float32(|values|) > threshold)``, one per polarity.

    ``values`` float32/float64 and ``valid`` bool, both C-contiguous, native byte order (the
    callers check).  The threshold is compared in float32, as sep does."""
    runs, peak, nruns = _runs(values, valid, threshold)
    parent = np.empty(nruns, np.int64)
    comp = np.empty((nruns, len(COMP_COLUMNS)), dtype=np.int64)
    ncomp = label_runs(runs, peak, nruns, int(min_area), parent, np.empty(nruns), comp)
    return Footprints(runs=runs, nruns=int(nruns), parent=parent, comp=comp[:ncomp])
