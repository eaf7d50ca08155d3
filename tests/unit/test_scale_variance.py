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


def test_psf_flux_errors_follow_the_correlated_noise():
    # Noise only, resampled (bilinear half-pixel shift: neighbour correlation ~0.5): PSF
    # fits of D at fixed empty positions have true flux 0, so flux / err must be N(0, 1).
    # The per-pixel variance, even rescaled to D's pixel scatter, understates a PSF fit's
    # noise there; the factor returned by the step must put it right.
    from diffstream.jitcore.measure import MEASURE_DTYPE, forced_psf_flux
    from diffstream.jitcore.robust import mad_sigma
    from diffstream.stream.pipeline.variance import scale_psf_flux_errors

    pulls_raw, pulls = [], []
    for seed in (3, 4):
        z = noise_pair(seed, 0.5)
        factor = scale_difference_variance(z, settings=Settings(), meta=TaskMetadata(),
                                           both=_Both(1))  # fmt: skip
        assert factor is not None
        g = np.arange(24, N - 24, 16, dtype=np.float64)  # 16 px apart: ~independent fits
        xs, ys = (a.ravel() for a in np.meshgrid(g, g))
        psf_d = z.tile_at(N / 2, N / 2).psf_d  # one tile: one PSF
        flux, err, flag = forced_psf_flux(z.difference, z.difference_variance,
                                          lambda x, y, p=psf_d: p, xs, ys)  # fmt: skip
        assert not flag.any()
        rows = np.zeros(xs.size, MEASURE_DTYPE)
        rows["x"], rows["y"], rows["psfFluxErr"] = xs, ys, err
        scale_psf_flux_errors(rows, factor)
        pulls_raw.append(flux / err)
        pulls.append(flux / rows["psfFluxErr"])
    raw, fixed = mad_sigma(np.concatenate(pulls_raw)), mad_sigma(np.concatenate(pulls))
    n = np.concatenate(pulls).size
    print(f"PSF-fit pulls on correlated noise: robust std {raw:.3f} raw, {fixed:.3f} scaled")
    assert raw > 1.1, raw  # the premise: without the factor the errors are too small
    assert abs(fixed - 1.0) < 5 * 0.76 / np.sqrt(n) + 0.03, (fixed, n)
