"""The pipeline's scale_difference_variance step: tiled empty-sky rescale, metadata, WARNING."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage

from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.jitcore.zogy import zogy
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.state import Both as _Both
from diffstream.stream.pipeline.variance import scale_difference_variance
from diffstream.stream.provenance.taskmeta import TaskMetadata

pytestmark = pytest.mark.unit

N = 512


def noise_pair(seed, shift):
    """Noise-only pair, bilinear-shifted by ``shift`` px; variances state the pixel variance."""
    rng = np.random.default_rng(seed)
    out = []
    for sigma in (10.0, 5.0):
        img = ndimage.shift(rng.normal(0, sigma, (N, N)), (shift, shift), order=1, mode="wrap")
        out += [img.astype(np.float32), np.full((N, N), img.var(), np.float32)]
    psf = PsfModel.constant(gaussian_psf(2.0), (N, N))
    return zogy(out[0], out[1], out[2], out[3], np.zeros((N, N), bool), psf, psf)


@pytest.mark.parametrize("apply", [True, False])
def test_correlated_noise_is_rescaled_recorded_and_logged(apply, caplog):
    z = noise_pair(1, 0.5)
    raw = z.score.copy()
    meta = TaskMetadata()
    with caplog.at_level(logging.WARNING, logger="diffstream.stream.pipeline.subtract"):
        scale_difference_variance(
            z, settings=Settings(scale_variance=apply), meta=meta, both=_Both(1)
        )
    scale = meta.get("varianceScale", step=meta.name)
    assert scale["applied"] is apply
    assert scale["score"] > 1.5  # the premise: a half-pixel shift, pixel-variance planes
    assert scale["tilesMeasured"] == 4 and scale["large"]
    warned = [r for r in caplog.records if "misstate the noise" in r.getMessage()]
    assert len(warned) == 1
    assert ("NOT applied" in warned[0].getMessage()) is not apply
    if apply:
        assert z.score[z.valid].std() == pytest.approx(1.0, abs=0.03)
        # flux / sqrt(flux_variance) stays the score
        snr = z.flux[z.valid] / np.sqrt(z.flux_variance[z.valid])
        np.testing.assert_allclose(snr, z.score[z.valid], rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_array_equal(z.score, raw)


def test_white_noise_is_left_alone_quietly(caplog):
    z = noise_pair(2, 0.0)
    meta = TaskMetadata()
    with caplog.at_level(logging.WARNING, logger="diffstream.stream.pipeline.subtract"):
        scale_difference_variance(z, settings=Settings(), meta=meta, both=_Both(1))
    scale = meta.get("varianceScale", step=meta.name)
    assert scale["score"] == pytest.approx(1.0, abs=0.03) and not scale["large"]
    assert not [r for r in caplog.records if "misstate the noise" in r.getMessage()]
