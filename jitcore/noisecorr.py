"""Correlated pixel noise: its measurement, and a score rescaled on empty sky, tile by tile.

Resampled inputs (drizzled JWST mosaics, warped or coadded DECam cutouts) have noise that is
correlated between neighbouring pixels, while a variance plane states one number per pixel,
as if the noise were white.  Filtering with a kernel k (ZOGY's k_n, k_r) then has variance

    Var(k (x) N) = V sum_l rho(l) A_k(l),      A_k(l) = sum_p k(p) k(p + l)

instead of the V A_k(0) that ZOGY's V_S assumes (eqs. 28-29).  For a PSF-sized k and positive
rho the ratio :func:`correlated_variance_factor` is > 1, up to ~1 / sum w^2 for a resampling
kernel w (3.7 for a half-pixel bilinear shift): S_corr is that much too wide, 1.9x on such
noise, and a 5 sigma cut becomes ~2.6 sigma.  Why the pipeline's global factor
(jitcore/noise.py diffim_scale_factors) is not enough for it:

* the correlation differs over the frame (drizzle weight and the number of dithers vary,
  warps shift by different fractions of a pixel), so one factor leaves some regions too wide
  (their false detections are the "blotches" of issue 12) and others too narrow (missed
  sources);
* it is measured on all pixels, sources included, so a crowded frame inflates it.

Rejected: folding the measured rho into V_S itself.  It would need rho for each input, on
each tile, under ZOGY's own kernels (a second spectral pass per tile), and it still leaves
whatever else widens the score (PSF mismatch on empty sky, background residuals) to the
empirical step, which has to run anyway.  Chosen: measure rho and its predicted factor per
input (:func:`noise_autocorrelation`, :func:`correlated_variance_factor`) as a diagnostic
that explains the factor, and rescale S_corr by its own robust spread on empty sky (sources
masked), per tile, interpolated smoothly between tile centres (:func:`empty_sky_scale`,
:func:`scale_map`).  tests/science/test_corrnoise_science.py shows the global factor leaving
2x the Euler-characteristic false detections on half-resampled noise and this one within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from diffstream.jitcore.noise import robust_sigma, source_free_mask

__all__ = [
    "ScoreScale",
    "correlated_variance_factor",
    "empty_sky_scale",
    "input_noise_correlation",
    "noise_autocorrelation",
    "scale_map",
]


def noise_autocorrelation(
    image: np.ndarray, free: np.ndarray, *, radius: int = 3, workers: int | None = None
) -> np.ndarray:
    """Normalised autocorrelation rho of ``image``'s noise over the ``free`` pixels.

    Returns a (2 radius + 1)^2 array with rho[radius + dy, radius + dx] the correlation of
    pixels (x, y) and (x + dx, y + dy) among pairs where both are free (mean over free
    pixels removed); rho at the centre is 1.  Pass a noise-normalised image
    (data / sqrt(variance)) and a source-free mask (jitcore.noise.source_free_mask) so that
    stars and a varying variance do not pose as correlation.  FFTs (zero-padded by
    ``radius``, so nothing wraps) make every lag cost one transform.
    """
    img = np.asarray(image)
    ok = np.asarray(free)
    if img.ndim != 2 or img.shape != ok.shape:
        raise ValueError(f"need 2-d image and free of one shape, got {img.shape}, {ok.shape}")
    if ok.dtype != np.bool_:
        raise TypeError(f"free must be a bool array, got dtype {ok.dtype}")
    if radius < 1 or 2 * radius + 1 > min(img.shape):
        raise ValueError(f"radius must be >= 1 and fit the image {img.shape}, got {radius}")
    ok = ok & np.isfinite(img)
    n = int(ok.sum())
    if n < 100:
        raise ValueError(f"noise_autocorrelation needs >= 100 free pixels, got {n}")
    x = np.where(ok, img.astype(np.float64) - float(img[ok].mean()), 0.0)
    m = ok.astype(np.float64)
    shape = (img.shape[0] + radius, img.shape[1] + radius)
    fast = tuple(fft.next_fast_len(s, real=True) for s in shape)

    def auto(a: np.ndarray) -> np.ndarray:
        spec = fft.rfft2(a, s=fast, workers=workers)
        c = fft.irfft2(spec * np.conj(spec), s=fast, workers=workers)
        # Lags -radius..radius on both axes (negative lags wrap to the end of the frame).
        idx = np.arange(-radius, radius + 1)
        return c[np.ix_(idx % fast[0], idx % fast[1])]

    pairs = np.rint(auto(m))
    sums = auto(x)
    if (pairs < 1).any():
        raise ValueError("too few free pixel pairs at some lag to measure the correlation")
    cov = sums / pairs
    return cov / cov[radius, radius]


def correlated_variance_factor(rho: np.ndarray, kernel: np.ndarray) -> float:
    """Var(kernel (x) noise) over what white noise of the same pixel variance gives.

    sum_l rho(l) A_k(l) / A_k(0) with A_k the kernel's autocorrelation, over the lags of
    ``rho`` (from :func:`noise_autocorrelation`; lags beyond its radius count as 0).  With
    the PSF for the kernel this is the factor by which a white-noise variance plane
    understates the variance of a matched filter's output.
    """
    r = np.asarray(rho, dtype=np.float64)
    k = np.asarray(kernel, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] % 2 == 0:
        raise ValueError(f"rho must be square with odd size, got shape {r.shape}")
    if k.ndim != 2 or not np.all(np.isfinite(k)) or not (k * k).sum() > 0:
        raise ValueError("kernel must be a finite 2-d array with a non-zero sum of squares")
    rad = r.shape[0] // 2
    ak = ndimage.correlate(np.pad(k, rad), k, mode="constant")  # A_k at every lag
    cy, cx = ak.shape[0] // 2, ak.shape[1] // 2
    ak = ak[cy - rad : cy + rad + 1, cx - rad : cx + rad + 1]
    return float((r * ak).sum() / ak[rad, rad])


def input_noise_correlation(
    image: np.ndarray, variance: np.ndarray, good: np.ndarray, psf: np.ndarray, *,
    radius: int = 3, crop: int = 1024,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """(rho, PSF variance factor) of one input's noise on empty sky.

    rho from :func:`noise_autocorrelation` of image / sqrt(variance) over source-free good
    pixels (jitcore.noise.source_free_mask) in the central ``crop`` x ``crop`` pixels (a
    4k frame's correlation needs no more); the factor from
    :func:`correlated_variance_factor` with ``psf`` as the kernel.  Raises ValueError when
    too few pixels are free.
    """
    ny, nx = image.shape
    y0, x0 = max(0, (ny - crop) // 2), max(0, (nx - crop) // 2)
    win = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    img, var = image[win], variance[win]
    free = source_free_mask(img, var, good[win])
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = img / np.sqrt(var)
    rho = noise_autocorrelation(snr, free, radius=radius)
    return rho, correlated_variance_factor(rho, psf)


@dataclass(frozen=True)
class ScoreScale:
    """The spread of S_corr on empty sky: one global factor and one per tile.

    ``tiles[i, j]`` is the factor of the tile whose core starts at (i * tile, j * tile);
    tiles with too few source-free pixels hold the global factor.  ``free_fraction``: the
    share of valid pixels that were source-free.
    """

    factor: float
    tiles: np.ndarray
    tile: int
    free_fraction: float
    measured_tiles: int


def empty_sky_scale(
    score: np.ndarray, valid: np.ndarray, *, threshold: float = 5.0, grow: int = 6,
    tile: int = 512, min_free: float = 0.25, limit: float = 10.0,
) -> ScoreScale:  # fmt: skip
    """Robust spread of ``score`` over empty sky, globally and per ``tile`` x ``tile`` tile.

    Sources are pixels with |score| >= ``threshold`` x the spread of all valid pixels,
    dilated by ``grow`` pixels (their wings); a tile needs ``min_free`` of its pixels
    source-free to get its own factor.  Factors are clipped to [1/limit, limit].

    Why 5 and not 3: a lower cut also removes the noise's own excursions with their
    surroundings, and that biases the spread low (2% at 3 sigma on resampled noise, enough to
    double the 5 sigma false rate); at 5 the excursions are ~0.3 per Mpix.  Fainter sources
    left in are what the interquartile-range sigma is robust to.
    """
    s = np.asarray(score)
    v = np.asarray(valid)
    if s.ndim != 2 or s.shape != v.shape:
        raise ValueError(f"need 2-d score and valid of one shape, got {s.shape}, {v.shape}")
    if not threshold > 0 or grow < 0 or tile < 16 or not 0 < min_free <= 1 or not limit > 1:
        msg = (f"need threshold > 0, grow >= 0, tile >= 16, 0 < min_free <= 1, limit > 1; got "
               f"{threshold}, {grow}, {tile}, {min_free}, {limit}")  # fmt: skip
        raise ValueError(msg)
    ok = v & np.isfinite(s)
    nty, ntx = -(-s.shape[0] // tile), -(-s.shape[1] // tile)
    n_ok = int(ok.sum())
    if n_ok < 100:
        return ScoreScale(1.0, np.ones((nty, ntx)), tile, 0.0, 0)
    first = robust_sigma(s[ok][:: max(1, n_ok // 2_000_000)])
    hot = ok & (np.abs(s) >= threshold * first)
    if grow > 0 and hot.any():
        hot = ndimage.binary_dilation(hot, iterations=grow)  # square-ish, cheap
    free = ok & ~hot
    n_free = int(free.sum())
    if n_free < 100:
        return ScoreScale(first, np.full((nty, ntx), first), tile, n_free / n_ok, 0)

    def clip(f: float) -> float:
        return float(min(max(f, 1.0 / limit), limit))

    factor = clip(robust_sigma(s[free][:: max(1, n_free // 2_000_000)]))
    tiles = np.full((nty, ntx), factor)
    measured = 0
    for i in range(nty):
        for j in range(ntx):
            f = free[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile]
            if f.sum() < max(100, min_free * f.size):
                continue
            vals = s[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile][f]
            tiles[i, j] = clip(robust_sigma(vals))
            measured += 1
    return ScoreScale(factor, tiles, tile, n_free / n_ok, measured)


def _interp_matrix(n: int, ntiles: int, tile: int) -> np.ndarray:
    """(n, ntiles) weights that interpolate linearly between tile centres, flat beyond."""
    centres = np.minimum(np.arange(ntiles) * tile + (tile - 1) / 2.0, n - 1)
    pos = np.arange(n, dtype=np.float64)
    w = np.zeros((n, ntiles))
    if ntiles == 1:
        w[:, 0] = 1.0
        return w
    k = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, ntiles - 2)
    t = np.clip((pos - centres[k]) / (centres[k + 1] - centres[k]), 0.0, 1.0)
    w[np.arange(n), k] = 1.0 - t
    w[np.arange(n), k + 1] = t
    return w


def scale_map(scale: ScoreScale, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel float32 factor: ``scale.tiles`` bilinearly interpolated between tile centres.

    Smooth, so the rescaled score has no steps at tile edges.  Built as Wy T Wx^T (two thin
    matrix products) rather than ndimage.zoom: ~10x cheaper on a 4k x 4k frame.
    """
    nty, ntx = scale.tiles.shape
    if shape[0] > nty * scale.tile or shape[1] > ntx * scale.tile:
        raise ValueError(f"shape {shape} exceeds the tiles {scale.tiles.shape} x {scale.tile}")
    wy = _interp_matrix(shape[0], nty, scale.tile)
    wx = _interp_matrix(shape[1], ntx, scale.tile)
    return np.asarray((wy @ scale.tiles) @ wx.T, dtype=np.float32)
