"""Empirical noise checks: robust scatter and the rescaling of stated variances.

The seed task scales variance planes so that the stated noise agrees with the measured pixel
scatter (doScaleTemplateVariance / doScaleDiffimVariance).  Here the same idea is applied to
the products that decide detection: the ZOGY score S_corr must be N(0, 1) on empty sky for a
5 sigma threshold to mean 5 sigma.  Why it is needed at all: warping with Lanczos lowers the
*pixel* variance of the template (sum w^2 V < V) while the matched filter sees the *low
frequency* power, which warping keeps, so the template's stated variance is a few per cent
short and the score spread a few per cent wide -- enough to double the 5 sigma false rate.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from diffstream.jitcore._kernels.emptysky import dilate_square
from diffstream.jitcore.robust import iqr_sigma
from diffstream.jitcore.tiles import thread_count

__all__ = ["noise_scale_factor", "source_free_mask", "variance_scale_factor"]

_SAMPLE = 2_000_000  # pixels: the IQR of 2M N(0, 1) values is good to ~0.1%


def noise_scale_factor(
    normalised: np.ndarray, valid: np.ndarray, *, limit: float = 10.0, sample: int = _SAMPLE
) -> float:
    """Factor by which a noise-normalised image's spread exceeds 1, from its valid pixels.

    ``normalised`` is data / sqrt(stated variance).  A strided subsample of at most ``sample``
    pixels keeps this cheap on 4k x 4k images; the factor is clipped to [1/limit, limit] as
    LSST's ScaleVarianceTask limits its factor to 10.
    """
    if normalised.shape != valid.shape:
        raise ValueError(f"shapes differ: {normalised.shape} vs valid {valid.shape}")
    if not limit > 1:
        raise ValueError(f"limit must be > 1, got {limit}")
    vals = normalised[valid]
    step = max(1, vals.size // sample)
    return _clipped(iqr_sigma(vals[::step]), limit)


def _clipped(factor: float, limit: float) -> float:
    return float(min(max(factor, 1.0 / limit), limit))


def source_free_mask(
    image: np.ndarray, variance: np.ndarray, good: np.ndarray, *, threshold: float = 3.0,
    grow: int = 3,
) -> np.ndarray:  # fmt: skip
    """Good pixels away from sources: |S/N| < threshold x its robust sigma, cut grown by ``grow``.

    S/N = image / sqrt(variance).  A pixel threshold catches the cores of stars; growing
    them by a few pixels removes the wings too, which would otherwise widen the scatter a
    variance scale is measured from.  Pixels whose variance is not positive and finite are
    not source-free.
    """
    if image.shape != variance.shape or image.shape != good.shape:
        raise ValueError(
            f"shapes differ: image {image.shape}, variance {variance.shape}, good {good.shape}"
        )
    if not threshold > 0 or grow < 0:
        raise ValueError(f"need threshold > 0 and grow >= 0, got {threshold}, {grow}")
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = good & np.isfinite(image) & np.isfinite(variance) & (variance > 0)
        snr = np.where(ok, image / np.sqrt(np.where(ok, variance, 1.0)), 0.0)
    # In units of the S/N's own robust spread, so that a badly stated variance (the very
    # thing being measured) does not move the cut into the noise.
    scale = iqr_sigma(snr[ok][:: max(1, int(ok.sum()) // 1_000_000)])
    hot = np.abs(snr) >= threshold * scale
    if grow > 0 and hot.any():
        # ndimage.maximum_filter(hot, size=2 grow + 1) > 0, as a fused kernel (~8x faster).
        grown = np.empty(hot.shape, dtype=bool)
        dilate_square(hot, int(grow), np.empty(hot.shape, np.int32), grown)
        hot = grown
    return ok & ~hot


def variance_scale_factor(
    image: np.ndarray, variance: np.ndarray, good: np.ndarray, *, limit: float = 10.0,
    threshold: float = 3.0, grow: int = 3,
) -> float:  # fmt: skip
    """Factor to multiply ``variance`` by so that it states the measured pixel scatter.

    The seed's doScaleTemplateVariance (LSST ScaleVarianceTask, pixel method): the square of
    the interquartile-range sigma of image / sqrt(variance) over source-free pixels
    (:func:`source_free_mask`), clipped to [1/limit, limit] (LSST limits it to 10).  Caveat:
    on a warped image the pixel scatter is lowered by the interpolation (module docstring)
    while the noise a matched filter sees is not, so measure it before warping.
    """
    if not limit > 1:
        raise ValueError(f"limit must be > 1, got {limit}")
    free = source_free_mask(image, variance, good, threshold=threshold, grow=grow)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = image / np.sqrt(variance)
    factor = noise_scale_factor(normalised, free, limit=float("inf")) ** 2
    return float(min(max(factor, 1.0 / limit), limit))


def diffim_scale_factors(
    score: np.ndarray, difference: np.ndarray, difference_variance: np.ndarray, valid: np.ndarray,
    *, workers: int | None = 2,
) -> tuple[float, float]:  # fmt: skip
    """(score factor, difference-noise factor): the measured spread of the score and of
    difference / sqrt(variance) over valid pixels (the seed's doScaleDiffimVariance).

    Too few valid pixels to measure gives (1, 1): keep the stated noise.  ``workers``
    (scipy.fft convention): the two factors on two threads when it allows two; the
    pipeline passes its own thread count, so a one-CPU stream worker starts no thread.
    """
    if not score.shape == difference.shape == difference_variance.shape == valid.shape:
        raise ValueError(
            f"shapes differ: score {score.shape}, difference {difference.shape}, "
            f"variance {difference_variance.shape}, valid {valid.shape}"
        )
    # A strided subsample of the pixels, masked by ``valid`` afterwards: on a 4k x 4k image
    # the full-frame quotient, boolean indexing and index arrays cost 10x the quantiles,
    # and every 8th pixel measures the spread to ~0.1% just as well.
    step = max(1, valid.size // _SAMPLE)
    keep = np.ascontiguousarray(valid).ravel()[::step]

    def sample(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a).ravel()[::step][keep]

    # noise_scale_factor's factor (clipped IQR sigma, limit 10) of the sampled values
    # directly: the sample is at most ~2M values, so its own subsample would be all of
    # them, and passing it through noise_scale_factor's mask copied 2M values again.
    def score_factor() -> float:
        return _clipped(iqr_sigma(sample(score)), 10.0)

    def diff_factor() -> float:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = sample(difference) / np.sqrt(sample(difference_variance))
        return _clipped(iqr_sigma(ratio), 10.0)

    try:
        if thread_count(workers, 2) == 1:
            f_score, f_diff = score_factor(), diff_factor()
        else:
            # The two factors on two threads (the sampling and the quartile kernel release
            # the GIL): each is a few strided copies and a 2M-value selection.
            with ThreadPoolExecutor(1, "diffim-scale") as pool:
                f_diff_future = pool.submit(diff_factor)
                f_score = score_factor()
                f_diff = f_diff_future.result()
    except ValueError:
        return 1.0, 1.0
    return f_score, f_diff
