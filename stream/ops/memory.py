"""Keep freed memory in the process (glibc malloc) instead of handing it back to the OS.

Why: one 4k x 4k exposure allocates and frees ~100 arrays of 64-128 MB.  glibc serves each
from a fresh ``mmap`` and unmaps it on ``free``, so the next exposure faults every page in
again.  On the virtual machines this runs on (Firecracker, free-page reporting to the host)
a re-fault is expensive: the science side of scaling, background and star finding at 4k
took 1.47 s with fresh pages and 0.45 s with reused ones (same process, same data).  With
``mmap`` off and trimming off, freed blocks stay in the heap and are reused.  The price: the
process keeps its peak RSS (~1.4 GB at 4k) between exposures instead of breathing, which is
what a worker that processes one exposure after another wants anyway.

Set ``DIFFSTREAM_KEEP_FREED_MEMORY=0`` to leave malloc alone (e.g. many small jobs sharing
one machine).  Not glibc (musl, macOS): a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["keep_freed_memory", "configure_from_env"]

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_DISABLE = -1  # mallopt(M_TRIM_THRESHOLD, -1) disables trimming (mallopt(3))
_applied = False


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large blocks and heap trimming, and use one arena; True if
    applied."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        # gnu_get_libc_version exists only in glibc (musl's mallopt does nothing useful).
        libc.gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # One arena: the pipeline allocates planes on worker threads too (science and template
    # side by side, tiles, bands), and glibc gives threads their own arenas, whose freed
    # blocks the other threads never reuse; peak RSS then grew by 1.8 GB at 4k and the
    # planes were faulted in again every exposure.
    ok = (
        bool(mallopt(_M_MMAP_MAX, 0))
        and bool(mallopt(_M_TRIM_THRESHOLD, _DISABLE))
        and bool(mallopt(_M_ARENA_MAX, 1))
    )
    _applied = ok
    if not ok:
        log.warning("mallopt refused: freed memory will be returned to the OS")
    return ok


def configure_from_env() -> bool:
    """Apply :func:`keep_freed_memory` unless ``DIFFSTREAM_KEEP_FREED_MEMORY`` is 0/false."""
    value = os.environ.get("DIFFSTREAM_KEEP_FREED_MEMORY", "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory()
