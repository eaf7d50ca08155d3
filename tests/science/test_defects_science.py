"""Issue 12, bad pixels: defects cost no more than a few per cent of completeness.

Each seed gives two 1024^2 pairs with the same sky, stars, transients and noise
(simulate_pair draws every ingredient from its own stream):

* the defect pair: 4 bad columns and 40 cosmic rays in the science, as many in the
  template, difference sources free to sit on them (``avoid_defects=False``), run through
  the pipeline exactly as ``diffstream subtract`` runs it (PSFs measured), with ZOGY and
  with Alard-Lupton (both convolve, so both must see repaired pixels);
* the reference: the same pair without defects through ZOGY with the true PSFs (the
  simulator's stamps given as external PSFs; ``psf_gradient=0`` makes one stamp the truth
  everywhere), the best a plain ZOGY can do on that sky.

Done when (issue 12) the defect pair's completeness is within 0.05 of the reference in
every S/N bin >= 7, with >= 100 injected sources per bin over the seeds; also checked: the
dead strip along a 1-px bad column is at most 3 px wide, sources on interpolated pixels
are kept and flagged, and the defects add no false positives to speak of.

Seeds: the interpolation was developed on seeds 1 and 2 (TUNING_SEEDS, for the record);
this test runs only on HELD_OUT_SEEDS, which nothing was tuned on.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial import cKDTree

from diffstream.jitcore.masks import DEFAULT_PLANES, bits
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from tests.science.truth import match_truth

pytestmark = [pytest.mark.science, pytest.mark.slow]

TUNING_SEEDS = (1, 2)  # not run here; listed so that no one mistakes them for held-out ones
HELD_OUT_SEEDS = (7301, 7302, 7303)
BINS = ((7.0, 10.0), (10.0, 20.0), (20.0, np.inf))
NEAR_PX = 15.0  # "loses every source within about 15 px" of a defect (issue 12)

SKY = {
    "shape": (1024, 1024),
    "n_transients": 200,
    "n_variables": 50,
    "snr_range": (7.0, 40.0),
    "psf_gradient": 0.0,
    "science_fwhm": 3.0,
    "template_fwhm": 2.4,
    "avoid_defects": False,
}
DEFECTS = {"n_bad_columns": 4, "n_cosmic_rays": 40,
           "n_bad_columns_template": 4, "n_cosmic_rays_template": 40}  # fmt: skip
NO_DEFECTS = dict.fromkeys(DEFECTS, 0)
DEFECT_BITS = bits(DEFAULT_PLANES, ("BAD", "CR"))


def _defect_distance(pair) -> np.ndarray:
    """Distance (science px) from each truth source to the nearest defect of either image."""
    ny, nx = pair.science.shape
    yx = [np.argwhere(pair.science.mask & DEFECT_BITS)]
    ty, tx = np.nonzero(pair.template.mask & DEFECT_BITS)
    sky = pair.template.wcs.all_pix2world(np.column_stack([tx, ty]), 0)
    xs = pair.science.wcs.all_world2pix(sky, 0)
    yx.append(xs[:, ::-1])
    pts = np.concatenate(yx).astype(np.float64)
    dist, _ = cKDTree(pts[:, ::-1]).query(np.column_stack([pair.truth["x"], pair.truth["y"]]))
    return dist


def _dead_widths(pair, valid) -> list[int]:
    """Columns around each science bad column that are invalid on most of its rows."""
    ny, nx = valid.shape
    widths = []
    for x, y0, y1 in pair.params["bad_columns"]:
        rows = slice(max(y0, 40), min(y1, ny - 40))  # clear of the edge strips
        assert rows.stop - rows.start >= 400, "premise: a long bad column"
        band = valid[rows, max(x - 25, 0) : x + 26]
        widths.append(int(((~band).mean(axis=0) > 0.5).sum()))
    return widths


@pytest.fixture(scope="module", params=["zogy", "al"])
def runs(request, tmp_path_factory):
    """(pair, result, reference, same method on the clean pair) per held-out seed; the
    defect pair through ZOGY or AL."""
    out = []
    for seed in HELD_OUT_SEEDS:
        d = tmp_path_factory.mktemp(f"defects-{request.param}-{seed}")
        pair = simulate_pair(seed=seed, **SKY, **DEFECTS)
        sci, tmpl = write_pair(pair, d / "defects")
        res = subtract_files(str(sci), str(tmpl), settings=Settings(method=request.param),
                             exposure_id=seed)  # fmt: skip

        clean = simulate_pair(seed=seed, **SKY, **NO_DEFECTS)
        # Premise: the same sky and sources, only the defects differ.
        assert np.array_equal(clean.truth, pair.truth)
        sci_c, tmpl_c = write_pair(clean, d / "clean")
        psfs = {}
        for name, sim in (("science", clean.science), ("template", clean.template)):
            path = d / "clean" / f"{name}_psf.fits"
            fits.PrimaryHDU(sim.psf_centre).writeto(path)
            psfs[f"{name}_psf"] = str(path)
        ref = subtract_files(str(sci_c), str(tmpl_c), settings=Settings(), exposure_id=seed,
                             **psfs)  # fmt: skip
        assert ref.psf_science is not None and ref.psf_science.source == "external"
        # The clean pair through the same method and PSF measurement: what the defects alone
        # change (for the false positives; AL alone gives up to 12 per pair on these skies).
        same = subtract_files(str(sci_c), str(tmpl_c), settings=Settings(method=request.param),
                              exposure_id=seed)  # fmt: skip
        out.append((pair, res, ref, same))
    return out


def _completeness(runs, which, near_only=False):
    table = {}
    for lo, hi in BINS:
        k = n = 0
        for pair, res, ref, _ in runs:
            result = res if which == "defects" else ref
            snr = pair.truth["snr_expected"]
            sel = (snr >= lo) & (snr < hi)
            if near_only:
                sel &= _defect_distance(pair) <= NEAR_PX
            hit = match_truth(result, pair.truth)
            k += int((hit[sel] >= 0).sum())
            n += int(sel.sum())
        table[(lo, hi)] = (k, n)
    return table


def test_completeness_within_005_of_true_psf_zogy(runs):
    got = _completeness(runs, "defects")
    ref = _completeness(runs, "reference")
    for b in BINS:
        (k, n), (kr, nr) = got[b], ref[b]
        assert n == nr and n >= 100, f"premise: >= 100 sources in S/N bin {b}, got {n}"
        assert k / n >= kr / nr - 0.05, f"S/N {b}: {k}/{n} with defects vs {kr}/{nr} reference"


def test_sources_near_defects_are_found(runs):
    """The sources the issue lost (within 15 px of a defect) are found like any other."""
    near = _completeness(runs, "defects", near_only=True)
    ref = _completeness(runs, "reference", near_only=True)
    k = sum(v[0] for v in near.values())
    n = sum(v[1] for v in near.values())
    kr = sum(v[0] for v in ref.values())
    assert n >= 100, f"premise: >= 100 sources within {NEAR_PX} px of a defect, got {n}"
    assert k / n >= kr / n - 0.05, f"near defects: {k}/{n} found vs {kr}/{n} reference"


def test_dead_strip_per_bad_column_at_most_3px(runs):
    widths = [w for pair, res, _, _ in runs for w in _dead_widths(pair, res.zogy.valid)]
    assert len(widths) >= 8
    assert max(widths) <= 3, f"dead width per 1-px bad column: {widths}"


def test_sources_on_interpolated_pixels_are_flagged_and_kept(runs):
    intrp = 1 << DEFAULT_PLANES["INTRP"]
    on = flagged = 0
    for pair, res, _, _ in runs:
        hit = match_truth(res, pair.truth)
        for i in np.flatnonzero(hit >= 0):
            src = res.dia_sources[hit[i]]
            x, y = int(round(src["x"])), int(round(src["y"]))
            if res.mask[y, x] & intrp:
                on += 1
                flagged += bool(src["pixelFlags_interpolatedCenter"])
                assert src["pixelFlags_interpolated"], "centre on INTRP but not flagged"
    assert on >= 10, f"premise: found sources centred on interpolated pixels, got {on}"
    assert flagged == on


def test_defects_add_few_false_positives(runs):
    for pair, res, _, same in runs:
        extra = []
        for result in (res, same):
            hit = match_truth(result, pair.truth)
            extra.append(len(result.dia_sources) - len(set(hit[hit >= 0].tolist())))
        assert extra[0] <= extra[1] + 5, f"false positives with / without defects: {extra}"
