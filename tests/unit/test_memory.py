"""stream.ops.memory: freed large arrays stay in the process heap (glibc), opt-out by env."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# The probe asks where each 64 MB array lives: inside the brk heap ("[heap]" in
# /proc/self/maps) or not.  Under glibc's defaults such a block is its own mmap, unmapped on
# free (and the kernel may well hand the same address back, so equal addresses prove
# nothing); with the policy of stream/ops/memory.py it is carved from the main arena's heap
# and stays there for the next one.  A thread's block lands in the main heap only with one
# arena (M_ARENA_MAX=1); otherwise in the thread's own mmapped arena.
_PROBE = """
import ctypes, sys, threading
import numpy as np
mode = sys.argv[1]
if mode == "product":
    from diffstream.stream.ops.memory import configure_from_env, keep_freed_memory
    applied = configure_from_env()
    if applied:
        assert keep_freed_memory()  # a second call is a no-op that says so
elif mode == "no-arena-limit":  # the policy without its M_ARENA_MAX=1 line
    libc = ctypes.CDLL("libc.so.6")
    applied = bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, -1))
else:
    applied = False

def in_heap(a):
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return lo <= a.ctypes.data < hi
    return False

where = []
def one():
    a = np.ones(16 * 2**20, dtype=np.float32)  # 64 MB: an mmap block under default malloc
    where.append(in_heap(a))
    del a
for _ in range(2):
    t = threading.Thread(target=one)
    t.start()
    t.join()
one()  # and on the main thread
print(applied, *where)
"""


def _probe(mode: str, **env: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env={**os.environ, **env}, capture_output=True,
        text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.split()


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")


@glibc_only
def test_freed_arrays_stay_in_the_heap_whichever_thread_made_them():
    # One arena: planes made on worker threads (science/template side by side, tiles) and
    # freed there are reused by the next exposure's allocations, whichever thread.
    assert _probe("product") == ["True", "True", "True", "True"]


@glibc_only
def test_opt_out_leaves_malloc_alone():
    # The probe's premise: with malloc left alone every block is an mmap, outside the heap.
    assert _probe("product", DIFFSTREAM_KEEP_FREED_MEMORY="0") == ["False"] * 4


@glibc_only
def test_probe_sees_a_missing_arena_limit():
    # Without M_ARENA_MAX=1 the threads' blocks leave the main heap: the first test would fail.
    assert _probe("no-arena-limit")[1:3] == ["False", "False"]
