"""ZOGY image subtraction (Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27), tiled.

Inputs are on one pixel grid, background-subtracted and in one flux unit (nJy).  N is the
new (science) image, R the reference (template).  Per tile, with the PSFs at the tile
centre and the tile's robust background noise sigma_n, sigma_r (eq. numbers of the paper):

    B     = sigma_n^2 F_r^2 |P_r^|^2 + sigma_r^2 F_n^2 |P_n^|^2
    D^    = (F_r P_r^ N^ - F_n P_n^ R^) / sqrt(B)                       (13)
    P_D^  = F_r F_n P_r^ P_n^ / (F_D sqrt(B))                          (14)
    F_D   = F_r F_n / sqrt(sigma_n^2 F_r^2 + sigma_r^2 F_n^2)             (15)
    S     = S_n - S_r,  S_n = k_n (x) N,  S_r = k_r (x) R                (25-26)
    V_S   = V_n (x) k_n^2 + V_r (x) k_r^2                               (28-29)
    V_ast = sx^2 [(dS_n/dx)^2 + (dS_r/dx)^2] + sy^2 [(dS_n/dy)^2 + (dS_r/dy)^2]   (30-31)
    V_psf = e^2 (S_n^2 + S_r^2)                      (e = psf_error_fraction, not in the paper)
    S_corr = S / sqrt(V_S + V_ast + V_psf)                              (32)
    flux  = S / F_S,  F_S = mean over frequencies of F_n^2 F_r^2 |P_n^|^2 |P_r^|^2 / B  (41-42)

V_psf: with PSF models wrong by a relative amount e, a static star no longer cancels and
leaves a residual of order e times each image's own score term; the two images' errors are
independent, so their variances add.  It is negligible on empty sky (e^2 V_S) and grows as
the square of the star's score, which is what makes bright-star residuals pass as noise.

Design choices, and the alternatives rejected:

* Unusable pixels (``bad``, non-finite values, negative variances) and everything outside
  the image are set to 0 in the data *and* in the variance planes before the FFT.  0 is the
  expected sky after background subtraction, so a mask or an edge adds no step for the
  kernels to ring on; and because the same pixels get zero variance, V_S counts exactly the
  noise that went into S, so S_corr stays N(0, 1) right up to an edge or a mask
  (test_zogy.py::test_noise_score_is_unit_normal_at_edges).  Reflect padding was rejected:
  it duplicates the noise, so S at an edge has up to twice the variance V_S claims.  Noise
  padding was rejected: it makes the output depend on a random draw.  Filling the variance
  with the tile median (rather than 0) was rejected: it overstates V_S at the image edges
  (S_corr std ~0.86 on the two outermost rows); next to a mask the choice does not matter,
  those pixels are invalid anyway.  The one thing no padding fixes is a bright star cut by
  the image edge: ``mask_edges`` (below) is for that.
* Tiles: cores of at most ``tile_size`` partition the image; each is transformed with
  ``border`` real pixels around it (zeros beyond the image) and padded to a fast FFT length,
  so the circular wrap-around of the FFT only reaches the discarded border.
* B is floored at 1e-200 B(0) only to keep 0/0 out where both PSF transforms are exactly 0.
  With sigma_n, sigma_r > 0 (required) every kernel is bounded where B is small
  (|kD_n| <= 1/sigma_n, |k_n| <= |P_n^|/sigma_n^2, ...), so no larger guard is needed.  A
  floor of 1e-12 B(0) was tried and rejected: for Gaussian PSFs it clips 18-45% of the
  frequency plane, which low-passes D (its noise is then no longer white, and PSF photometry
  on D with the per-pixel variance underestimates errors) and makes the kD kernels ring.
  The price of an exactly white D: where both PSFs are ~0 (stamp truncation ripple, rounding)
  kD takes their phases, so the D kernels have extended low-level tails.  They carry noise
  only (a static star still cancels exactly, a new source still appears as psf_d), and
  ``difference_variance`` is convolved with the same kernels, so D / sqrt(V_D) stays N(0, 1);
  but D from two tilings differs by up to ~5% of its noise (next to a bright variable star
  at a seam), while the score agrees to ~1e-5 (test_tiles_are_seamless_for_a_constant_psf).
* ``valid`` is False on bad pixels dilated by the kernels' footprint (the Chebyshev radius
  holding all but 1% of sum |k| of the score kernels k_n and k_r, at most ``border``);
  there ``difference``, ``score`` and ``flux`` are 0 and the two variances NaN (the
  pipeline's convention for no data).  The image edge (``mask_edges``): on empty sky the
  score is N(0, 1) up to the edge (first point), but a star cut by the edge does not cancel
  (its missing parts differ after k_n and k_r): in the pipeline's simulated pairs such stars
  gave |S_corr| up to 14 at x = 0.  The default "light" invalidates only what such light
  can reach (jitcore.tiles.edge_light finds it: PSF-matched S/N > 5 in both images within
  one PSF sigma of the edge): a strip as deep as the radius holding all but 1/S/N of the
  kernels' weight (at most the mask radius), along the edge as far as the light plus that
  radius and one sigma.  A source wholly inside or wholly outside the image cancels.  "all",
  the rule before it, invalidated the whole strip of the mask radius along every edge: 22 px
  per edge on the real DECam pairs (31% of a 256^2 cutout, where 10 of 12 hosted fakes
  missed at S/N >= 15 in benchmarks/real_data_report.py were lost).
* ``workers`` follows scipy.fft (None: 1, -1: all cores): whole tiles run on that many
  threads (the FFTs and the kernels release the GIL), each with single-threaded FFTs, also
  for a single tile: results do not depend on the thread count (jitcore/fft.py).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import fft as sfft

from diffstream.jitcore import fft as frame_fft
from diffstream.jitcore._kernels.planes import usable_pair
from diffstream.jitcore._kernels.zogy import (
    zogy_core,
    zogy_denominator,
    zogy_frame_spectra,
    zogy_spectral_kernels,
)
from diffstream.jitcore.planes import native_float
from diffstream.jitcore.psf import normalise_psf, psf_sigma
from diffstream.jitcore.robust import median_noise
from diffstream.jitcore.tiles import (
    EDGE_MODES,
    EdgeLight,
    crop_centred,
    edge_light,
    fill_core_valid,
    fill_frame,
    footprint_radii,
    frame_shape,
    overlap,
    run_tiles,
    stamp_spectra,
    stamp_spectrum,
    thread_count,
    tile_cores,
)

__all__ = [
    "ZogyTile", "ZogyResult", "zogy", "B_FLOOR", "FOOTPRINT_TOL", "MIN_TILE_SIZE", "PRECISIONS",
]  # fmt: skip

B_FLOOR = 1e-200  # relative to B(0); see the module docstring
# Kernel weight (sum |k|) a valid pixel may draw from bad pixels.  1e-2, not 1e-3: measured
# PSF stamps are truncated, so k_n has ~1e-4 wings out to 20 px that push the 1e-3 radius to
# the border (14-15 px vs 6-12 px; valid area 88% vs 92% on the pipeline's simulated 1024^2
# pairs) with the same detections on six pure-noise pairs.  An L2 (sum k^2) criterion was
# rejected: its radius of 3-4 px left five |S_corr| 6-8 artefacts next to masks there.
FOOTPRINT_TOL = 1e-2
MIN_TILE_SIZE = 16

Box = tuple[int, int, int, int]


@dataclass
class ZogyTile:
    """One tile: what it owns, what was transformed, and its ZOGY constants.

    ``core`` and ``outer`` are ``(y0, y1, x0, x1)`` half-open image boxes; ``outer`` is the
    whole FFT frame and may reach beyond the image (that part was zero-filled).
    """

    core: Box
    outer: Box
    psf_d: np.ndarray
    f_d: float
    f_s: float
    sigma_n: float
    sigma_r: float
    mask_radius: int = 0  # px; dilation of bad pixels into ``valid`` for this tile


@dataclass
class ZogyResult:
    """ZOGY products on the science pixel grid (all float32 except ``valid``).

    difference          D / F_D: a source of flux f appears as f * psf_d (nJy)
    difference_variance per-pixel variance of ``difference`` incl. source noise (nJy^2)
    score               S_corr, ~N(0, 1) on empty sky (positive: brighter in the science)
    flux                S / F_S, PSF flux estimate at each pixel (nJy)
    flux_variance       (V_S + V_ast + V_psf) / F_S^2 (nJy^2)
    valid               False on bad pixels dilated by the kernel footprint; there the
                        values are 0 and the variances NaN
    """

    difference: np.ndarray
    difference_variance: np.ndarray
    score: np.ndarray
    flux: np.ndarray
    flux_variance: np.ndarray
    valid: np.ndarray
    tiles: list[ZogyTile]

    @cached_property
    def _grid(self) -> tuple[list[int], list[int], int, int]:
        ys = sorted({t.core[0] for t in self.tiles})
        xs = sorted({t.core[2] for t in self.tiles})
        ny = max(t.core[1] for t in self.tiles)
        nx = max(t.core[3] for t in self.tiles)
        return ys, xs, ny, nx

    def tile_at(self, x: float, y: float) -> ZogyTile:
        """The tile whose core holds pixel position (x, y) (0-based, centres at integers)."""
        ys, xs, ny, nx = self._grid
        ix = math.floor(x + 0.5)
        iy = math.floor(y + 0.5)
        if not (0 <= ix < nx and 0 <= iy < ny):
            raise ValueError(f"position (x={x}, y={y}) is outside the image of shape {(ny, nx)}")
        row = bisect.bisect_right(ys, iy) - 1
        col = bisect.bisect_right(xs, ix) - 1
        return self.tiles[row * len(xs) + col]


def _image(name: str, arr: Any) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got ndim={a.ndim}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    return a


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return v


def _stamp(psf: Any, x: float, y: float, name: str) -> np.ndarray:
    try:
        return normalise_psf(psf.at(x, y))
    except ValueError as exc:
        raise ValueError(f"{name}.at({x:g}, {y:g}): {exc}") from exc


def _largest_sigma(stamps: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The largest Gaussian-equivalent sigma (second moments) of all the tiles' PSF stamps."""
    return max(psf_sigma(s) for pair in stamps for s in pair)


def _default_border(stamps: list[tuple[np.ndarray, np.ndarray]], sigma: float) -> int:
    """max(PSF box, 10 sigma) over all tiles and both PSFs (LSST ZogyTask's rule); ``sigma``:
    :func:`_largest_sigma` of ``stamps``."""
    box = max(s.shape[0] for pair in stamps for s in pair)
    return max(box, math.ceil(10.0 * sigma))


def zogy(
    science: np.ndarray,
    science_variance: np.ndarray,
    template: np.ndarray,
    template_variance: np.ndarray,
    bad: np.ndarray,
    psf_science: Any,
    psf_template: Any,
    *,
    f_n: float = 1.0,
    f_r: float = 1.0,
    sigma_astrometric: tuple[float, float] = (0.0, 0.0),
    tile_size: int = 512,
    border: int | None = None,
    workers: int | None = None,
    psf_error_fraction: float = 0.0,
    mask_edges: str = "light",
    precision: str = "double",
) -> ZogyResult:
    """ZOGY difference, score and PSF photometry of ``science`` minus ``template``.

    Images (nJy) and variances (nJy^2) share one shape; ``bad`` (bool) marks pixels unusable
    in either image.  ``psf_science`` / ``psf_template`` have ``.at(x, y)`` returning a
    unit-sum odd stamp (:class:`jitcore.psf.PsfModel`); each tile uses them at its centre.
    ``f_n``, ``f_r``: flux scalings (1 when both are in nJy).  ``sigma_astrometric``:
    (sx, sy) registration noise in pixels.  ``tile_size``: largest tile core (px).
    ``border``: real pixels around each core in its FFT frame (default max(PSF box,
    10 sigma)).  ``workers``: threads, scipy.fft convention (None: 1, -1: all cores).
    ``psf_error_fraction``: e of V_psf (0 disables it).  ``mask_edges``: how the image edge
    makes pixels invalid (module docstring): "light" (within the kernel footprint of light
    the edge cuts), "all" (a strip of the footprint radius along every edge) or "none".
    ``precision``: "double" or "single", the float width of the frame-sized FFTs and
    spectral products (the PSF spectra and kernels are always computed in double precision;
    see PRECISIONS for why single is enough and what it buys).
    Raises ValueError / TypeError on invalid input (see the module docstring for the maths).
    """
    sci = _image("science", science)
    svar = _image("science_variance", science_variance)
    tmpl = _image("template", template)
    tvar = _image("template_variance", template_variance)
    bad_arr = np.asarray(bad)
    for name, a in (("science_variance", svar), ("template", tmpl), ("template_variance", tvar),
                    ("bad", bad_arr)):  # fmt: skip
        if a.shape != sci.shape:
            raise ValueError(f"{name} shape {a.shape} != science shape {sci.shape}")
    if bad_arr.dtype != np.bool_:
        raise TypeError(f"bad must be a bool array, got dtype {bad_arr.dtype}")
    if sci.size == 0:
        raise ValueError(f"images must not be empty, got shape {sci.shape}")
    f_n = _positive("f_n", f_n)
    f_r = _positive("f_r", f_r)
    try:
        sx, sy = (float(v) for v in sigma_astrometric)
    except (TypeError, ValueError) as exc:
        msg = f"sigma_astrometric must be two numbers (sx, sy), got {sigma_astrometric!r}"
        raise ValueError(msg) from exc
    if not (math.isfinite(sx) and math.isfinite(sy) and sx >= 0 and sy >= 0):
        raise ValueError(f"sigma_astrometric must be finite and >= 0, got {(sx, sy)}")
    e = float(psf_error_fraction)
    if not (math.isfinite(e) and 0.0 <= e < 1.0):
        raise ValueError(f"psf_error_fraction must be in [0, 1), got {psf_error_fraction}")
    if mask_edges not in EDGE_MODES:
        raise ValueError(f"mask_edges must be one of {EDGE_MODES}, got {mask_edges!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int | np.integer):
        raise TypeError(f"tile_size must be an int, got {type(tile_size).__name__}")
    if tile_size < MIN_TILE_SIZE:
        raise ValueError(f"tile_size must be >= {MIN_TILE_SIZE}, got {tile_size}")
    for name, p in (("psf_science", psf_science), ("psf_template", psf_template)):
        if not callable(getattr(p, "at", None)):
            raise TypeError(f"{name} must have an .at(x, y) method, got {type(p).__name__}")

    # One fused pass (the NumPy chain of ten full-frame passes took 55 ms at 4k x 4k, on
    # one core, before any tile could start).
    good = np.empty(sci.shape, dtype=bool)
    usable_pair(np.ascontiguousarray(bad_arr), *(native_float(a) for a in (sci, tmpl, svar, tvar)),
                good)  # fmt: skip
    if not good.any():
        raise ValueError("no usable pixels: every pixel is bad or non-finite")

    cores = tile_cores(sci.shape, int(tile_size))
    stamps = []
    for y0, y1, x0, x1 in cores:
        xc, yc = 0.5 * (x0 + x1 - 1), 0.5 * (y0 + y1 - 1)
        stamps.append((_stamp(psf_science, xc, yc, "psf_science"),
                       _stamp(psf_template, xc, yc, "psf_template")))  # fmt: skip
    half = max(s.shape[0] // 2 for pair in stamps for s in pair)
    sigma_max = _largest_sigma(stamps)
    if border is None:
        border = _default_border(stamps, sigma_max)
    if isinstance(border, bool) or not isinstance(border, int | np.integer):
        raise TypeError(f"border must be an int or None, got {type(border).__name__}")
    if border < max(1, half):
        raise ValueError(f"border must be >= max(1, PSF stamp half-size {half}), got {border}")

    edge_cut, edge_pad = None, 0
    if mask_edges == "light":
        sigma = max(sigma_max, 0.5)
        # The band: the outermost sigma px.  Light the edge cuts is there; a star wholly
        # inside puts only its far wings there (simulated stars 3-6 px inside the edge left
        # no residual above the noise even at a band S/N of 80).
        edge_cut = edge_light([(sci, svar), (tmpl, tvar)], good,
                              width=max(2, math.ceil(sigma)), sigma=sigma)  # fmt: skip
        edge_pad = math.ceil(sigma)  # the light reaches a little beyond where it is lit
    n_threads = _threads(workers, len(cores))
    frame = frame_shape(cores, int(border))
    small = sfft.next_fast_len(4 * int(border) + 1, real=True)
    ctx = _Context(
        sci=sci, svar=svar, tmpl=tmpl, tvar=tvar, good=good, f_n=f_n, f_r=f_r,
        sx2=sx * sx, sy2=sy * sy, e2=e * e, border=int(border), mask_edges=mask_edges,
        edge_cut=edge_cut, edge_pad=edge_pad, frame=frame, small=small,
        psf_n=_PsfSpectra([st[0] for st in stamps], frame, small),
        psf_r=_PsfSpectra([st[1] for st in stamps], frame, small),
        sigma_n=median_noise(svar, good), sigma_r=median_noise(tvar, good),
        real=PRECISIONS[precision][0], spec=PRECISIONS[precision][1],
    )  # fmt: skip
    out = {k: np.empty(sci.shape, np.float32) for k in _OUTPUTS}
    valid = np.empty(sci.shape, dtype=bool)

    def run(i: int) -> ZogyTile:
        return _tile(ctx, i, cores[i], stamps[i], out, valid)

    tiles = run_tiles(run, len(cores), n_threads)
    return ZogyResult(**out, valid=valid, tiles=tiles)


_OUTPUTS = ("difference", "difference_variance", "score", "flux", "flux_variance")

# Frame dtypes per precision.  Single precision runs the frame FFTs ~2.6x faster (576^2
# rfft2 + irfft2: 1.55 ms against 4.11 ms here).  Why it is enough: the round-off of an FFT
# is ~1e-7 of the frame's L2 norm spread over all its pixels, so even a 1e7 nJy star in a
# 576^2 frame leaves ~1e-3 nJy per pixel, far below any sky noise; the kernels themselves
# (where B is tiny and ratios matter) are still built in double precision.
# tests/unit/test_zogy.py::test_single_precision_matches_double bounds the difference.
PRECISIONS = {"double": (np.float64, np.complex128), "single": (np.float32, np.complex64)}


def _threads(workers: int | None, ntiles: int) -> int:
    """Tile threads for scipy.fft-style ``workers`` (None: 1; -1: all cores; -2: all but one).

    Tiles are independent and both scipy.fft and the kernels release the GIL, so whole tiles
    run concurrently, each with single-threaded FFTs.  That scales better than threading
    inside each ~600^2 FFT (measured on 2 cores: rfft2 of 576^2 took 1.55 ms with 1 worker,
    1.50 ms with 2; a 4096^2 zogy ran ~2x faster on 2 tile threads).  A single tile runs
    its FFTs on one thread too (jitcore/fft.py: results independent of the thread count).
    """
    return thread_count(workers, ntiles)


@dataclass
class _Context:
    sci: np.ndarray
    svar: np.ndarray
    tmpl: np.ndarray
    tvar: np.ndarray
    good: np.ndarray
    f_n: float
    f_r: float
    sx2: float
    sy2: float
    e2: float
    mask_edges: str
    edge_cut: EdgeLight | None  # edge_light's S/N per position ("light" mode)
    edge_pad: int
    border: int
    frame: tuple[int, int]
    small: int  # side of the small grid the compact kernels are computed on
    psf_n: _PsfSpectra
    psf_r: _PsfSpectra
    sigma_n: float  # whole-image fallbacks for tiles without a good pixel
    sigma_r: float
    real: type = np.float64  # frame dtypes (PRECISIONS)
    spec: type = np.complex128

    @property
    def spec_shape(self) -> tuple[int, int]:
        return (self.frame[0], self.frame[1] // 2 + 1)

    def rfft(self, a: np.ndarray) -> np.ndarray:
        """rfft2 over the last two axes (a stack of frames is transformed frame by frame)."""
        return frame_fft.rfft2(a)

    def irfft(self, a: np.ndarray) -> np.ndarray:
        return frame_fft.irfft2(a, self.frame)


# PSF stamps of all tiles are expanded in a basis (_PsfSpectra) when it has at most this
# many stamps: the tile's PSF spectra are then a combination of these basis spectra, formed
# on the fly by zogy_frame_spectra, instead of two double-precision frame transforms per tile
# (0.58 ms each at 540^2).  A PsfModel of degree d needs (d+1)(d+2)/2 (1, 3, 6); past 6 the
# combination reads more memory than the transform costs.
MAX_PSF_RANK = 6
# Singular values below this fraction of the largest are rounding: the model's stamps are
# combinations of its basis to ~1e-16, so the expansion reproduces each stamp to ~1e-15 of
# its peak, the round-off of the FFT itself (test_zogy.py::test_psf_basis_matches_direct).
PSF_RANK_TOL = 1e-12


class _PsfSpectra:
    """One PSF's spectra for every tile, on the frame and on the small kernel grid.

    The tiles' stamps are the PSF model at their centres; a smoothly varying model (a
    polynomial in x, y over a few basis stamps, :class:`jitcore.psf.PsfModel`) makes them
    combinations of a few stamps.  Found from the stamps themselves (an SVD of the
    tiles x pixels matrix), so any ``.at`` model qualifies and none is assumed: when the
    rank is above :data:`MAX_PSF_RANK` (or there is one tile, or the stamps differ in
    size), each tile transforms its own stamp.
    """

    def __init__(self, stamps: list[np.ndarray], frame: tuple[int, int], small: int) -> None:
        self.stamps = stamps
        self.frame = frame
        self.small = small
        self.coeffs: np.ndarray | None = None
        shapes = {st.shape for st in stamps}
        if len(stamps) < 2 or len(shapes) != 1:
            return
        # One thread: OpenBLAS's threads only wait on each other for a matrix this small
        # (64 x 121: 90 ms of CPU on two threads with another process on the core, 0.6 ms
        # on one; as jitcore.alardlupton).
        from threadpoolctl import threadpool_limits

        k = stamps[0].shape[0]
        with threadpool_limits(1, user_api="blas"):
            u, sv, vt = np.linalg.svd(np.stack([st.ravel() for st in stamps]), full_matrices=False)
        rank = int(np.count_nonzero(sv > PSF_RANK_TOL * sv[0]))
        if rank > MAX_PSF_RANK or rank >= len(stamps):
            return
        self.coeffs = np.ascontiguousarray(u[:, :rank] * sv[:rank])
        basis = vt[:rank].reshape(rank, k, k)
        self.frame_basis = _split(np.stack([stamp_spectrum(b, frame) for b in basis]))
        self.small_basis = np.stack([stamp_spectrum(b, (small, small)) for b in basis])

    def frame_spectra(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i``'s basis spectra on the frame as zogy_frame_spectra takes them, (real,
        imag) x r x frame half plane, and their coefficients (r,)."""
        if self.coeffs is None:
            return _split(stamp_spectrum(self.stamps[i], self.frame)[None]), np.ones(1)
        return self.frame_basis, self.coeffs[i]

    def small_spectrum(self, i: int) -> np.ndarray:
        """Tile ``i``'s PSF spectrum (complex128) on the small grid."""
        if self.coeffs is None:
            return stamp_spectrum(self.stamps[i], (self.small, self.small))
        # Term by term: np.tensordot goes through BLAS, whose threads turned this 60 x 31
        # sum into 7 ms on a busy machine.
        c = self.coeffs[i]
        out = c[0] * self.small_basis[0]
        for k in range(1, c.shape[0]):
            out += c[k] * self.small_basis[k]
        return out


def _split(spectra: np.ndarray) -> np.ndarray:
    """Complex planes (r, fy, fxh) as one C array (2, r, fy, fxh) of their real and imaginary
    parts."""
    return np.ascontiguousarray(np.stack([spectra.real, spectra.imag]))


def _kernels(
    pn: np.ndarray, pr: np.ndarray, a_n: float, a_r: float, f_n: float, f_r: float,
    out: np.ndarray,
) -> None:  # fmt: skip
    """The four kernel spectra (kD_n, kD_r, k_n, k_r) from the PSF spectra into ``out[:4]``
    (complex128 planes)."""
    bden = np.empty(pn.shape)
    zogy_denominator(pn, pr, a_n, a_r, B_FLOOR * (a_n + a_r), bden)
    zogy_spectral_kernels(pn, pr, bden, f_n, f_r, out[0], out[1], out[2], out[3])


def _tile(
    ctx: _Context,
    i: int,
    core: Box,
    stamps: tuple[np.ndarray, np.ndarray],
    out: dict[str, np.ndarray],
    valid: np.ndarray,
) -> ZogyTile:
    y0, y1, x0, x1 = core
    b = ctx.border
    fy, fx = ctx.frame
    oy, ox = y0 - b, x0 - b
    ny, nx = ctx.sci.shape
    wy0, wy1, wx0, wx1 = overlap((ny, nx), oy, ox, fy, fx)
    # Contiguous: the four frame fills below read it (a 0.3 MB copy makes their loops
    # vectorise).
    good = np.ascontiguousarray(ctx.good[wy0:wy1, wx0:wx1])

    sigma_n = median_noise(ctx.svar[wy0:wy1, wx0:wx1], good)
    sigma_r = median_noise(ctx.tvar[wy0:wy1, wx0:wx1], good)
    if math.isnan(sigma_n) or math.isnan(sigma_r):
        sigma_n, sigma_r = ctx.sigma_n, ctx.sigma_r
    if not (sigma_n > 0 and sigma_r > 0):
        msg = f"ZOGY needs sigma_n > 0 and sigma_r > 0, got {sigma_n:g}, {sigma_r:g} in tile {core}"
        raise ValueError(msg)
    f_n, f_r = ctx.f_n, ctx.f_r
    a_n = sigma_n**2 * f_r**2
    a_r = sigma_r**2 * f_n**2
    f_d = f_r * f_n / math.sqrt(a_n + a_r)

    # --- compact kernels on a small grid ------------------------------------------------
    # k_n, k_r (and P_D) fall off within the border, so a (4 border + 1)^2 grid gives them
    # exactly up to that tail, for a fraction of the cost of frame-sized inverse FFTs.
    # The D kernels are not compact (module docstring), but their squares, which only make
    # the variance of D, are: beyond 2 border they hold < 1e-4 of sum kD^2 (4e-5 for the
    # pipeline's measured 4k PSFs, 1e-3 beyond 1 border), so kD^2 is cut at 2 border here
    # instead of two frame-sized inverse FFTs per tile.  D itself keeps the full kD.
    m = ctx.small
    pn = ctx.psf_n.small_spectrum(i)
    ks = np.empty((5, m, m // 2 + 1), np.complex128)  # kD_n, kD_r, k_n, k_r, P_D
    _kernels(pn, ctx.psf_r.small_spectrum(i), a_n, a_r, f_n, f_r, ks)
    np.multiply(pn, ks[0], out=ks[4])
    ks[4] *= f_n / f_d  # P_D^ = kD_n F_n P_n^ / F_D
    small = frame_fft.irfft2(ks, (m, m))  # one call for the five
    kd_small = [small[0], small[1]]
    k_small = [small[2], small[3]]
    half = max(stamps[0].shape[0], stamps[1].shape[0]) // 2
    psf_d = crop_centred(small[4], half)
    psf_d = psf_d / psf_d.sum()
    radii = footprint_radii(k_small, b)
    radius = min(radii(FOOTPRINT_TOL), b)
    r_d = min(2 * b, (min(ctx.frame) - 1) // 2)

    # --- frame spectra ------------------------------------------------------------------
    # The kernel squares are compact stamps: their frame spectra skip the zero rows
    # (stamp_spectra), in the frame precision.
    sq = stamp_spectra(
        [crop_centred(k, r) ** 2 for k, r in
         ((k_small[0], b), (k_small[1], b), (kd_small[0], r_d), (kd_small[1], r_d))],
        ctx.frame, real=ctx.real,
    )  # fmt: skip
    # The four data frames transformed in one call (~10% less than four calls; the
    # inverse transforms gained nothing from the same batching).
    frames: np.ndarray = np.empty((4, *ctx.frame), dtype=ctx.real)
    for k, img in enumerate((ctx.sci, ctx.tmpl, ctx.svar, ctx.tvar)):
        fill_frame(img, good, oy, ox, frames[k])
    spec = ctx.rfft(frames)
    xn, xr, xvn, xvr = spec
    parts = ctx.sx2 > 0 or ctx.sy2 > 0 or ctx.e2 > 0
    bn, cn = ctx.psf_n.frame_spectra(i)
    br, cr = ctx.psf_r.frame_spectra(i)
    # D^, V_D^, V_S^, S_n^ (or S^), S_r^
    outs: np.ndarray = np.empty((5, *ctx.spec_shape), ctx.spec)
    f_s = zogy_frame_spectra(bn, cn, br, cr, a_n, a_r, B_FLOOR * (a_n + a_r), f_n, f_r, fx,
                             parts, xn, xr, xvn, xvr, sq[0], sq[1], sq[2], sq[3], *outs,
                             np.empty((9, ctx.spec_shape[1])))  # fmt: skip
    del spec, xn, xr, xvn, xvr, sq
    d, vd, vs, s_n = (ctx.irfft(o) for o in outs[:4])
    # Without parts s_r is not read (zogy_core): S itself is s_n.
    s_r = ctx.irfft(outs[4]) if parts else s_n

    # --- valid mask and products (core only) --------------------------------------------
    # Edge light of S/N s: the reach beyond which the kernels hold < 1/s of their weight,
    # i.e. the cut light leaks < ~1 sigma of residual there (the bad pixels' FOOTPRINT_TOL
    # at most).
    def reach(snr: float) -> int:
        return radii(max(FOOTPRINT_TOL, 1.0 / snr))

    fill_core_valid(ctx.good, valid, core, radius, mask_edges=ctx.mask_edges,
                    edge_cut=ctx.edge_cut, edge_reach=reach, edge_pad=ctx.edge_pad)  # fmt: skip
    zogy_core(d, vd, vs, s_n, s_r, parts, b, y1 - y0, x1 - x0, ctx.sx2, ctx.sy2, ctx.e2,
              valid, y0, x0, f_d, f_s, out["difference"], out["difference_variance"],
              out["score"], out["flux"], out["flux_variance"])  # fmt: skip
    return ZogyTile(
        core=core, outer=(oy, oy + fy, ox, ox + fx), psf_d=psf_d, f_d=f_d, f_s=f_s,
        sigma_n=sigma_n, sigma_r=sigma_r, mask_radius=radius,
    )  # fmt: skip
