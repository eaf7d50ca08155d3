"""The one place that decides how Numba compiles diffstream's kernels.

``cache=True`` everywhere so that compile cost is paid once per machine (workers started at
once share the on-disk cache; see tests/unit/test_jit_cache.py).  ``fastmath`` stays off:
the kernels compare against NumPy references at tight tolerances and NaN handling matters
(masked pixels); the exceptions are :func:`njit_sums` (``reassoc``, for plain float sums only)
and :func:`njit_vec` (``contract``, on request, for the warp's tap sums).
``parallel`` is off by default: the stream runs one worker per core, and
nested thread pools would oversubscribe; set DIFFSTREAM_NUMBA_PARALLEL=1 to try it.
"""

from __future__ import annotations

import os

import numba

PARALLEL = os.environ.get("DIFFSTREAM_NUMBA_PARALLEL", "0") == "1"

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False}


def _lazy(opts: dict, args: tuple):
    """``numba.njit`` that compiles (or loads from the cache) on first call, never at import.

    The kernels' explicit signatures stay in the source as their contract (the checked
    wrappers in jitcore/ enforce it: dtypes, layouts, C-contiguity), and are kept on the
    dispatcher as ``diffstream_signatures``, but they are not handed to Numba: with them,
    Numba compiles every listed signature when the module is imported, which cost ~1.5 s of
    every process start for kernels a run may never call (issue 17).  Called with the
    arrays a wrapper passes, the dispatcher compiles exactly the signature the explicit list
    would have chosen first (C-contiguous inputs type as C arrays), and the on-disk cache
    (``cache=True``) is read per kernel on its first call.  ``diffstream warmup`` and the
    worker's warm-up run a simulated exposure, so the first real one still compiles nothing
    (tests/unit/test_warmup.py).
    """
    if args and callable(args[0]):
        return numba.njit(**opts)(args[0])
    sigs = args[0] if args else None

    def wrap(func):
        disp = numba.njit(**opts)(func)
        disp.diffstream_signatures = sigs
        return disp

    return wrap


def njit(*args, **kwargs):
    """``numba.njit`` with the project's options, compiled on first call (see :func:`_lazy`;
    explicit signatures may be passed, and document the kernel)."""
    opts = dict(JIT_OPTIONS)
    opts.update(kwargs)
    return _lazy(opts, args)


def pnjit(*args, **kwargs):
    """Like :func:`njit` but allowed to use ``prange`` when DIFFSTREAM_NUMBA_PARALLEL=1."""
    opts = dict(JIT_OPTIONS)
    opts["parallel"] = PARALLEL
    opts.update(kwargs)
    return _lazy(opts, args)


def njit_sums(*args, **kwargs):
    """:func:`njit` with fastmath ``reassoc`` only, for loops of plain float sums.

    Reassociation lets LLVM split a sum into SIMD lanes (5x faster for the background
    mesh's box sums); it only changes the order of the additions (~1e-16 relative).  NaN
    and inf semantics stay IEEE ('nnan'/'ninf' off), so a kernel still sees NaN compares.
    """
    return njit(*args, fastmath={"reassoc"}, **kwargs)


def njit_vec(*args, fma: bool = False, **kwargs):
    """:func:`njit` for loops meant to vectorise: NumPy's error model, and with ``fma=True``
    fastmath ``contract`` only.

    Numba's default (Python) error model tests every float divisor and raises
    ZeroDivisionError; a loop that may raise does not vectorise (the warp's per-row
    normalisation ran one pixel at a time).  With NumPy's model x / 0 is inf or NaN, as in
    NumPy, so a kernel that divides must still rule a zero divisor out itself.  ``contract``
    lets LLVM fuse ``a * b + c`` into one multiply-add: one rounding instead of two, so the
    float64 sums move in their last bit (the warp's float32 outputs came out bit-identical
    on bench_warp's 4k map), and the 36-tap sums of the Lanczos warp run ~10% faster.
    Nothing else is relaxed (NaN, inf, signed zeros and the order of additions stay IEEE).
    """
    opts: dict[str, object] = {"error_model": "numpy"}
    if fma:
        opts["fastmath"] = {"contract"}
    opts.update(kwargs)
    return njit(*args, **opts)
