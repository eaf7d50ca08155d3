"""Numba's on-disk cache when several worker processes start at once (STYLE.md: cache=True).

Three processes compile the same kernels into one empty cache directory at the same time;
all must succeed and agree, and a fourth process must then load from the cache (no compile).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, numpy as np
from diffstream.jitcore.warp import warp_image
from diffstream.jitcore._kernels.lanczos import KERNELS
rng = np.random.default_rng(0)
img = rng.normal(size=(40, 40)).astype(np.float32)
var = np.ones_like(img)
mask = np.zeros(img.shape, np.int32)
yy, xx = np.mgrid[0:40, 0:40].astype(np.float64)
out, _, _ = warp_image(img, var, mask, xx + 0.3, yy - 0.2, no_data_bit=256)
kernel = KERNELS[3][0]  # the Lanczos-3 map kernel (one compiled kernel per order)
print(json.dumps({"sum": float(np.nansum(out)),
                  "hits": sum(kernel.stats.cache_hits.values()),
                  "misses": sum(kernel.stats.cache_misses.values())}))
"""


def _spawn(cache: Path) -> subprocess.Popen:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_concurrent_workers_share_the_cache(tmp_path):
    import json

    procs = [_spawn(tmp_path) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["sum"] for r in results}) == 1
    assert any(tmp_path.rglob("*.nbi")), "no cache index written"
    late = _spawn(tmp_path)
    out, err = late.communicate(timeout=240)
    assert late.returncode == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["sum"] == results[0]["sum"]
    assert r["hits"] >= 1 and r["misses"] == 0
