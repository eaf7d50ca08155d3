"""Correlated pixel noise: its measurement, and a score rescaled on empty sky, tile by tile.

Resampled inputs (drizzled JWST mosaics, warped or coadded DECam cutouts) have noise that is
correlated between neighbouring pixels, while a variance plane states one number per pixel,
as if the noise were white.  Filtering with a kernel k (ZOGY's k_n, k_r) then has variance

    Var(k (x) N) = V sum_l rho(l) A_k(l),      A_k(l) = sum_p k(p) k(p + l)

instead of the V A_k(0) that ZOGY's V_S assumes (eqs. 28-29).  For a PSF-sized k and positive
rho the ratio :func:`correlated_variance_factor` is > 1, up to ~1 / sum w^2 for a resampling
kernel w (4 for a half-pixel bilinear shift, 3.7 with a 2 px PSF): when the variance plane
states the pixel variance, S_corr is 1.9x too wide on such noise and a 5 sigma cut is ~2.6
sigma (DECam cutouts: 1.05-1.14x).  Why the pipeline's global factor (jitcore/noise.py
diffim_scale_factors) is not enough for it:

* the correlation differs over the frame (drizzle weight and the number of dithers vary,
  warps shift by different fractions of a pixel), so one factor leaves some regions too wide
  (their false detections are the "blotches" of issue 12) and others too narrow (missed
  sources);
* it is measured on all pixels, sources included, so sources inflate it (the DECam pairs'
  empty-sky std was 0.97 after it: over-corrected, real sources lose S/N).

Rejected: folding the measured rho into V_S itself.  It would need rho for each input, on
each tile, under ZOGY's own kernels (a second spectral pass per tile), and it still leaves
whatever else widens the score (PSF mismatch on empty sky, background residuals) to the
empirical step, which has to run anyway.  Chosen: measure rho and its predicted factor per
input (:func:`noise_autocorrelation`, :func:`correlated_variance_factor`) as a diagnostic
that explains the factor, and rescale S_corr by its own robust spread on empty sky (sources
masked), per tile, interpolated smoothly between tile centres (:func:`empty_sky_scale`,
:func:`scale_map`).  tests/science/test_corrnoise_science.py: on 25 Mpix of noise going from
white to resampled across the frame, the global factor leaves 724 noise detections at 5 sigma
against an Euler-characteristic expectation of 7.3, the tiled one 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from diffstream.jitcore._kernels.emptysky import empty_sky_free
from diffstream.jitcore._kernels.lags import lag_sums
from diffstream.jitcore._kernels.planes import rescale_by_map
from diffstream.jitcore._kernels.quantiles import masked_tile_quartiles
from diffstream.jitcore.constants import IQR_PER_SIGMA
from diffstream.jitcore.noise import source_free_mask
from diffstream.jitcore.robust import iqr_sigma
from diffstream.jitcore.tiles import run_tiles, split_axis, thread_count

__all__ = [
    "ScoreScale",
    "correlated_variance_factor",
    "empty_sky_scale",
    "input_noise_correlation",
    "noise_autocorrelation",
    "apply_scale_map",
    "scale_map",
    "scale_map_at",
]


def noise_autocorrelation(
    image: np.ndarray, free: np.ndarray, *, radius: int = 3, workers: int | None = None
) -> np.ndarray:
    """Normalised autocorrelation rho of ``image``'s noise over the ``free`` pixels.

    Returns a (2 radius + 1)^2 array with rho[radius + dy, radius + dx] the correlation of
    pixels (x, y) and (x + dx, y + dy) among pairs where both are free (mean over free
    pixels removed); rho at the centre is 1.  Pass a noise-normalised image
    (data / sqrt(variance)) and a source-free mask (jitcore.noise.source_free_mask) so that
    stars and a varying variance do not pose as correlation.  Each lag is a direct sum
    (jitcore/_kernels/lags.py); ``workers`` is accepted for compatibility and unused (the
    sums run on one thread).
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
    # Direct sums over the (2 radius + 1)^2 lags (half of them, the rest by symmetry): at
    # radius 3 on the 1k crop a quarter of the time of the two zero-padded FFT
    # autocorrelations they replace, and exact (the pair counts needed rounding).
    sums = np.empty((2 * radius + 1, 2 * radius + 1))
    pairs = np.empty_like(sums)
    lag_sums(x, m, int(radius), sums, pairs)
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


_TILE_STEP = 2  # every 2nd row and column of a tile: S_corr is smooth over the PSF, so the
# subsample loses little (its neighbours are correlated at 0.8-0.9) and costs 4x less.
_GLOBAL_SAMPLE = 500_000


def empty_sky_scale(
    score: np.ndarray, valid: np.ndarray, *, first: float | None = None, threshold: float = 5.0,
    grow: int = 6, tile: int = 256, min_free: float = 0.25, limit: float = 10.0,
    workers: int | None = None,
) -> ScoreScale:  # fmt: skip
    """Robust spread of ``score`` over empty sky, globally and per ``tile`` x ``tile`` tile
    (``tile`` even); ``workers`` threads (scipy.fft convention) share the rows of tiles.

    Sources are pixels with |score| >= ``threshold`` x ``first`` (the spread of all valid
    pixels, measured here if not given), grown by ``grow`` pixels or more (their wings); a
    tile needs ``min_free`` of its pixels source-free to get its own factor.  Factors are
    clipped to [1/limit, limit].

    Why 256 px tiles: on test_corrnoise_science's ramp (development seeds) the worst
    column band's empty-sky std was off by 3.5% with 512, 2.8% with 384, 2.1% with 256: a
    varying correlation is followed more closely, while each tile still holds ~1000
    independent score values (its factor good to ~2%).

    Why 5 and not 3: a lower cut also removes the noise's own excursions with their
    surroundings, which biases the spread low; at 5 the noise's excursions are rare (~0.3 per
    Mpix for a 2 px PSF, test_detect.py).  Fainter sources left in are what the
    interquartile-range sigma is robust to.
    """
    s_full = np.asarray(score)
    v_full = np.asarray(valid)
    if s_full.ndim != 2 or s_full.shape != v_full.shape:
        msg = f"need 2-d score and valid of one shape, got {s_full.shape}, {v_full.shape}"
        raise ValueError(msg)
    bad_tile = tile < 16 or tile % 2 != 0
    if not threshold > 0 or grow < 0 or bad_tile or not 0 < min_free <= 1 or not limit > 1:
        msg = (f"need threshold > 0, grow >= 0, even tile >= 16, 0 < min_free <= 1, limit > 1; got "
               f"{threshold}, {grow}, {tile}, {min_free}, {limit}")  # fmt: skip
        raise ValueError(msg)
    nty, ntx = -(-s_full.shape[0] // tile), -(-s_full.shape[1] // tile)
    # Everything on every _TILE_STEP-th row and column (see there): a 5 sigma source is
    # several pixels wide in S_corr, so the subsample still finds it.
    k = _TILE_STEP
    s, v = s_full[::k, ::k], v_full[::k, ::k]
    # Strided rows and columns before any boolean indexing: indexing the whole frame
    # first costs more than the quantiles.
    g = max(1, math.isqrt(s.size // _GLOBAL_SAMPLE))
    if first is None or not first > 0:
        ok = v & np.isfinite(s)
        if int(ok.sum()) < 100:
            return ScoreScale(1.0, np.ones((nty, ntx)), tile, 0.0, 0)
        first = iqr_sigma(s[::g, ::g][ok[::g, ::g]])
    cut = threshold * first
    if grow > 0:
        # ``hot`` grown by at least ``grow`` pixels (up to 3 grow - 1) in blocks of ``grow``:
        # a block is hot if any pixel in it is, hot blocks are dilated by one block; one
        # fused kernel (jitcore/_kernels/emptysky.py).  Rejected: ndimage.binary_dilation /
        # maximum_filter on the full frame, 0.3-0.8 s at 4k x 4k on the shared machine;
        # masking a little more sky costs nothing.
        gk = -(-grow // k)
        shape_b = (-(-s.shape[0] // gk), -(-s.shape[1] // gk))
        free = np.empty(s.shape, dtype=bool)
        n_ok, n_free = empty_sky_free(s, v, s.dtype.type(cut), gk, np.empty(shape_b, bool),
                                      np.empty(shape_b, bool), free)  # fmt: skip
    else:
        ok = v & np.isfinite(s)
        free = ok & ~(np.abs(s) >= cut)
        n_ok, n_free = int(ok.sum()), int(free.sum())
    if n_ok < 100:
        return ScoreScale(1.0, np.ones((nty, ntx)), tile, 0.0, 0)
    if n_free < 100:
        return ScoreScale(first, np.full((nty, ntx), first), tile, n_free / n_ok, 0)

    def clip(f: float) -> float:
        return float(min(max(f, 1.0 / limit), limit))

    sub = free[::g, ::g]
    factor = clip(iqr_sigma(s[::g, ::g][sub])) if sub.sum() >= 100 else first
    # Each tile's quartiles straight from the strided score and mask, in one kernel: the
    # per-tile boolean indexing, float64 copies and partitions cost ~0.1 s at 4k (issue 17);
    # the quartiles are np.percentile's (iqr_sigma's) bit for bit.
    t = tile // k
    sizes_y = np.minimum(t, s.shape[0] - np.arange(nty) * t)
    sizes_x = np.minimum(t, s.shape[1] - np.arange(ntx) * t)
    need = np.maximum(100.0, min_free * (sizes_y[:, None] * sizes_x[None, :]))
    q25, q75 = np.zeros((nty, ntx)), np.zeros((nty, ntx))
    counts = np.zeros((nty, ntx), np.int64)
    m = t * t

    def rows_of_tiles(i: int) -> None:  # each thread its own scratch, its own rows
        r = slice(i * t, (i + 1) * t)
        masked_tile_quartiles(s[r], free[r], t, need[i : i + 1], np.empty(m, s.dtype),
                              np.empty(m, s.dtype), np.empty(m + 2, s.dtype), q25[i : i + 1],
                              q75[i : i + 1], counts[i : i + 1])  # fmt: skip

    run_tiles(rows_of_tiles, nty, thread_count(workers, nty))
    measured_tiles = counts >= need
    tiles = np.full((nty, ntx), factor)
    for i, j in zip(*np.nonzero(measured_tiles), strict=True):
        tiles[i, j] = clip(float((q75[i, j] - q25[i, j]) / IQR_PER_SIGMA))
    return ScoreScale(factor, tiles, tile, n_free / n_ok, int(measured_tiles.sum()))


def _interp_weights(n: int, ntiles: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, t): position p is (1 - t) x tile k + t x tile k + 1, linear between tile centres.

    Beyond the outermost centres the end segment is extrapolated (t < 0 or > 1, at most half
    a tile): a factor that changes across the frame keeps changing to its edge, and holding
    it flat there left the outer half-tiles 4% wide on test_corrnoise_science's ramp.
    """
    if ntiles == 1:
        return np.zeros(n, np.intp), np.zeros(n, np.float32)
    centres = np.minimum(np.arange(ntiles) * tile + (tile - 1) / 2.0, n - 1)
    pos = np.arange(n, dtype=np.float64)
    k = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, ntiles - 2)
    t = (pos - centres[k]) / (centres[k + 1] - centres[k])
    return k, t.astype(np.float32)


_MAP_BAND = 256  # rows of scale_map computed at once


def _map_parts(scale: ScoreScale, shape: tuple[int, int]):
    """What the scale map is made of: (rows, ky, ky1, ty, floor, outer_row, outer_col);
    ``rows`` the tiles interpolated along x (nty, nx), each image row j mixing rows[ky[j]]
    and rows[ky1[j]] with weight ty[j]; ``floor`` applies on the extrapolated rows and
    columns only (elsewhere each value is a weighted mean of tiles, all >= their minimum)."""
    nty, ntx = scale.tiles.shape
    if shape[0] > nty * scale.tile or shape[1] > ntx * scale.tile:
        raise ValueError(f"shape {shape} exceeds the tiles {scale.tiles.shape} x {scale.tile}")
    floor = np.float32(0.5 * scale.tiles.min())
    kx, tx = _interp_weights(shape[1], ntx, scale.tile)
    tiles = scale.tiles.astype(np.float32)
    kx1 = np.minimum(kx + 1, ntx - 1)
    rows = np.ascontiguousarray(tiles[:, kx] * (1 - tx) + tiles[:, kx1] * tx)  # (nty, nx)
    ky, ty = _interp_weights(shape[0], nty, scale.tile)
    ky1 = np.minimum(ky + 1, nty - 1)
    return rows, ky, ky1, ty, floor, (ty < 0) | (ty > 1), (tx < 0) | (tx > 1)


def scale_map(scale: ScoreScale, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel float32 factor: ``scale.tiles`` bilinearly interpolated between tile centres
    (extrapolated over the outer half-tiles, floored at half the smallest tile factor).

    Smooth, so the rescaled score has no steps at tile edges.  Interpolated along x on the
    tile rows first (small), then each image row mixes two of those: three full-frame
    passes.  Rejected: ndimage.zoom, and Wy T Wx^T as matrix products (4-10x slower at 4k:
    a 16-term sum per pixel where two are non-zero).  The pipeline applies the map without
    making it (:func:`apply_scale_map`, :func:`scale_map_at`).
    """
    rows, ky, ky1, ty, floor, outer_rows, outer_cols = _map_parts(scale, shape)
    # In bands of rows: the whole-frame form (rows[ky] * (1 - ty) + rows[ky1] * ty) held
    # three frame-sized planes at once, 192 MB at 4k on top of the score's products (issue
    # 17's peak RSS); a band's temporaries are 4 MB, and the arithmetic is the same.
    out = np.empty((shape[0], shape[1]), np.float32)
    for y0 in range(0, shape[0], _MAP_BAND):
        band = slice(y0, y0 + _MAP_BAND)
        np.multiply(rows[ky[band]], (1 - ty[band])[:, None], out=out[band])
        out[band] += rows[ky1[band]] * ty[band][:, None]
    # Only extrapolated rows and columns can fall below the floor.
    rows_out = np.flatnonzero(outer_rows)
    out[rows_out] = np.maximum(out[rows_out], floor)
    cols_out = np.flatnonzero(outer_cols)
    out[:, cols_out] = np.maximum(out[:, cols_out], floor)
    return out


def apply_scale_map(
    scale: ScoreScale, score: np.ndarray, variance: np.ndarray, *, workers: int | None = None
) -> None:
    """In place: ``score`` /= m and ``variance`` *= m^2 (as two products), m =
    ``scale_map(scale, score.shape)``, the same values bit for bit without the map.

    Making the 64 MB map and three passes over it (score, and the variance twice) took
    ~0.1 s of the 4k pipeline; one fused pass over the two planes (rescale_by_map) reads
    and writes each once (issue 17; tests/unit/test_noisecorr.py compares with the map).
    ``score`` and ``variance``: 2-D float32 or float64, C-contiguous, one shape (the
    ZOGY result's score and flux variance); ``workers`` threads share the rows."""
    for name, arr in (("score", score), ("variance", variance)):
        ok = isinstance(arr, np.ndarray) and arr.dtype in (np.float32, np.float64)
        if not ok or arr.ndim != 2 or not arr.flags.c_contiguous or not arr.flags.writeable:
            raise ValueError(f"{name} must be a writeable C-contiguous 2-D float array")
    if variance.shape != score.shape:
        raise ValueError(f"variance shape {variance.shape} differs from score {score.shape}")
    shape = (int(score.shape[0]), int(score.shape[1]))
    rows, ky, ky1, ty, floor, outer_rows, outer_cols = _map_parts(scale, shape)
    ky, ky1 = ky.astype(np.int64), ky1.astype(np.int64)
    bands = split_axis(shape[0], _MAP_BAND)

    def run(k: int) -> None:
        j0, j1 = bands[k]
        rescale_by_map(rows, ky, ky1, ty, floor, outer_rows, outer_cols, j0, j1, score,
                       variance)  # fmt: skip

    run_tiles(run, len(bands), thread_count(workers, len(bands)))


def scale_map_at(scale: ScoreScale, shape: tuple[int, int], x, y) -> np.ndarray:
    """``scale_map(scale, shape)[iy, ix]`` (float32) at the pixels (ix, iy) = rint of (x, y),
    clipped to the image: the same values, for a few positions, without the map."""
    rows, ky, ky1, ty, floor, outer_rows, outer_cols = _map_parts(scale, shape)
    ix = np.clip(np.rint(np.asarray(x, dtype=np.float64)).astype(np.int64), 0, shape[1] - 1)
    iy = np.clip(np.rint(np.asarray(y, dtype=np.float64)).astype(np.int64), 0, shape[0] - 1)
    t = ty[iy]
    m = rows[ky[iy], ix] * (1 - t) + rows[ky1[iy], ix] * t
    outer = outer_rows[iy] | outer_cols[ix]
    return np.where(outer, np.maximum(m, floor), m).astype(np.float32)
