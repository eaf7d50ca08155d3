"""Issue 3's science acceptance criteria, shared by the ZOGY and the AL science tests.

``rows`` are truth rows pooled over seeds: ``{"kind", "flux", "snr", "src"}`` where ``src``
is the matched diaSource (or None).  Each function asserts one criterion for one ``case``.
"""

from __future__ import annotations

import numpy as np

# LSST-like sampling (0.2" pixels, 0.55-0.7" seeing).  Why not sharper: for a PSF of sigma s
# px, pure Gaussian noise alone gives ~ 2 * u exp(-u^2/2) / ((2 pi)^1.5 2 s^2) excursions per
# pixel above |u| = 5 in a matched-filter score (the Euler characteristic of a smooth Gaussian
# field): 1.1 per Mpix at FWHM 2.4 px, the whole "<= 1 per Mpix" budget, 0.5 at 3.6 px.
CASES = {
    "template_sharper": {"science_fwhm": 3.6, "template_fwhm": 2.8},
    "science_sharper": {"science_fwhm": 2.8, "template_fwhm": 3.6},
}
SEEDS = (101, 202, 303)
NOISE_SEEDS = (11, 22, 33, 44)


def assert_psfs_measured(result):
    """The simulated files carry their true PSFs as HDUs: a run that silently fell back to
    them (or to a keyword Gaussian) would flatter every figure below.  Both PSFs must have
    been measured from the images' stars, as the run itself reports."""
    psf = result.metadata.get("psf", step=result.metadata.name)
    for side in ("science", "template"):
        assert psf[side]["source"] == "measured", (side, psf[side])
        assert psf[side]["nstars"] >= 10, (side, psf[side])


def completeness(rows, lo, hi):
    sel = [r for r in rows if lo <= r["snr"] < hi]
    return sum(r["src"] is not None for r in sel), len(sel)


def assert_completeness_7_to_10(case, rows):
    k, n = completeness(rows, 7, 10)
    assert n >= 20, f"too few injected sources in the bin ({n}) for the test to mean anything"
    assert k / n >= 0.85, f"{case}: completeness at S/N 7-10 = {k}/{n}"


def assert_completeness_above_10(case, rows):
    k, n = completeness(rows, 10, np.inf)
    assert n >= 50
    assert k / n >= 0.97, f"{case}: completeness at S/N >= 10 = {k}/{n}"


def assert_false_positives(case, rows, n_false, n_pairs):
    assert 60 <= len(rows) / n_pairs <= 100
    assert max(n_false) <= 5, f"{case}: false positives per pair {n_false}"


def assert_flux_bias_and_pulls(case, rows):
    bright = [r for r in rows if r["src"] is not None and r["snr"] > 20]
    assert len(bright) >= 30
    ratio = np.array([r["src"]["psfFlux"] / r["flux"] for r in bright])
    bias = np.median(ratio) - 1.0
    assert abs(bias) <= 0.03, f"{case}: PSF-flux bias {bias:+.3%} at S/N > 20"
    found = [r for r in rows if r["src"] is not None]
    pulls = np.array([(r["src"]["psfFlux"] - r["flux"]) / r["src"]["psfFluxErr"] for r in found])
    q75, q25 = np.percentile(pulls, [75, 25])
    robust_std = (q75 - q25) / 1.349
    assert 0.8 <= robust_std <= 1.25, f"{case}: pull robust std {robust_std:.3f}"
    assert abs(np.median(pulls)) < 5 * 1.2533 * robust_std / np.sqrt(len(pulls)) + 0.3


def assert_fading_negative(case, rows):
    fading = [r for r in rows if r["kind"] == "fading" and r["src"] is not None]
    rising = [r for r in rows if r["kind"] != "fading" and r["src"] is not None]
    assert len(fading) >= 10
    assert all(r["src"]["isNegative"] for r in fading), case
    assert not any(r["src"]["isNegative"] for r in rising), case


def assert_pure_noise_rate(case, total, n_pairs, shape=(1024, 1024)):
    mpix = n_pairs * shape[0] * shape[1] / 1e6
    assert total / mpix <= 1.0, f"{case}: {total} detections on {mpix:.1f} Mpix of pure noise"
