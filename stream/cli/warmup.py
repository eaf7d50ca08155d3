"""Load (or compile) every kernel a subtraction uses before the first real exposure.

Why: Numba compiles on first call.  A worker's first exposure otherwise pays it: ~35 s with
an empty cache (a new release, a new machine, a fresh volume), ~2 s with a warm one.  In a
consumer group that first event would sit in a worker that has already taken partitions
while the others idle, and its latency would be an outlier on every rollout.  So
``diffstream run`` warms up *before* it subscribes (``warmup``, default on), and
``diffstream warmup`` does it alone, for an init container or an image build step that fills
``NUMBA_CACHE_DIR`` once per machine type (the cache is keyed on the CPU, so a cache built on
another CPU model is recompiled, not misused).

How: a small seeded simulated pair, written as LSST-style FITS and run through the same
:func:`stream.pipeline.subtract.subtract_files` as every event, with the worker's own settings (the
method, the PSF degree and the thread count select which kernels and signatures are
needed).  Nothing of it is published; the files live in a temporary directory.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from diffstream.stream.ops.settings import Settings

__all__ = ["WARMUP_SHAPE", "warm_up"]

log = logging.getLogger(__name__)

# Large enough for several ZOGY tiles, a measured PSF from stars and a spatial AL solution
# (so the same kernels and signatures as a full exposure compile), small enough to take a
# fraction of a second once compiled.
WARMUP_SHAPE = (512, 512)


def warm_up(settings: Settings, *, shape: tuple[int, int] = WARMUP_SHAPE) -> dict[str, float]:
    """Run one simulated pair through the pipeline with ``settings``; returns timings (s):
    ``imports`` (the pipeline's modules; kernels compile or load on first call), ``simulate``,
    ``subtract`` (the pipeline; the other kernels compile or load) and ``total``.  Raises
    what the pipeline raises."""
    t0 = time.perf_counter()
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    t1 = time.perf_counter()
    # Data roots concern event paths, not this private pair; the method, PSF and threading
    # settings are kept, since they pick the kernels and signatures.
    # Never the APDB: the simulated pair's diaSources would become diaObjects of the survey.
    run_settings = settings.model_copy(update={"data_roots": [], "apdb": None})
    with tempfile.TemporaryDirectory(prefix="diffstream-warmup-") as tmp:
        pair = simulate_pair(
            seed=20261125, shape=shape, n_stars=150, n_transients=10, n_variables=4
        )
        science, template = write_pair(pair, Path(tmp))
        t2 = time.perf_counter()
        # An id of its own: the simulated pair has none, and the warning that says so would
        # stand in every worker's start-up log.
        result = subtract_files(str(science), str(template), settings=run_settings, exposure_id=1)
        t3 = time.perf_counter()
        n = len(result.dia_sources)
    timings = {"imports": t1 - t0, "simulate": t2 - t1, "subtract": t3 - t2, "total": t3 - t0}
    log.info(
        "warm-up (%s, %dx%d simulated pair, %d diaSources): %.1f s",
        settings.method, shape[1], shape[0], n, timings["total"],
    )  # fmt: skip
    return timings
