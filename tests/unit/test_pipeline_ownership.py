"""The pipeline frees what it no longer reads (issue 17's peak RSS), and never writes into
exposures its caller keeps."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import diffstream.stream.pipeline.subtract as sub
from diffstream.stream.io.fitsio import load_exposure
from diffstream.stream.ops.settings import Settings
from diffstream.stream.sim.simulate import simulate_pair, write_pair


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    pair = simulate_pair(seed=33, shape=(256, 256), n_stars=60, n_transients=4, n_variables=2)
    return write_pair(pair, tmp_path_factory.mktemp("own"))


def test_subtract_files_frees_the_raw_planes_before_the_psf_step(pair_files, monkeypatch):
    # Keyed by file: the two load on two threads, in either order.
    loaded: dict[str, list[weakref.ref]] = {}
    real_load = sub.load_exposure

    def load(path, *args, **kwargs):
        exposure = real_load(path, *args, **kwargs)
        loaded[str(path)] = [weakref.ref(a) for a in (exposure.image, exposure.variance)]
        return exposure

    alive_at_psf: dict[str, list[bool]] = {}
    real_psfs = sub.measure_psfs

    def psfs(*args, **kwargs):
        gc.collect()
        alive_at_psf.update({k: [r() is not None for r in refs] for k, refs in loaded.items()})
        return real_psfs(*args, **kwargs)

    monkeypatch.setattr(sub, "load_exposure", load)
    monkeypatch.setattr(sub, "measure_psfs", psfs)
    result = sub.subtract_files(*map(str, pair_files), settings=Settings(), exposure_id=3)
    assert set(loaded) == set(map(str, pair_files))  # science and template: the premise
    # The template's raw planes are gone (warped and released).  The science's stay: they are
    # repaired in place (subtract_files owns them) and the result holds that exposure.
    assert alive_at_psf[str(pair_files[1])] == [False, False]
    assert alive_at_psf[str(pair_files[0])] == [True, True]
    assert len(result.dia_sources) > 0


def test_subtract_exposures_leaves_its_inputs_alone(pair_files):
    science = load_exposure(str(pair_files[0]), psf_degree=0)
    template = load_exposure(str(pair_files[1]), psf_degree=0)
    before = [a.copy() for e in (science, template) for a in (e.image, e.variance, e.mask)]
    sub.subtract_exposures(science, template, settings=Settings())
    after = [a for e in (science, template) for a in (e.image, e.variance, e.mask)]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
