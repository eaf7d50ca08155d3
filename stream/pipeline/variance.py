"""The score's noise: the empty-sky rescale of S_corr (tiled, for correlated and resampled
noise) and the inputs' noise-correlation diagnostic."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffstream.jitcore.noise import diffim_scale_factors
from diffstream.jitcore.noisecorr import (
    ScoreScale,
    apply_scale_map,
    empty_sky_scale,
    input_noise_correlation,
    scale_map_at,
)
from diffstream.jitcore.psf import PsfModel
from diffstream.jitcore.zogy import ZogyResult
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.state import Both, Prepared
from diffstream.stream.pipeline.steps import note
from diffstream.stream.provenance.taskmeta import TaskMetadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PsfErrorScale:
    """The factor of :func:`scale_psf_flux_errors`: the score's empty-sky map over the
    difference's pixel factor, at the nearest pixel of each position (float32, as the
    full-frame map / f_diff it replaces)."""

    sky: ScoreScale
    shape: tuple[int, int]
    f_diff: float

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return scale_map_at(self.sky, self.shape, x, y) / np.float32(self.f_diff)


def scale_difference_variance(
    z: ZogyResult, *, settings: Settings, meta: TaskMetadata, both: Both
) -> PsfErrorScale | None:
    """Stated noise to the measured scatter, in place, so that 5 sigma means 5 sigma (see
    jitcore/noise.py for why the raw ZOGY score is a few per cent wide).

    The score is divided by its robust spread on empty sky (sources masked), measured per
    256 px tile and interpolated between tile centres: resampled inputs have correlated noise
    that a white variance plane understates by a factor that varies over the frame, so one
    global factor leaves some regions too wide (jitcore/noisecorr.py).  The flux variance
    takes the same map, so flux / sqrt(flux_variance) stays equal to the score.

    Returns the per-pixel factor by which a PSF fit's error on the rescaled difference
    still understates the noise (None when not rescaling), as a function of positions: see
    :func:`scale_psf_flux_errors`.  The map itself is never made (issue 17): the score and
    flux variance are rescaled in one fused pass (jitcore.noisecorr.apply_scale_map) and
    the factor evaluated where sources are.
    """
    with meta.timer("scaleDiffimVariance"):
        f_all, f_diff = diffim_scale_factors(z.score, z.difference, z.difference_variance, z.valid,
                                             workers=both.threads)  # fmt: skip
        sky = empty_sky_scale(z.score, z.valid, first=f_all, workers=both.threads)
        if settings.scale_variance:

            def scale_difference() -> None:
                z.difference_variance *= np.float32(f_diff**2)

            # The score and flux variance in one pass beside the difference variance's
            # (the kernel and NumPy's in-place arithmetic release the GIL).
            both(lambda: apply_scale_map(sky, z.score, z.flux_variance), scale_difference)
        lo, hi = float(sky.tiles.min()), float(sky.tiles.max())
        # A large or uneven correction is worth a look (correlated noise, a bad variance
        # plane): never silent.  1.2: beyond what warping alone gives (noise.py); 1.25
        # between tiles: beyond the ~2% noise of one tile's factor (+-3 sigma over 256 tiles).
        large = max(hi, 1.0 / lo) > 1.2 or hi / lo > 1.25
        note(meta, "varianceScale", {
            "score": sky.factor, "scoreAllPixels": f_all, "scoreTileMin": lo,
            "scoreTileMax": hi, "tilesMeasured": sky.measured_tiles, "tileSize": sky.tile,
            "emptySkyFraction": sky.free_fraction, "difference": f_diff,
            "applied": settings.scale_variance, "large": large,
        })  # fmt: skip
        if large:
            log.warning(
                "score spread on empty sky %.3f (tiles %.3f-%.3f, all pixels %.3f)%s: the "
                "variance planes misstate the noise (correlated noise?)",
                sky.factor,
                lo,
                hi,
                f_all,
                "" if settings.scale_variance else " NOT applied",
            )
    if not settings.scale_variance:
        return None
    return PsfErrorScale(sky, (int(z.score.shape[0]), int(z.score.shape[1])), f_diff)


def scale_psf_flux_errors(rows: np.ndarray, factor: PsfErrorScale | None) -> None:
    """psfFluxErr (and the centroid errors) times ``factor`` at each source, in place.

    ``difference_variance`` is rescaled to the *pixel* scatter of D (f_diff), but a PSF fit
    sums pixels whose noise is correlated (resampled inputs: neighbour correlation 0.05-0.26
    on the DECam cut-outs), so its error is understated by the ratio of the score's empty-sky
    spread (a PSF matched filter of D, measured per tile) to f_diff.  On the real DECam
    pairs that was 1.0-1.2, and the pulls of fakes had a robust std of 1.3
    (tests/science/test_real_decam.py::test_pulls); on white simulated noise it is ~1.
    """
    if factor is None or not len(rows):
        return
    f = factor.at(rows["x"], rows["y"]).astype(np.float64)
    for name in ("psfFluxErr", "xErr", "yErr"):
        rows[name] *= f


def measure_noise_correlation(
    p: Prepared, psf_s: PsfModel, psf_t: PsfModel, *, meta: TaskMetadata,
    both: Both | None = None,
) -> None:  # fmt: skip
    """Neighbour correlation of each input's noise on empty sky, and the factor by which it
    makes a PSF matched filter's variance exceed what the variance plane states.

    A diagnostic recorded in the task metadata ("noiseCorrelation"): it explains the score
    factor of :func:`scale_difference_variance`, which does the correcting.
    """
    with meta.timer("noiseCorrelation"):
        ny, nx = p.s_img.shape
        good = ~p.bad

        def one(img: np.ndarray, var: np.ndarray, psf: PsfModel) -> dict[str, Any]:
            stamp = psf.at((nx - 1) / 2.0, (ny - 1) / 2.0)
            try:
                rho, factor = input_noise_correlation(img, var, good, stamp)
            except ValueError as exc:  # too few free pixels: say so, do not guess
                return {"error": str(exc)}
            return {"rho10": float(rho[3, 4]), "rho01": float(rho[4, 3]),
                    "rho11": float(rho[4, 4]), "psfVarianceFactor": factor}  # fmt: skip

        # The two inputs on two threads when the run has them (NumPy and the lag sums
        # release the GIL): a diagnostic should not hold the second core idle.
        science, template = (both or Both(1))(
            lambda: one(p.s_img, p.s_var, psf_s), lambda: one(p.t_img, p.t_var, psf_t)
        )
        note(meta, "noiseCorrelation", {"science": science, "template": template})
