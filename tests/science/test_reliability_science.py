"""The shipped real/bogus model on simulated pairs it never saw (issue 15).

The cases are made by the training script's own case maker (benchmarks/train_reliability.py
``run_case``: star-stamp fakes at S/N 5-20, simulated transients and variables, and the four
treatments clean / PSF 5-15% off / template shifted 0.1-0.5 px / unflagged defects and
saturated stars), so that what is judged here is labelled exactly as the training set was;
the seeds (SEEDS) are in neither its training nor its held-out lists.  The scores are the
ones the pipeline wrote into the diaSources, not a second evaluation of the model.

Claim (docs/reliability.md): at the threshold that keeps 95% of the real detections, at
least 90% of the bogus ones are rejected.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from diffstream.stream.alerts.reliability import DEFAULT_MODEL

pytestmark = [pytest.mark.science, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SEEDS = (977, 978, 979, 980)


def _trainer():
    spec = importlib.util.spec_from_file_location(
        "train_reliability", ROOT / "benchmarks" / "train_reliability.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    t = _trainer()
    assert not set(SEEDS) & set(t.TRAIN_SIM_SEEDS + t.HELD_SIM_SEEDS)
    labels, scores, alerts = [], [], []
    for seed in SEEDS:
        root = tmp_path_factory.mktemp(f"reliability-{seed}")
        sci, tmpl, truth = t.simulated_pair(seed, root / "pair")
        for kind in t.KINDS:
            work = root / kind
            work.mkdir()
            case = t.run_case(sci, tmpl, kind, seed, work, truth, score=True)
            kept = [s for s, k in zip(case.result.dia_sources, case.keep, strict=True) if k]
            labels.append(case.y)
            scores.append([s["reliability"] for s in kept])
            alerts += case.result.alerts
    return np.concatenate(labels), np.concatenate(scores).astype(float), alerts


def test_rejects_90_percent_of_bogus_at_95_percent_completeness(scored):
    y, p, _ = scored
    n_real, n_bogus = int((y == 1).sum()), int((y == 0).sum())
    # The premise: enough of both for the 5% quantile and a 90% fraction to mean something.
    assert n_real >= 200 and n_bogus >= 40, (n_real, n_bogus)
    threshold = np.quantile(p[y == 1], 0.05, method="lower")
    rejected = float(np.mean(p[y == 0] < threshold))
    print(f"reliability on seeds {SEEDS}: {n_real} real, {n_bogus} bogus, "
          f"rejected {rejected:.3f} at threshold {threshold:.3f}")  # fmt: skip
    assert rejected >= 0.90, (rejected, threshold, n_real, n_bogus)


def test_every_alert_carries_a_reliability_in_0_1(scored):
    _, _, alerts = scored
    assert len(alerts) > 0
    for alert in alerts:
        src = alert["diaSource"]
        assert 0.0 <= src["reliability"] <= 1.0
        assert src["reliabilityVersion"] == DEFAULT_MODEL
