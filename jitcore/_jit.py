"""The one place that decides how Numba compiles diffstream's kernels.

``cache=True`` everywhere so that compile cost is paid once per machine (workers started at
once share the on-disk cache; see tests/unit/test_jit_cache.py).  ``fastmath`` stays off:
the kernels compare against NumPy references at tight tolerances and NaN handling matters
(masked pixels); the one exception is :func:`njit_sums`, for plain float sums only.
``parallel`` is off by default: the stream runs one worker per core, and
nested thread pools would oversubscribe; set DIFFSTREAM_NUMBA_PARALLEL=1 to try it.
"""

from __future__ import annotations

import os

import numba

PARALLEL = os.environ.get("DIFFSTREAM_NUMBA_PARALLEL", "0") == "1"

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False}


def njit(*args, **kwargs):
    """``numba.njit`` with the project's options (explicit signatures may be passed)."""
    opts = dict(JIT_OPTIONS)
    opts.update(kwargs)
    return numba.njit(*args, **opts)


def pnjit(*args, **kwargs):
    """Like :func:`njit` but allowed to use ``prange`` when DIFFSTREAM_NUMBA_PARALLEL=1."""
    opts = dict(JIT_OPTIONS)
    opts["parallel"] = PARALLEL
    opts.update(kwargs)
    return numba.njit(*args, **opts)


def njit_sums(*args, **kwargs):
    """:func:`njit` with fastmath ``reassoc`` only, for loops of plain float sums.

    Reassociation lets LLVM split a sum into SIMD lanes (5x faster for the background
    mesh's box sums); it only changes the order of the additions (~1e-16 relative).  NaN
    and inf semantics stay IEEE ('nnan'/'ninf' off), so a kernel still sees NaN compares.
    """
    return njit(*args, fastmath={"reassoc"}, **kwargs)
