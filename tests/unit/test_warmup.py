"""diffstream.stream.cli.warmup: a worker compiles (or loads) its kernels before it takes events."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import diffstream.stream.cli.warmup
from diffstream.stream.cli.main import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# A fresh process: warm up, note every Numba dispatcher's compiled signatures, then subtract
# a larger, different exposure and list the dispatchers that compiled anything new.
_PROBE = r"""
import gc, json, sys, tempfile
from numba.core.dispatcher import Dispatcher
from diffstream.stream.ops.settings import Settings
from diffstream.stream.cli.warmup import warm_up

def signatures():
    return {f"{d.py_func.__module__}.{d.py_func.__qualname__}#{id(d)}": len(d.signatures)
            for d in gc.get_objects() if isinstance(d, Dispatcher)}

settings = Settings(method=sys.argv[1])
warm_up(settings)
before = signatures()
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.simulate import simulate_pair, write_pair
with tempfile.TemporaryDirectory() as tmp:
    sci, tmpl = write_pair(simulate_pair(seed=5, shape=(1024, 768)), tmp)
    result = subtract_files(str(sci), str(tmpl), settings=settings)
after = signatures()
print(json.dumps({
    "compiled_before": sum(1 for n in before.values() if n),
    "new": sorted(k for k, n in after.items() if n != before.get(k, 0)),
    "sources": len(result.dia_sources),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["zogy", "al"])
def test_after_warm_up_a_real_exposure_compiles_nothing(method):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, method], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=420,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["compiled_before"] >= 20  # the probe does see the kernels
    assert probe["sources"] > 0
    assert probe["new"] == []


def test_warmup_command_subtracts_a_pair_and_prints_its_timings(capsys):
    assert main(["warmup"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("warm-up (zogy, 512x512 simulated pair): imports")
    assert "subtraction" in line and line.endswith(" s")


@pytest.fixture
def empty_dirs(tmp_path):
    (tmp_path / "in").mkdir()
    return ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
            "--data-root", str(tmp_path), "--exit-when-idle", "0.2"]  # fmt: skip


@pytest.fixture
def served(monkeypatch):
    """The PrometheusMetrics objects that ``run`` creates."""
    import diffstream.stream.ops.metrics

    made = []
    real = diffstream.stream.ops.metrics.start_metrics

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(diffstream.stream.ops.metrics, "start_metrics", spy)
    return made


def test_run_warms_up_before_consuming_unless_told_not_to(monkeypatch, empty_dirs, capsys, served):
    calls = []
    monkeypatch.setattr(
        diffstream.stream.cli.warmup, "warm_up", lambda settings: calls.append(settings.method)
    )
    assert main(["run", *empty_dirs, "--method", "al"]) == 0
    assert calls == ["al"]  # with the worker's own settings
    # Set, and to this (stubbed, instant) warm-up's duration: not left at a default.
    assert 0 < served[0].value("diffstream_warmup_seconds", ok="true") < 5
    assert main(["run", *empty_dirs, "--no-warmup"]) == 0
    assert calls == ["al"]
    assert "consumed 0" in capsys.readouterr().out


def test_a_failed_warm_up_is_logged_and_the_worker_still_runs(
    monkeypatch, empty_dirs, caplog, served
):
    def fail(settings):
        raise ValueError("found 3 usable PSF stars < required min_stars=50")

    monkeypatch.setattr(diffstream.stream.cli.warmup, "warm_up", fail)
    with caplog.at_level(logging.WARNING, logger="diffstream.run"):
        assert main(["run", *empty_dirs]) == 0
    assert "warm-up did not finish (ValueError: found 3 usable PSF stars" in caplog.text
    assert "consuming anyway" in caplog.text
    assert 0 < served[0].value("diffstream_warmup_seconds", ok="false") < 5


def test_warm_up_leaves_scipy_signal_unimported():
    # Issue 17's start-up budget: the worker's warm-up (imports and a simulated pair without
    # host galaxies) must not pull scipy.signal (and its scipy.stats), ~0.4 s of imports.
    code = (
        "import sys\n"
        "from diffstream.stream.cli.warmup import warm_up\n"
        "from diffstream.stream.ops.settings import Settings\n"
        "warm_up(Settings(), shape=(256, 256))\n"
        "print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
