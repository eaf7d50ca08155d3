"""A keyword-Gaussian PSF is never silent (issue 12): a WARNING and a metadata flag.

Real files go through the loader and the pipeline; the only edit is the science PSF, set to
what the loader produces when it finds too few stars (a keyword Gaussian with its reason).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits

from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.stream.io.fitsio import load_exposure
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import subtract_exposures
from diffstream.stream.sim.simulate import simulate_pair, write_pair

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    return write_pair(simulate_pair(seed=3, shape=(256, 256), n_stars=60), out)


def _with_keyword_psf(path):
    exp = load_exposure(str(path))
    sigma = 3.0 / 2.3548
    psf = PsfModel.constant(gaussian_psf(sigma, 13), exp.shape, source="keyword")
    psf.info = {"fwhm": 3.0, "keyword": "PSF_FWHM", "measure_error": "found 2 usable stars"}
    exp.psf = psf
    return exp


def test_keyword_psf_is_flagged_and_warned(pair, caplog):
    science = _with_keyword_psf(pair[0])
    template = load_exposure(str(pair[1]), psf_degree=0)
    with caplog.at_level(logging.WARNING, logger="diffstream"):
        result = subtract_exposures(science, template, settings=Settings(psf_from_stars=False))
    psf = result.metadata.get("psf")
    assert psf["science"]["source"] == "keyword"
    assert psf["science"]["fallback"] is True
    assert psf["science"]["fallbackReason"] == "found 2 usable stars"
    assert psf["template"]["fallback"] is False
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "PSF" in r.message]
    assert len(warned) == 1 and "science" in warned[0].message


def test_pipeline_measures_before_keeping_a_keyword_psf(pair, caplog):
    science = _with_keyword_psf(pair[0])
    template = load_exposure(str(pair[1]), psf_degree=0)
    with caplog.at_level(logging.WARNING, logger="diffstream"):
        result = subtract_exposures(science, template, settings=Settings())
    psf = result.metadata.get("psf")
    assert psf["science"]["source"] == "measured" and psf["science"]["nstars"] >= 3
    assert not psf["science"]["fallback"] and not psf["template"]["fallback"]
    assert not [r for r in caplog.records if "keyword Gaussian" in r.message]


def test_loader_warns_when_it_falls_back_to_the_keyword(tmp_path, caplog):
    img = np.random.default_rng(1).normal(0.0, 10.0, (64, 64)).astype(np.float32)
    hdr = fits.Header({"PSF_FWHM": 3.0, "MAGZP": 31.4, "MJD-OBS": 60000.0})
    for k, v in {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRVAL1": 10.0,
        "CRVAL2": 5.0,
        "CRPIX1": 32.0,
        "CRPIX2": 32.0,
        "CDELT1": -5e-5,
        "CDELT2": 5e-5,
    }.items():
        hdr[k] = v  # fmt: skip
    path = tmp_path / "empty.fits"
    fits.PrimaryHDU(img, header=hdr).writeto(path)
    with caplog.at_level(logging.WARNING, logger="diffstream"):
        exp = load_exposure(str(path))
    assert exp.psf.source == "keyword"
    assert "usable PSF stars" in exp.psf.info["measure_error"]
    assert any("PSF_FWHM keyword" in r.message for r in caplog.records)
