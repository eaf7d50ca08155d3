"""Science acceptance of Alard-Lupton subtraction on the ZOGY tests' simulations (issue 5).

Same simulator setups, seeds and thresholds as tests/science/test_zogy_science.py: 1024^2
pairs (deeper, rotated, offset template with other seeing and photometric scale; PSF width
varying 10% over the field; transients, brightening and fading variables, saturated stars,
cosmic rays, bad columns), written as FITS and run through the pipeline of
``diffstream subtract --method al`` (everything after the subtraction -- variance scaling,
detection on the score, measurement, alerts -- is shared with ZOGY).
"""

from __future__ import annotations

import numpy as np
import pytest

import diffstream.stream.pipeline.subtract as pipeline
from diffstream.stream.cli.demo import match_truth
from diffstream.stream.ops.settings import Settings
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from tests.science import acceptance
from tests.science.acceptance import CASES, NOISE_SEEDS, SEEDS

pytestmark = [pytest.mark.science, pytest.mark.slow]

DIRECTION = {"template_sharper": "convolveTemplate", "science_sharper": "convolveScience"}


def _write(tmp_path_factory, seed, case, transients=True):
    pair = simulate_pair(seed=seed, shape=(1024, 1024), transients=transients, **CASES[case])
    d = tmp_path_factory.mktemp(f"al-{case}-{seed}-{int(transients)}")
    sci, tmpl = write_pair(pair, d)
    return pair, str(sci), str(tmpl)


def _subtract(sci, tmpl, seed, *, method, infos=None):
    result = pipeline.subtract_files(sci, tmpl, settings=Settings(method=method), exposure_id=seed)
    acceptance.assert_psfs_measured(result)
    if method == "al" and infos is not None:
        infos.append(result.al)
    return result


@pytest.fixture(scope="module", params=list(CASES))
def pooled(request, tmp_path_factory):
    """Truth rows with their AL and ZOGY diaSources (or None), pooled over seeds."""
    case = request.param
    rows, n_false, infos = [], [], []
    for seed in SEEDS:
        pair, sci, tmpl = _write(tmp_path_factory, seed, case)
        res_al = _subtract(sci, tmpl, seed, method="al", infos=infos)
        res_z = _subtract(sci, tmpl, seed, method="zogy")
        truth = pair.truth
        hit_al = match_truth(res_al, truth)
        hit_z = match_truth(res_z, truth)
        for i in range(len(truth["x"])):
            rows.append(
                {
                    "kind": truth["kind"][i],
                    "flux": float(truth["flux_diff_njy"][i]),
                    "snr": float(truth["snr_expected"][i]),
                    "src": res_al.dia_sources[hit_al[i]] if hit_al[i] >= 0 else None,
                    "zogy": res_z.dia_sources[hit_z[i]] if hit_z[i] >= 0 else None,
                }
            )
        n_false.append(len(res_al.dia_sources) - len(set(hit_al[hit_al >= 0].tolist())))
    return case, rows, n_false, infos


def test_direction_and_kernel_fit(pooled):
    case, _, _, infos = pooled
    assert len(infos) == len(SEEDS)
    for info in infos:
        assert info.direction == DIRECTION[case]
        # Both images are in nJy: the fitted photometric scale is 1.
        assert info.kernel_sum == pytest.approx(1.0, abs=0.02), case
        assert info.n_stars_used >= 20
        assert 0.9 < info.residual_rms < 1.2


def test_completeness_snr_7_to_10(pooled):
    case, rows, _, _ = pooled
    acceptance.assert_completeness_7_to_10(case, rows)


def test_completeness_snr_above_10(pooled):
    case, rows, _, _ = pooled
    acceptance.assert_completeness_above_10(case, rows)


def test_false_positives_with_injected_sources(pooled):
    case, rows, n_false, _ = pooled
    acceptance.assert_false_positives(case, rows, n_false, len(SEEDS))


def test_flux_bias_and_pulls(pooled):
    case, rows, _, _ = pooled
    acceptance.assert_flux_bias_and_pulls(case, rows)


def test_fading_variables_are_negative(pooled):
    case, rows, _, _ = pooled
    acceptance.assert_fading_negative(case, rows)


def test_al_and_zogy_psf_fluxes_agree_within_errors(pooled):
    """Same sources, two methods: the difference is within the quadrature sum of the errors.

    The two measurements share the pixels' noise, so they are correlated and the pull of
    their difference is narrower than 1; an excess over 1.2 would be a real disagreement.
    """
    case, rows, _, _ = pooled
    both = [r for r in rows if r["src"] is not None and r["zogy"] is not None]
    assert len(both) >= 100
    a = np.array([r["src"]["psfFlux"] for r in both])
    ea = np.array([r["src"]["psfFluxErr"] for r in both])
    z = np.array([r["zogy"]["psfFlux"] for r in both])
    ez = np.array([r["zogy"]["psfFluxErr"] for r in both])
    pull = (a - z) / np.sqrt(ea**2 + ez**2)
    q75, q25 = np.percentile(pull, [75, 25])
    assert (q75 - q25) / 1.349 < 1.2, f"{case}: AL-ZOGY pull robust std {(q75 - q25) / 1.349:.3f}"
    assert np.std(pull) < 1.2, f"{case}: AL-ZOGY pull std {np.std(pull):.3f}"
    snr = np.array([r["snr"] for r in both])
    ratio = a[snr > 10] / z[snr > 10]
    assert abs(np.median(ratio) - 1.0) < 0.02, f"{case}: median AL/ZOGY {np.median(ratio):.4f}"
    # The errors themselves agree: both methods reach nearly the same S/N.
    assert abs(np.median(ea / ez) - 1.0) < 0.15, f"{case}: median err ratio {np.median(ea / ez)}"


@pytest.mark.parametrize("case", list(CASES))
def test_pure_noise_pairs_false_positive_rate(tmp_path_factory, case):
    total = 0
    for seed in NOISE_SEEDS:
        pair, sci, tmpl = _write(tmp_path_factory, seed, case, transients=False)
        assert len(pair.truth["x"]) == 0
        total += len(_subtract(sci, tmpl, seed, method="al").dia_sources)
    acceptance.assert_pure_noise_rate(case, total, len(NOISE_SEEDS))
