"""Science acceptance of the ZOGY pipeline on the project's seeded simulator (issue 3).

Each case simulates 1024x1024 pairs (deeper, rotated, offset template with another seeing and
photometric scale; PSF width varying 10% over the field; transients, brightening and fading
variables, saturated stars, cosmic rays, bad columns), writes them as real FITS, runs the same
pipeline as ``diffstream subtract`` and compares with the truth.  Several seeds are pooled so
that the S/N bins hold enough sources for the thresholds to mean something.
"""

from __future__ import annotations

import pytest

from diffstream.stream.cli.demo import match_truth
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from tests.science import acceptance
from tests.science.acceptance import CASES, NOISE_SEEDS, SEEDS

pytestmark = [pytest.mark.science, pytest.mark.slow]


def _run(tmp_path_factory, seed, case, *, transients=True):
    pair = simulate_pair(seed=seed, shape=(1024, 1024), transients=transients, **CASES[case])
    d = tmp_path_factory.mktemp(f"{case}-{seed}-{int(transients)}")
    sci, tmpl = write_pair(pair, d)
    result = subtract_files(str(sci), str(tmpl), settings=Settings(), exposure_id=seed)
    acceptance.assert_psfs_measured(result)
    return pair, result


@pytest.fixture(scope="module", params=list(CASES))
def pooled(request, tmp_path_factory):
    """Truth rows joined with their matched diaSource (or none), pooled over seeds."""
    rows = []
    n_false = []
    for seed in SEEDS:
        pair, result = _run(tmp_path_factory, seed, request.param)
        truth = pair.truth
        hit = match_truth(result, truth)
        for i in range(len(truth["x"])):
            src = result.dia_sources[hit[i]] if hit[i] >= 0 else None
            rows.append(
                {
                    "kind": truth["kind"][i],
                    "flux": float(truth["flux_diff_njy"][i]),
                    "snr": float(truth["snr_expected"][i]),
                    "src": src,
                }
            )
        matched = set(hit[hit >= 0].tolist())
        n_false.append(len(result.dia_sources) - len(matched))
    return request.param, rows, n_false


def test_completeness_snr_7_to_10(pooled):
    case, rows, _ = pooled
    acceptance.assert_completeness_7_to_10(case, rows)


def test_completeness_snr_above_10(pooled):
    case, rows, _ = pooled
    acceptance.assert_completeness_above_10(case, rows)


def test_false_positives_with_injected_sources(pooled):
    case, rows, n_false = pooled
    acceptance.assert_false_positives(case, rows, n_false, len(SEEDS))


def test_flux_bias_and_pulls(pooled):
    case, rows, _ = pooled
    acceptance.assert_flux_bias_and_pulls(case, rows)


def test_fading_variables_are_negative(pooled):
    case, rows, _ = pooled
    acceptance.assert_fading_negative(case, rows)


@pytest.mark.parametrize("case", list(CASES))
def test_pure_noise_pairs_false_positive_rate(tmp_path_factory, case):
    total = 0
    for seed in NOISE_SEEDS:
        pair, result = _run(tmp_path_factory, seed, case, transients=False)
        assert len(pair.truth["x"]) == 0
        total += len(result.dia_sources)
    acceptance.assert_pure_noise_rate(case, total, len(NOISE_SEEDS))
