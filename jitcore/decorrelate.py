"""Decorrelation of a PSF-matched difference image (the Alard-Lupton "afterburner").

A PSF-matched difference D = A (x) S - B (x) T (A, B the kernels applied to the science S and
the template T: A = delta and B = the matching kernel kappa when the template is convolved)
has correlated noise, spectrum var_s |A^|^2 + var_t |B^|^2.  Multiplying its spectrum by

    phi^ = sqrt((var_s a^2 + var_t b^2) / (var_s |A^|^2 + var_t |B^|^2)),   a, b = sums of A, B

(Kaiser 2004; Reiss & Lupton, DMTN-021; LSST's DecorrelateALKernelTask: for A = delta this is
sqrt((s_sci^2 + s_tmpl^2 ksum^2) / (s_sci^2 + s_tmpl^2 |kappa^|^2))) makes it white with
variance var_s a^2 + var_t b^2, keeps fluxes (phi^(0) = 1), and gives it the PSF
psf_d = phi (x) A (x) P_sci / a.  The same form covers the other directions: convolving the
science (A = kappa / ksum, B = delta / ksum) and pre-convolving it with its own PSF
(A = P_sci, B = kappa).

Per tile (cores of ``tile_size``, transformed with a border as in jitcore.zogy) the kernels
and the background variances var_s, var_t (median of the variance planes) are those at the
tile centre, and the products are those of :class:`diffstream.jitcore.zogy.ZogyResult`:

    difference           D' = phi (x) D / a                                    (nJy)
    difference_variance  (phi A / a)^2 (x) V_s + (phi B / a)^2 (x) V_t          (nJy^2)
    score                N / sqrt(V_N),  N = D' (x) flip(psf_d)
                         V_N = (phi A flip(psf_d) / a)^2 (x) V_s + (... B ...)^2 (x) V_t
    flux                 N / sum(psf_d^2);  flux_variance = V_N / sum(psf_d^2)^2

With ``psf_error_fraction`` e > 0 (and the ``science`` image given), e^2 (N_s^2 + N_t^2) is
added to V_N, N_s = (phi A / a) (x) flip(psf_d) (x) S being the science's share of N and
N_t = N_s - N the template's: diffstream.jitcore.zogy's V_psf, here for a matching kernel that is
wrong by a fraction e (kernel model and spatial interpolation errors leave residuals at
static stars in proportion to their brightness; negligible on empty sky).

(Products of kernels are convolutions; squares are pixel-wise.)  The variances are the exact
propagation of independent pixel noise with the variance planes V_s, V_t, so they follow the
stars' own noise, unlike a white-noise approximation; on empty sky the score is the matched
filter of D' with its PSF, N(0, 1).  Unusable pixels enter as 0 in data and variance (see
diffstream.jitcore.zogy for why); ``valid`` is False within the footprint of the score kernels
(1% of their sum |k|) of an unusable pixel and, with ``mask_edges``, of the image edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from diffstream.jitcore import fft as frame_fft
from diffstream.jitcore._kernels.decorrelate import decorrelation_filter, decorrelation_products
from diffstream.jitcore._kernels.zogy import zogy_core
from diffstream.jitcore.psf import normalise_psf
from diffstream.jitcore.robust import median_noise
from diffstream.jitcore.tiles import (
    crop_centred,
    embed_centred,
    fill_core_valid,
    fill_frame,
    footprint_radius,
    frame_shape,
    overlap,
    run_tiles,
    stamp_spectra,
    thread_count,
    tile_cores,
)
from diffstream.jitcore.zogy import FOOTPRINT_TOL, PRECISIONS, ZogyResult, ZogyTile

__all__ = [
    "DECORRELATION_EPSILON",
    "decorrelate",
    "decorrelation_spectrum",
    "thread_count",
    "tile_products",
]

# phi^ = sqrt(num / (den + eps num)) is bounded by 1 / sqrt(eps) = 31.6.  With the template
# or the science convolved, den >= var_s a^2 (or var_t b^2), a large fraction of num, so eps
# changes phi^ by < 0.1%.  It matters only for a pre-convolved science, whose den ~ |P^|^2
# vanishes at high frequencies: unbounded (eps = 1e-10) phi was not compact and the cut
# kernels left the noise of D' 17% wider than its variance plane; 1e-4 gave 1.01, 1e-3 1.003
# (with a lag-1 correlation of 0.38 left: that direction's known limit, jitcore.alardlupton).
DECORRELATION_EPSILON = 1e-3


KernelsAt = Callable[[float, float], tuple[np.ndarray, np.ndarray, np.ndarray]]


def decorrelation_spectrum(
    a: np.ndarray,
    b: np.ndarray,
    var_science: float,
    var_template: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """phi^ on the rfft2 half plane of a ``shape`` frame for kernels ``a`` (science), ``b``.

    ``a``, ``b``: odd square stamps (a delta is ``np.ones((1, 1))``); variances > 0.
    """
    for name, v in (("var_science", var_science), ("var_template", var_template)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite and > 0, got {v}")
    for name, k in (("a", a), ("b", b)):
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
            raise ValueError(f"kernel {name} must be square with odd size, got shape {k.shape}")
        if k.shape[0] > min(shape):
            raise ValueError(f"kernel {name} of size {k.shape[0]} exceeds the frame {shape}")
    frame = np.empty(shape)
    embed_centred(np.asarray(a, dtype=np.float64), frame)
    ah = sfft.rfft2(frame)
    embed_centred(np.asarray(b, dtype=np.float64), frame)
    bh = sfft.rfft2(frame)
    num = var_science * float(a.sum()) ** 2 + var_template * float(b.sum()) ** 2
    out = np.empty(ah.shape)
    decorrelation_filter(ah, bh, var_science, var_template, num, DECORRELATION_EPSILON, out)
    return out


@dataclass
class _Ctx:
    diff: np.ndarray
    science: np.ndarray | None
    e2: float
    svar: np.ndarray
    tvar: np.ndarray
    good: np.ndarray
    border: int
    frame: tuple[int, int]
    mask_edges: str  # jitcore.tiles.EDGE_MODES: "all" or "none" here
    sigma_s: float
    sigma_t: float
    real: type = np.float64  # frame dtype (diffstream.jitcore.zogy.PRECISIONS)

    # The frame transforms are jitcore.fft's (ducc0, as ZOGY's: ~1.3x faster than scipy.fft
    # for the same transforms, equal to rounding; issue 17), one thread per transform so that
    # results do not depend on the thread count.
    def rfft(self, a: np.ndarray) -> np.ndarray:
        """rfft2 over the last two axes (a stack of frames is transformed frame by frame)."""
        return frame_fft.rfft2(a)

    def irfft(self, a: np.ndarray) -> np.ndarray:
        """irfft2 onto the frame; ``a`` is overwritten (jitcore.fft.irfft2)."""
        return frame_fft.irfft2(a, self.frame)


def _tile_kernels(ctx: _Ctx, a, b, p, var_s: float, var_t: float):
    """One tile's kernels as frame spectra, its psf_d, white variance and mask radius.

    Spectra: (phi / a0, conj(psf_d^), F[kA^2], F[kB^2], F[kA_s^2], F[kB_s^2], F[kA_s] or
    None) with kA = phi A / a0, kA_s = kA (x) flip(psf_d) and likewise for B.  They are made
    on a small grid of 4 border + 1 pixels, cut to the central (2 border + 1)^2 box and only
    then put on the frame: 7 frame FFTs per tile instead of 15.  That needs compact kernels,
    which DECORRELATION_EPSILON guarantees: with a pre-convolved science and no bound, phi^
    ~ 1 / |P^| grows by orders of magnitude towards high frequencies, and the cut phi left
    the decorrelated noise 17% wider than its variance plane.
    """
    m = sfft.next_fast_len(4 * ctx.border + 1, real=True)
    # Small-grid transforms batched, one call per step (as jitcore.zogy's _tile).
    small = np.empty((3, m, m))
    for k, stamp in enumerate((a, b, p)):
        embed_centred(stamp, small[k])
    ah, bh, ph = frame_fft.rfft2(small)
    a0 = float(a.sum())
    num = var_s * a0**2 + var_t * float(b.sum()) ** 2
    phi = np.empty(ah.shape)
    decorrelation_filter(ah, bh, var_s, var_t, num, DECORRELATION_EPSILON, phi)
    phi /= a0
    pa = phi * ah
    pb = phi * bh
    b_ = ctx.border
    pd_full = frame_fft.irfft2(pa * ph, (m, m))
    half_d = max(p.shape[0] // 2, footprint_radius([pd_full], b_, tol=1e-3))
    psf_d = crop_centred(pd_full, half_d)
    psf_d = psf_d / psf_d.sum()
    embed_centred(psf_d, small[0])
    pdc = np.conj(frame_fft.rfft2(small[0]))
    images = frame_fft.irfft2(np.stack([phi, pa, pb, pa * pdc, pb * pdc]), (m, m))
    radius = min(footprint_radius(list(images[3:]), b_, tol=FOOTPRINT_TOL), b_)

    # The stamps are compact: their frame spectra skip the zero rows (stamp_spectra, as
    # ZOGY's kernel squares), in the frame precision, all in one call.
    cut = [crop_centred(img, b_) for img in images]
    stamps = [cut[0], psf_d] + [c * c for c in cut[1:]]
    if ctx.e2 > 0:
        stamps.append(cut[3])
    spectra = stamp_spectra(stamps, ctx.frame, real=ctx.real)
    out = [spectra[0], np.conj(spectra[1]), *spectra[2:6]]
    out.append(spectra[6] if ctx.e2 > 0 else None)
    return tuple(out), psf_d, num / a0**2, radius


def tile_products(spec: np.ndarray, kspec: tuple) -> np.ndarray:
    """A tile's output spectra from its data spectra and its kernels' (:func:`_tile_kernels`).

    ``spec``: (3 or 4, fy, fx // 2 + 1) spectra of the difference, the science and template
    variances and, for the PSF-error term, the science; ``kspec``: (phi, conj(psf_d^),
    F[kA^2], F[kB^2], F[kA_s^2], F[kB_s^2], F[kA_s] or None), all of the dtype of ``spec``.
    Returns (4 or 5, ...) spectra: D' = X_D phi, N = D' conj(psf_d^), V_D, V_N and, with the
    science, N_s (jitcore._kernels.decorrelate.decorrelation_products, one pass).
    """
    if spec.ndim != 3 or spec.shape[0] not in (3, 4):
        raise ValueError(f"spec must be (3 or 4, fy, fx) spectra, got shape {spec.shape}")
    parts = spec.shape[0] == 4
    if parts != (kspec[6] is not None):
        raise ValueError("the science's spectrum and F[kA_s] come together (PSF-error term)")
    if spec.dtype not in (np.complex64, np.complex128):
        raise TypeError(f"spec must be complex64 or complex128, got {spec.dtype}")
    ks = [np.ascontiguousarray(k) for k in kspec if k is not None]
    for k in ks:
        if k.dtype != spec.dtype or k.shape != spec.shape[1:]:
            raise ValueError(f"kernel spectrum {k.dtype} {k.shape} != data {spec.dtype} "
                             f"{spec.shape[1:]}")  # fmt: skip
    x = [np.ascontiguousarray(spec[k]) for k in range(spec.shape[0])]
    out = np.empty((spec.shape[0] + 1, *spec.shape[1:]), spec.dtype)
    # Without the science its slots are filled by arrays the kernel does not read.
    xs, kas, ns = (x[3], ks[6], out[4]) if parts else (x[0], ks[0], out[3])
    decorrelation_products(x[0], x[1], x[2], xs, *ks[:6], kas, out[0], out[1], out[2],
                           out[3], ns, parts)  # fmt: skip
    return out


def _tile(ctx: _Ctx, core, kernels, out: dict[str, np.ndarray], valid: np.ndarray) -> ZogyTile:
    y0, y1, x0, x1 = core
    b = ctx.border
    fy, fx = ctx.frame
    oy, ox = y0 - b, x0 - b
    ny, nx = ctx.diff.shape
    wy0, wy1, wx0, wx1 = overlap((ny, nx), oy, ox, fy, fx)
    # Contiguous (as in jitcore.zogy): the frame fills then see one layout whatever the
    # tiling, so a warm-up on a one-tile image compiles what a real run needs.
    good = np.ascontiguousarray(ctx.good[wy0:wy1, wx0:wx1])
    sigma_s = median_noise(ctx.svar[wy0:wy1, wx0:wx1], good)
    sigma_t = median_noise(ctx.tvar[wy0:wy1, wx0:wx1], good)
    if math.isnan(sigma_s) or math.isnan(sigma_t) or not (sigma_s > 0 and sigma_t > 0):
        sigma_s, sigma_t = ctx.sigma_s, ctx.sigma_t
    a, bk, p = kernels
    kspec, psf_d, white, radius = _tile_kernels(ctx, a, bk, p, sigma_s**2, sigma_t**2)
    # The data frames transformed in one call (as jitcore.zogy's _tile); the science's
    # only when the PSF-error term needs its share N_s.
    planes = [ctx.diff, ctx.svar, ctx.tvar]
    if ctx.e2 > 0 and ctx.science is not None:
        planes.append(ctx.science)
    parts = len(planes) == 4
    frames: np.ndarray = np.empty((len(planes), *ctx.frame), ctx.real)
    for k, img in enumerate(planes):
        fill_frame(img, good, oy, ox, frames[k])
    spec = ctx.rfft(frames)
    del frames
    prods = tile_products(spec, kspec)
    del spec
    # irfft overwrites its input: each of the products is handed to it once.
    d, n, vd, vn = (ctx.irfft(prods[k]) for k in range(4))
    if parts:  # N_s, N_t = N_s - N apart: e^2 (N_s^2 + N_t^2)
        n_s = ctx.irfft(prods[4])
        n_t = n_s - n
    else:
        n_s = n_t = n
    fill_core_valid(ctx.good, valid, core, radius, mask_edges=ctx.mask_edges)
    sum_pd2 = float((psf_d * psf_d).sum())
    # ZOGY's core pass: its S_n, S_r and PSF-error term are N_s, N_t and this one (no
    # astrometric term: sx2 = sy2 = 0), over the whole C frames and outputs at offsets.
    # The finalize kernel over strided core views had argument layouts that changed with
    # the tiling (C for a one-tile image), so a warm-up did not compile a real run's.
    zogy_core(d, vd, vn, n_s, n_t, parts, b, y1 - y0, x1 - x0, 0.0, 0.0, ctx.e2, valid,
              y0, x0, 1.0, sum_pd2, out["difference"], out["difference_variance"],
              out["score"], out["flux"], out["flux_variance"])  # fmt: skip
    f_d = 1.0 / math.sqrt(white)
    return ZogyTile(
        core=core, outer=(oy, oy + fy, ox, ox + fx), psf_d=psf_d, f_d=f_d,
        f_s=f_d * f_d * sum_pd2, sigma_n=sigma_s, sigma_r=sigma_t, mask_radius=radius,
    )  # fmt: skip


_OUTPUTS = ("difference", "difference_variance", "score", "flux", "flux_variance")


def decorrelate(
    difference: np.ndarray,
    science_variance: np.ndarray,
    template_variance: np.ndarray,
    good: np.ndarray,
    kernels_at: KernelsAt,
    *,
    science: np.ndarray | None = None,
    psf_error_fraction: float = 0.0,
    tile_size: int = 256,
    border: int | None = None,
    workers: int | None = None,
    mask_edges: bool = True,
    precision: str = "double",
) -> ZogyResult:
    """Decorrelated difference, its variance, PSF, score and PSF flux (module docstring).

    ``difference`` = A (x) S - B (x) T on the science grid (nJy x sum(A)); the variances are
    those of S and T (nJy^2); ``good`` (bool) marks pixels usable in both.
    ``kernels_at(x, y)`` returns (A, B, P_sci) at a tile centre: odd square stamps, P_sci of
    unit sum, a delta as ``np.ones((1, 1))``.  ``science`` (nJy, the image A is applied
    to) is needed only for ``psf_error_fraction`` e in [0, 1).  ``border``: real pixels
    around each core in its FFT frame (default: A + B + 2 P_sci half-sizes, the reach of
    the score kernels).
    ``workers``: tile threads, scipy.fft convention.  ``precision``: "double" or "single",
    the float width of the frame FFTs (the kernels are built in double either way), as for
    diffstream.jitcore.zogy.zogy: single runs them ~2.5x faster, and its round-off is ~1e-7
    of a frame's brightest star (tests/unit/test_decorrelate.py::
    test_single_precision_matches_double).  Raises ValueError / TypeError.
    """
    diff = np.asarray(difference)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"difference must be a non-empty 2-D array, got shape {diff.shape}")
    for name, arr in (("science_variance", science_variance),
                      ("template_variance", template_variance), ("good", good)):  # fmt: skip
        if np.shape(arr) != diff.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} != difference shape {diff.shape}")
    good = np.asarray(good)
    if good.dtype != np.bool_:
        raise TypeError(f"good must be a bool array, got dtype {good.dtype}")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int | np.integer):
        raise TypeError(f"tile_size must be an int, got {type(tile_size).__name__}")
    if tile_size < 16:
        raise ValueError(f"tile_size must be >= 16, got {tile_size}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    e = float(psf_error_fraction)
    if not (math.isfinite(e) and 0.0 <= e < 1.0):
        raise ValueError(f"psf_error_fraction must be in [0, 1), got {psf_error_fraction}")
    if e > 0 and science is None:
        raise ValueError("psf_error_fraction > 0 needs the science image")
    if science is not None and np.shape(science) != diff.shape:
        raise ValueError(f"science shape {np.shape(science)} != difference shape {diff.shape}")
    svar = np.asarray(science_variance)
    tvar = np.asarray(template_variance)
    with np.errstate(invalid="ignore"):
        good = good & np.isfinite(diff) & np.isfinite(svar) & np.isfinite(tvar)
        good &= (svar >= 0) & (tvar >= 0)
    if not good.any():
        raise ValueError("no usable pixels: every pixel is bad or non-finite")

    cores = tile_cores(diff.shape, int(tile_size))
    kernels = []
    for y0, y1, x0, x1 in cores:
        xc, yc = 0.5 * (x0 + x1 - 1), 0.5 * (y0 + y1 - 1)
        a, b, p = kernels_at(xc, yc)
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        for name, k in (("A", a), ("B", b)):
            if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
                raise ValueError(f"kernel {name} must be square with odd size, got {k.shape}")
        if not a.sum() != 0:
            raise ValueError("kernel A must have a non-zero sum (it sets the flux scale)")
        kernels.append((a, b, normalise_psf(p)))
    reach = max(k[0].shape[0] // 2 + k[1].shape[0] // 2 + 2 * (k[2].shape[0] // 2) for k in kernels)
    if border is None:
        border = max(reach, 1)
    if isinstance(border, bool) or not isinstance(border, int | np.integer) or border < 1:
        raise ValueError(f"border must be an int >= 1 or None, got {border!r}")
    n_threads = thread_count(workers, len(cores))
    sigma_s = median_noise(svar, good)
    sigma_t = median_noise(tvar, good)
    if not (sigma_s > 0 and sigma_t > 0):
        raise ValueError(f"variance planes must be > 0 on good pixels, got medians "
                         f"{sigma_s**2:g}, {sigma_t**2:g}")  # fmt: skip
    ctx = _Ctx(
        diff=diff, science=None if science is None else np.asarray(science), e2=e * e,
        svar=svar, tvar=tvar, good=good, border=int(border),
        frame=frame_shape(cores, int(border)), mask_edges="all" if mask_edges else "none",
        sigma_s=sigma_s, sigma_t=sigma_t,
        real=PRECISIONS[precision][0],
    )  # fmt: skip
    out = {k: np.empty(diff.shape, np.float32) for k in _OUTPUTS}
    valid = np.empty(diff.shape, dtype=bool)

    def run(i: int) -> ZogyTile:
        return _tile(ctx, cores[i], kernels[i], out, valid)

    tiles = run_tiles(run, len(cores), n_threads)
    return ZogyResult(**out, valid=valid, tiles=tiles)
