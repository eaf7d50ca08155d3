"""Debug plots: produced, not blank, named per exposure; cutouts decoded from alert bytes."""

import dataclasses

import numpy as np
import pytest
from matplotlib.image import imread

from diffstream.jitcore.psf import gaussian_psf
from diffstream.stream.alerts.cutouts import make_cutout
from diffstream.stream.io.plots import (
    PLOT_KINDS,
    _display,
    decode_cutout,
    plot_prefix,
    write_debug_plots,
)
from diffstream.stream.provenance.store import full_record

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from diffstream.stream.ops.settings import Settings
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    root = tmp_path_factory.mktemp("pair")
    sci, tmpl = write_pair(simulate_pair(seed=1, shape=(320, 320)), root, truth_csv=False)
    return subtract_files(
        str(sci), str(tmpl), settings=Settings(), visit=1234, detector=42, exposure_id=77
    )


def _rgb(path):
    img = imread(path)  # float RGBA in [0, 1]
    return img[..., :3]


def _n_colours(rgb) -> int:
    q = np.round(rgb * 255).astype(np.uint32)
    return len(np.unique(q[..., 0] << 16 | q[..., 1] << 8 | q[..., 2]))


def _has_colour(rgb, hex_colour: str, tol: float = 0.08) -> int:
    target = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=-1) < tol).sum())


def test_every_plot_is_written_and_not_blank(result, tmp_path):
    assert len(result.dia_sources) > 0  # the simulated pair has transients
    paths = write_debug_plots(result, tmp_path)
    assert [p.name for p in paths] == [f"visit1234-det42-{k}.png" for k in PLOT_KINDS]
    for path in paths:
        rgb = _rgb(path)
        assert rgb.shape[0] > 200 and rgb.shape[1] > 300, path.name
        assert rgb.std() > 0.05, path.name
        assert _n_colours(rgb) > 50, path.name


def test_panels_mark_positive_and_negative_detections(result, tmp_path):
    from diffstream.stream.io.plots import NEG_COLOUR, POS_COLOUR

    (path,) = write_debug_plots(result, tmp_path, kinds=["panels"])
    rgb = _rgb(path)
    n_neg = sum(1 for s in result.dia_sources if s["isNegative"])
    assert _has_colour(rgb, POS_COLOUR) > 100
    assert (_has_colour(rgb, NEG_COLOUR) > 50) == (n_neg > 0)


def test_kernels_plot_only_for_results_with_al_info(result, tmp_path):
    class _AL:
        def kernel_at(self, x, y):
            return gaussian_psf(1.0 + x / 1000.0, 15) - 0.2 * gaussian_psf(2.0, 15)

    al = dataclasses.replace(result)
    al.al_info = _AL()
    paths = write_debug_plots(al, tmp_path / "al", kinds=["kernels"])
    assert [p.name for p in paths] == ["visit1234-det42-kernels.png"]
    assert _rgb(paths[0]).std() > 0.05
    assert write_debug_plots(result, tmp_path / "zogy", kinds=["kernels"]) == []


def test_no_diasources_still_gives_every_file(result, tmp_path):
    empty = dataclasses.replace(result, dia_sources=[], alerts=[])
    paths = write_debug_plots(empty, tmp_path, prefix="quiet")
    assert [p.name for p in paths] == [f"quiet-{k}.png" for k in PLOT_KINDS]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_psfs_use_the_results_models_when_present(result, tmp_path):
    from diffstream.jitcore.psf import PsfModel
    from diffstream.stream.io.plots import _psf_models

    shape = result.science.shape
    wide = dataclasses.replace(result)
    wide.psf_science = PsfModel.constant(gaussian_psf(4.0, 41), shape, source="test")
    wide.psf_template = PsfModel.constant(gaussian_psf(1.0, 11), shape, source="test")
    sci, sci_note, tmpl, tmpl_note = _psf_models(wide)
    assert (sci, tmpl, sci_note, tmpl_note) == (wide.psf_science, wide.psf_template, "", "")
    (path,) = write_debug_plots(wide, tmp_path, kinds=["psfs"])
    assert _rgb(path).std() > 0.05
    # Without them, the plot re-measures both from the result's images and says so.
    bare = dataclasses.replace(result)
    bare.psf_science = bare.psf_template = None
    sci, sci_note, tmpl, tmpl_note = _psf_models(bare)
    assert sci.source == tmpl.source == "measured"
    assert "re-measured" in sci_note and "re-measured" in tmpl_note


def test_argument_checks(result, tmp_path):
    with pytest.raises(ValueError, match=r"kinds must be among .*got \['movie'\]"):
        write_debug_plots(result, tmp_path, kinds=["panels", "movie"])
    with pytest.raises(ValueError, match="max_cutouts must be >= 1, got 0"):
        write_debug_plots(result, tmp_path, max_cutouts=0)


def test_full_record_of_a_real_result_is_strict_json(result):
    import json

    rec = full_record(result)
    back = json.loads(json.dumps(rec, allow_nan=False))
    assert (back["exposureId"], back["visit"], back["detector"]) == (77, 1234, 42)
    assert back["counts"]["nDiaSources"] == len(result.dia_sources)
    assert "imageDifference.zogy" in back["timings"]
    assert back["alertSummary"]["configHash"] == back["configHash"]


def test_decode_cutout_round_trips_make_cutout():
    from astropy.wcs import WCS

    rng = np.random.default_rng(3)
    image = rng.normal(size=(40, 50)).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cdelt = [-5e-5, 5e-5]
    data = make_cutout(image, np.ones_like(image), np.zeros(image.shape, np.int32), wcs,
                       20.0, 15.0, size=11)  # fmt: skip
    stamp = decode_cutout(data)
    np.testing.assert_array_equal(stamp, image[10:21, 15:26])
    assert decode_cutout(None) is None
    assert decode_cutout(b"not a fits file") is None


def test_plot_prefix_prefers_visit_then_exposure():
    ns = dataclasses.make_dataclass("S", ["visit", "detector", "exposure_id"])
    assert plot_prefix(ns(5, 3, 9)) == "visit5-det3"
    assert plot_prefix(ns(None, None, 9)) == "exp9"
    assert plot_prefix(ns(None, None, None)) == "exposure"


def test_display_block_averages_big_images_in_pixel_coordinates():
    a = np.arange(5000 * 3, dtype=np.float32).reshape(3, 5000)
    small, extent = _display(a)
    assert small.shape == (1, 1667)  # factor 3, padded to a multiple
    assert extent == (-0.5, 5000.5, -0.5, 2.5)
    assert small[0, 0] == pytest.approx(a[:, :3].mean())
    same, ext = _display(a[:, :100])
    assert same is not None and same.shape == (3, 100) and ext == (-0.5, 99.5, -0.5, 2.5)
