"""Alard-Lupton PSF-matched subtraction (Alard & Lupton 1998; Alard 2000; LSST ip_diffim).

Inputs as for :func:`jitcore.zogy.zogy`: one pixel grid, background-subtracted, nJy.  Steps:

1. Direction (``mode``).  ``convolveTemplate``: fit kappa with S ~ kappa (x) T + bg, then
   D = S - kappa (x) T - bg.  ``convolveScience``: T ~ kappa (x) S + bg, then
   D = (kappa (x) S + bg - T) / ksum (the whole difference back on the science's flux
   scale; ip_diffim divides only the matched science).  ``auto`` (ip_diffim's auto mode):
   convolveTemplate when the template PSF is not wider than the science's, else
   convolveScience.  ``preconvolve`` (explicit only): S' = P_sci (x) S, each pixel with its
   own PSF, fit S' ~ kappa (x) T + bg, D = S' - kappa (x) T - bg (no deconvolution while
   sigma_t < sqrt(2) sigma_s, and the deep template stays the regressor).  Rejected as the
   ``auto`` choice for a sharper science: whitening a pre-convolved difference divides by
   |P_sci^|, which is tiny at high frequencies; with the filter bounded
   (diffstream.jitcore.decorrelate.DECORRELATION_EPSILON) its score is N(0, 1) and its detections as
   good as convolveScience's, but its difference keeps a lag-1 noise correlation of ~0.4,
   so PSF fits on it (psfFluxErr) assume independent pixels wrongly: pull std 1.47-1.87 on
   tests/science/test_al_science.py's pairs against 1.19 for convolveScience.  Unbounded,
   the filter is not compact and the variance plane was 17% off.
2. Basis and kernel box from the PSF widths at the image centre (diffstream.jitcore.albasis).
3. Kernel stars (diffstream.jitcore.alstars): S/N 10-500, isolated, on good pixels, <= 5 per 128 px
   cell, <= 1000 in all.
4. Per-stamp normal equations (Numba, jitcore._kernels.alardlupton), each stamp with its own
   constant background and inverse-variance weights 1 / (V_target + g V_ref), g = sum of the
   squared Gaussian of the kernel width (the convolved image's noise, scaled as kappa scales
   it).  Rejection (ip_diffim's visitors): single-kernel fits per stamp, then kernel-sum
   clipping (KSUM_SIGMA robust sigmas, up to MAX_ITER times); then the spatial fit
   (kernel-shape terms of ``spatial_order``, a constant kernel sum, a background polynomial
   of ``background_order``) and rejection of stamps whose normalised residuals have a std
   or mean beyond the larger of ip_diffim's limits (1.5, 0.25) and RESID_SIGMA robust sigmas
   of the other stamps, refitting up to MAX_ITER times.  The relative limit keeps a uniformly
   imperfect basis from rejecting every star; the absolute one keeps a few bad stamps from
   widening the distribution they are judged against.
5. Errors in variables.  Least squares treats the convolved image as noiseless; its noise
   shrinks the kernel.  With the science as the convolved image the kernel sum came out
   ~1.1% low, and S/N ~400 stars left 5-8 sigma residuals (3.8 detections per Mpix of pure
   noise).  The spatial fit therefore subtracts the expected noise term from the normal
   matrix (:func:`fit_kernel`), keeping only well-determined eigen-directions (EIG_TOL).
6. Apply the spatially varying kernel exactly (jitcore.albasis), subtract, decorrelate per
   tile (diffstream.jitcore.decorrelate), which also gives the score and the PSF flux, with the
   ``psf_error_fraction`` term for imperfect cancellation of bright stars.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import fft as sfft

from diffstream.jitcore import fft as frame_fft
from diffstream.jitcore._kernels.alardlupton import (
    expand_spatial,
    stamp_normal_equations,
)
from diffstream.jitcore._kernels.planes import usable_pair_zeroed
from diffstream.jitcore.albasis import (
    SpatialKernel,
    al_basis,
    basis_sigmas,
    convolve_psf_model,
    convolve_spatial,
    convolve_spatial_variance,
    kernel_size_for,
    monomials,
)
from diffstream.jitcore.alstars import select_kernel_stars
from diffstream.jitcore.constants import FWHM_PER_SIGMA
from diffstream.jitcore.decorrelate import decorrelate
from diffstream.jitcore.planes import native_float
from diffstream.jitcore.psf import normalise_psf, psf_sigma
from diffstream.jitcore.robust import median_iqr
from diffstream.jitcore.tiles import thread_count
from diffstream.jitcore.zogy import PRECISIONS, ZogyResult

__all__ = ["ALInfo", "MODES", "al_subtract", "fit_kernel", "stamp_systems"]

MODES = ("auto", "convolveTemplate", "convolveScience", "preconvolve")
DEGREES = (4, 2, 2)  # ip_diffim alardDegGauss
SNR_RANGE = (10.0, 500.0)
PER_CELL = 5
MAX_ITER = 3  # ip_diffim maxSpatialIterations
KSUM_SIGMA = 3.0  # ip_diffim maxKsumSigma
RESID_STD_MAX = 1.5  # ip_diffim candidateResidualStdMax
RESID_MEAN_MAX = 0.25  # ip_diffim candidateResidualMeanMax
RESID_SIGMA = 3.0
# Eigenvalues of the (Jacobi-scaled) corrected global normal matrix below EIG_TOL x the
# largest are dropped: those directions (high-order shape terms the stars' light barely
# constrains) are noise once the regressors' noise is subtracted, and an unbounded solve there
# gave kernels with median stamp residual std 1.4-2.0 instead of 1.0 on the simulated pairs
# (1e-4: 1.03, 1e-3: 1.01, 1e-2: 1.02 on the worst of them).
EIG_TOL = 1e-3
_CHUNK = 64  # stamps convolved at once (memory: CHUNK x nbasis x stamp^2 doubles)
_BAND = 256  # rows per band of the background polynomial (bounded temporaries)


@dataclass
class ALInfo:
    """What the PSF matching found, besides the decorrelated difference.

    ``matched`` is the PSF-matched image (ip_diffim's matchedExposure): kappa (x) T for
    convolveTemplate and preconvolve, kappa (x) S / ksum for convolveScience; float32, nJy,
    with ``matched_variance`` (nJy^2, NaN on unusable pixels), which is computed on first
    access: only the matched.fits product reads it, and at 4k its spatially varying
    convolution with the squared kernel (six monomials for order 1) was 16% of an AL run
    (issue 17).  Until then the info holds the reference variance plane and the good-pixel
    mask.  ``kernel`` is the spatial model; ``kernel_at(x, y)``
    the kernel stamp at a pixel.  ``background_coeffs``: the differential background
    polynomial (order ``background_order``, diffstream.jitcore.albasis monomials over the image),
    in the fitted target's units, subtracted from the target.
    """

    matched: np.ndarray
    kernel: SpatialKernel
    kernel_sum: float
    direction: str
    n_stars_used: int
    n_stars_found: int
    residual_rms: float
    basis_sigmas: tuple[float, ...]
    kernel_size: int
    background_coeffs: np.ndarray
    background_order: int
    spatial_order: int
    # Where the kernel-star candidates came from: "catalogue" (``science_sources``) or
    # "detection" (diffstream.jitcore.alstars' own pass).
    star_candidates: str = "detection"
    # Wall seconds of al_subtract's stages (prepare, selectStars, stampSystems, fitKernel,
    # convolve, decorrelate), for the pipeline's metadata and bench_al.py.
    stage_times: dict[str, float] = field(default_factory=dict)
    # Makes matched_variance on first access (then dropped, with what it holds).
    variance_of_matched: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _matched_variance: np.ndarray | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def matched_variance(self) -> np.ndarray:
        """Variance of ``matched`` (nJy^2, float32; see the class docstring)."""
        with self._lock:  # products may be written from several threads
            if self._matched_variance is None:
                if self.variance_of_matched is None:
                    raise ValueError("this ALInfo has no matched variance")
                self._matched_variance = self.variance_of_matched()
                self.variance_of_matched = None
            return self._matched_variance

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        return self.kernel.at(x, y)


@dataclass
class StampSystems:
    """Per-stamp normal equations and residual sums (see :func:`stamp_systems`)."""

    q: np.ndarray
    b: np.ndarray
    sw: np.ndarray
    stats: np.ndarray
    noise: np.ndarray


def _sigma(psf: Any, x: float, y: float) -> float:
    return psf_sigma(normalise_psf(psf.at(x, y)), 1e-12)


def stamp_systems(
    ref: np.ndarray,
    ref_variance: np.ndarray,
    target: np.ndarray,
    target_variance: np.ndarray,
    good: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    basis: np.ndarray,
    stamp_half: int,
    *,
    ref_gain: float = 1.0,
    workers: int | None = None,
) -> StampSystems:
    """Per-stamp normal equations for the kernel fit (:class:`StampSystems`, float64).

    Regressors: ``ref`` convolved with each basis stamp, plus a constant (the stamp's
    background), on the (2 stamp_half + 1)^2 stamp of ``target`` centred on each (x, y).
    Weights 1 / (target_variance + ref_gain ref_variance), 0 off ``good``.  Shapes:
    Q (n, nb + 1, nb + 1), b, sw (n, nb + 1), stats (n, 3) as in
    jitcore._kernels.alardlupton.stamp_normal_equations, and noise (n,) = sum w V_ref over
    the stamp (for the errors-in-variables correction).  Stamps plus the kernel half-size
    must lie inside the image (the caller's selection guarantees it).  ``workers``: threads
    over chunks of stamps (scipy.fft convention; the FFTs and the kernel release the GIL).
    """
    nb, ks = basis.shape[0], basis.shape[1]
    kh, hs = ks // 2, int(stamp_half)
    n = len(xs)
    npar = nb + 1
    h = 2 * hs + 1
    q = np.empty((n, npar, npar))
    b = np.empty((n, npar))
    sw = np.empty((n, npar))
    stats = np.empty((n, 3))
    noise = np.empty(n)
    r = hs + kh
    # The basis convolutions of a stamp are its valid part of a circular convolution on a
    # frame of at least the cutout's 2 r + 1 pixels (a valid output reaches only cutout
    # pixels, so nothing wraps), with the basis spectra made once for all stamps.
    # scipy.signal.fftconvolve padded each chunk to 2 r + ks - 1, re-transformed the basis
    # per chunk and cost 7x more (4.1 s of a 4k run's 1000 stamps on one thread, issue 17).
    # float32 transforms: 3.5x faster than float64 for these small stamps, and their
    # rounding (1e-7 of a stamp's brightest pixel) is far below its noise; the sums are
    # accumulated in float64 by the kernel.
    f = sfft.next_fast_len(2 * r + 1, real=True)
    padded = np.zeros((nb, f, f), np.float32)
    padded[:, :ks, :ks] = basis
    # jitcore.fft (ducc0): the same transforms as scipy.fft's to rounding, and faster (as for
    # ZOGY's frames); its irfft2 may overwrite ``prod``, which each stamp refills.
    bspec = frame_fft.rfft2(padded)
    del padded

    def chunk(start: int) -> None:
        sel = range(start, min(n, start + _CHUNK))
        cuts = np.zeros((len(sel), f, f), np.float32)
        for j, i in enumerate(sel):
            cuts[j, : 2 * r + 1, : 2 * r + 1] = ref[ys[i] - r : ys[i] + r + 1,
                                                    xs[i] - r : xs[i] + r + 1]  # fmt: skip
        cspec = frame_fft.rfft2(cuts)
        planes = np.empty((npar, h, h), np.float32)
        planes[nb] = 1.0
        prod = np.empty((nb, *cspec.shape[1:]), cspec.dtype)
        for j, i in enumerate(sel):
            np.multiply(bspec, cspec[j], out=prod)
            planes[:nb] = frame_fft.irfft2(prod, (f, f))[:, 2 * kh : 2 * r + 1, 2 * kh : 2 * r + 1]
            win = (slice(ys[i] - hs, ys[i] + hs + 1), slice(xs[i] - hs, xs[i] + hs + 1))
            v = target_variance[win].astype(np.float64) + ref_gain * ref_variance[win]
            with np.errstate(divide="ignore", invalid="ignore"):
                w = np.where(good[win] & (v > 0), 1.0 / v, 0.0)
            t = np.ascontiguousarray(target[win], dtype=np.float32)
            stamp_normal_equations(planes, t, w.astype(np.float32), q[i], b[i], sw[i], stats[i])
            noise[i] = float((w * ref_variance[win]).sum())

    starts = list(range(0, n, _CHUNK))
    n_threads = thread_count(workers, len(starts))
    if n_threads == 1:
        for start in starts:
            chunk(start)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(chunk, starts))
    return StampSystems(q, b, sw, stats, noise)


def _solve_stack(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least-squares solutions of q[i] x = b[i] (symmetric q, Jacobi-scaled; pseudo-inverse
    where singular), for a stack of systems in one batched eigh.

    The pseudo-inverse is that of lstsq with rcond=1e-12: for a symmetric matrix the
    singular values are the |eigenvalues|, and those <= 1e-12 x the largest are dropped.
    One lstsq call per stamp cost 0.1 s for 1000 stamps (issue 17); this is half of that,
    equal to ~1e-15 of the solution (tests/unit/test_alardlupton.py).
    """
    d = np.sqrt(np.clip(np.einsum("nii->ni", q), 0.0, None))
    d = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    w, v = np.linalg.eigh(q * d[:, :, None] * d[:, None, :])
    aw = np.abs(w)
    keep = aw > 1e-12 * aw.max(axis=1, keepdims=True)
    inv = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    x = np.einsum("nij,nj->ni", v, inv * np.einsum("nji,nj->ni", v, b * d))
    return x * d


def _solve_eig(q: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Solution of q x = b (Jacobi-scaled) on the eigen-directions with eigenvalue > tol max."""
    d = np.sqrt(np.clip(np.diag(q), 0.0, None))
    d = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    w, v = np.linalg.eigh(q * d[:, None] * d[None, :])
    keep = w > tol * w.max()
    x = v[:, keep] @ ((v[:, keep].T @ (b * d)) / w[keep])
    return x * d


def _residuals(p, q, b, sw, stats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-stamp (mean, std, chi2) of sqrt(w) (t - p.c) from the normal equations."""
    chi2 = stats[:, 0] - 2.0 * np.einsum("ni,ni->n", p, b) + np.einsum("ni,nij,nj->n", p, q, p)
    npix = np.maximum(stats[:, 2], 1.0)
    mean = (stats[:, 1] - np.einsum("ni,ni->n", p, sw)) / npix
    std = np.sqrt(np.clip(chi2 / npix - mean * mean, 0.0, None))
    return mean, std, chi2


def _spatial_maps(xs, ys, nb: int, korder: int, border: int, shape):
    """idx, coef (n, nb + 1, m): stamp parameter k = sum_a coef[k, a] theta[idx[k, a]]."""
    tk, tb = monomials(korder), monomials(border)
    ntk, ntb = len(tk), len(tb)
    m = max(ntk, ntb)
    n = len(xs)
    idx = np.zeros((n, nb + 1, m), dtype=np.int64)
    coef = np.zeros((n, nb + 1, m))
    sy, sx = 2.0 / max(shape[0] - 1, 1), 2.0 / max(shape[1] - 1, 1)
    u = np.asarray(xs, dtype=np.float64) * sx - 1.0
    v = np.asarray(ys, dtype=np.float64) * sy - 1.0
    mk = np.stack([u**px * v**py for px, py in tk], axis=1)
    mb = np.stack([u**px * v**py for px, py in tb], axis=1)
    coef[:, 0, 0] = 1.0  # the kernel sum: one constant for the whole image
    for k in range(1, nb):
        idx[:, k, :ntk] = 1 + (k - 1) * ntk + np.arange(ntk)
        coef[:, k, :ntk] = mk
    idx[:, nb, :ntb] = 1 + (nb - 1) * ntk + np.arange(ntb)
    coef[:, nb, :ntb] = mb
    return idx, coef, 1 + (nb - 1) * ntk + ntb


@dataclass
class KernelFit:
    kernel: SpatialKernel
    background_coeffs: np.ndarray
    used: np.ndarray  # bool per candidate
    residual_rms: float


def fit_kernel(
    systems: StampSystems,
    xs: np.ndarray,
    ys: np.ndarray,
    basis: np.ndarray,
    shape: tuple[int, int],
    *,
    spatial_order: int = 1,
    background_order: int = 1,
    min_stars: int = 3,
) -> KernelFit:
    """Spatial kernel + background from :func:`stamp_systems`, with outlier rejection.

    Raises ValueError when fewer than ``min_stars`` stamps survive the rejection.
    """
    # Every LAPACK call here is small (28^2 per stamp, ~82^2 for the spatial system), and
    # OpenBLAS's own threads only wait on each other for those: with another process on
    # the core, one 82^2 eigh took 230-270 ms on 2 threads and 1.5 ms on one (issue 17).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _fit_kernel(
            systems, xs, ys, basis, shape, spatial_order=spatial_order,
            background_order=background_order, min_stars=min_stars,
        )  # fmt: skip


def _fit_kernel(
    systems: StampSystems,
    xs: np.ndarray,
    ys: np.ndarray,
    basis: np.ndarray,
    shape: tuple[int, int],
    *,
    spatial_order: int,
    background_order: int,
    min_stars: int,
) -> KernelFit:
    q, b, sw, stats = systems.q, systems.b, systems.sw, systems.stats
    n, nb = len(xs), basis.shape[0]
    # Errors in variables: the convolved image's own noise adds, on average,
    # sum_pix w V_ref <B_k, B_l> to Q[k, l] (the regressors' noise variance) and nothing to b,
    # which shrinks the kernel (its sum by ~1% when the science is the convolved image, so
    # S/N 400 stars left 5-8 sigma residuals).  Subtracting the expectation makes the fit
    # consistent ("corrected least squares"); the residual statistics keep the raw Q, since
    # the actual residuals do contain that noise.
    gram = np.zeros((nb + 1, nb + 1))
    gram[:nb, :nb] = np.tensordot(basis, basis, axes=([1, 2], [1, 2]))
    qc = q - systems.noise[:, None, None] * gram[None]
    # Screening uses the raw Q: per stamp the corrected one is noisy (often indefinite for
    # faint stars), and the shrinkage it removes is common to all stamps of one S/N, so
    # kernel-sum outliers (variables) stand out as well.
    single = _solve_stack(q, b)
    ksum = single[:, 0] * basis[0].sum()
    _, std1, _ = _residuals(single, q, b, sw, stats)
    use = np.isfinite(ksum) & np.isfinite(std1) & (stats[:, 2] > nb + 1)
    for _ in range(MAX_ITER):
        if use.sum() < 3:
            break
        med, sig = median_iqr(ksum[use])
        new = use & (np.abs(ksum - med) <= KSUM_SIGMA * sig) if sig > 0 else use
        if new.sum() == use.sum():
            break
        use = new
    idx, coef, ntheta = _spatial_maps(xs, ys, nb, spatial_order, background_order, shape)
    for it in range(MAX_ITER + 1):
        if use.sum() < min_stars:
            raise ValueError(
                f"Alard-Lupton needs at least {min_stars} kernel stars after outlier "
                f"rejection, {int(use.sum())} of {n} found remain"
            )
        qg = np.zeros((ntheta, ntheta))
        bg = np.zeros(ntheta)
        for i in np.flatnonzero(use):
            expand_spatial(qc[i], b[i], idx[i], coef[i], qg, bg)
        theta = _solve_eig(qg, bg, EIG_TOL)
        p = (coef * theta[idx]).sum(axis=2)
        mean, std, chi2 = _residuals(p, q, b, sw, stats)
        if it == MAX_ITER:
            break
        m_std, s_std = median_iqr(std[use])
        m_mean, s_mean = median_iqr(mean[use])
        std_lim = max(RESID_STD_MAX, m_std + RESID_SIGMA * s_std)
        mean_lim = max(RESID_MEAN_MAX, abs(m_mean) + RESID_SIGMA * s_mean)
        reject = use & ((std > std_lim) | (np.abs(mean) > mean_lim) | ~np.isfinite(std))
        if not reject.any():
            break
        use = use & ~reject
    ntk = len(monomials(spatial_order))
    coeffs = np.zeros((nb, ntk))
    coeffs[0, 0] = theta[0]
    coeffs[1:] = theta[1 : 1 + (nb - 1) * ntk].reshape(nb - 1, ntk)
    rms = float(np.sqrt(max(chi2[use].sum(), 0.0) / max(stats[use, 2].sum(), 1.0)))
    kernel = SpatialKernel(basis=basis, coeffs=coeffs, order=spatial_order, shape=shape)
    return KernelFit(kernel, theta[1 + (nb - 1) * ntk :].copy(), use, rms)


def _add_background(
    out: np.ndarray, coeffs: np.ndarray, order: int, scale: float = 1.0
) -> np.ndarray:
    """out += scale x the background polynomial on the image grid (in place; returns out).

    Separable: sum_{px,py} c u^px v^py = sum_py v^py r_py(u), one row polynomial per power
    of v, added in bands of rows: no full-image temporaries.  Through a plane of ones and a
    zero image per monomial it cost 0.8-2 s of a busy 4k run (issue 17).
    """
    ny, nx = out.shape
    u = np.arange(nx) * (2.0 / max(nx - 1, 1)) - 1.0
    v = np.arange(ny) * (2.0 / max(ny - 1, 1)) - 1.0
    rows = np.zeros((order + 1, nx))
    for c, (px, py) in zip(coeffs, monomials(order), strict=True):
        rows[py] += scale * float(c) * u**px
    out += rows[0]
    for y0 in range(0, ny, _BAND):
        band = out[y0 : y0 + _BAND]
        for py in range(1, order + 1):
            band += np.multiply.outer(v[y0 : y0 + _BAND] ** py, rows[py])
    return out


def _background(coeffs: np.ndarray, order: int, shape: tuple[int, int]) -> np.ndarray:
    """The background polynomial on the image grid (float64)."""
    return _add_background(np.zeros(shape), coeffs, order)


def _int_arg(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def _check_image(name: str, arr: Any, shape=None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got ndim={a.ndim}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} shape {a.shape} != science shape {shape}")
    return a


def resolve_mode(mode: str, sigma_science: float, sigma_template: float) -> str:
    """The direction ``auto`` stands for, given the PSF sigmas (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "convolveTemplate" if sigma_template <= sigma_science else "convolveScience"


def al_subtract(
    science: np.ndarray,
    science_variance: np.ndarray,
    template: np.ndarray,
    template_variance: np.ndarray,
    bad: np.ndarray,
    psf_science: Any,
    psf_template: Any,
    *,
    mode: str = "auto",
    spatial_order: int = 1,
    background_order: int = 1,
    kernel_size: int | None = None,
    stamp_cell: int = 128,
    min_stars: int = 3,
    tile_size: int = 256,
    psf_error_fraction: float = 0.0,
    workers: int | None = None,
    precision: str = "double",
    science_sources: np.ndarray | None = None,
) -> tuple[ZogyResult, ALInfo]:
    """Alard-Lupton subtraction of ``template`` from ``science`` (module docstring).

    Images in nJy, variances in nJy^2, one shape; ``bad`` (bool) marks pixels unusable in
    either.  ``psf_science`` / ``psf_template``: objects with ``.at(x, y)`` (unit-sum odd
    stamps; diffstream.jitcore.psf.PsfModel, whose spatial model is used exactly for preconvolve).
    ``kernel_size``: odd, >= 3 (default from the PSFs).  ``stamp_cell``: the star-selection
    cell (px).  ``tile_size``: decorrelation tile core (px).  ``psf_error_fraction``: e of
    the score's e^2 (N_s^2 + N_t^2) term (jitcore.decorrelate; the pipeline's setting, 0.01,
    suits AL as it suits ZOGY).  ``workers``: threads (scipy.fft convention; None: 1, -1: all
    cores) for the whole-image convolutions, the stamps and the decorrelation tiles.
    ``precision``: the decorrelation's frame FFTs, "double" or "single" (jitcore.decorrelate;
    the pipeline passes its ``zogy_precision``, single by default).
    ``science_sources``: a catalogue of the science's sources (fields ``x``, ``y``, ``flux``;
    the pipeline's jitcore.sources.find_stars one) for the kernel-star selection instead of
    its own detection pass when enough stars come from it (diffstream.jitcore.alstars;
    the pass was 0.5 s at 4k, issue 17); ``ALInfo.star_candidates`` says which served.
    Returns the decorrelated difference as a :class:`diffstream.jitcore.zogy.ZogyResult` and an
    :class:`ALInfo`.  Raises ValueError (with the counts) when fewer than ``min_stars``
    kernel stars are found or survive rejection, and ValueError / TypeError on bad input.
    """
    sci = _check_image("science", science)
    shape = sci.shape
    svar = _check_image("science_variance", science_variance, shape)
    tmpl = _check_image("template", template, shape)
    tvar = _check_image("template_variance", template_variance, shape)
    bad_arr = np.asarray(bad)
    if bad_arr.shape != shape:
        raise ValueError(f"bad shape {bad_arr.shape} != science shape {shape}")
    if bad_arr.dtype != np.bool_:
        raise TypeError(f"bad must be a bool array, got dtype {bad_arr.dtype}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spatial_order = _int_arg("spatial_order", spatial_order, 0)
    background_order = _int_arg("background_order", background_order, 0)
    stamp_cell = _int_arg("stamp_cell", stamp_cell, 16)
    min_stars = _int_arg("min_stars", min_stars, 1)
    if kernel_size is not None:
        kernel_size = _int_arg("kernel_size", kernel_size, 3)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    e = float(psf_error_fraction)
    if not (math.isfinite(e) and 0.0 <= e < 1.0):
        raise ValueError(f"psf_error_fraction must be in [0, 1), got {psf_error_fraction}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'double' or 'single', got {precision!r}")
    for name, p in (("psf_science", psf_science), ("psf_template", psf_template)):
        if not callable(getattr(p, "at", None)):
            raise TypeError(f"{name} must have an .at(x, y) method, got {type(p).__name__}")
    if min(shape) < 32:
        raise ValueError(f"images must be at least 32 x 32 pixels, got shape {shape}")

    times: dict[str, float] = {}
    t_last = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t_last
        now = time.perf_counter()
        times[stage] = now - t_last
        t_last = now

    # The usable pixels and the planes with 0 elsewhere in one fused pass (ZOGY's test,
    # jitcore.zogy, plus the copies): the NumPy chain was ten full-frame passes at 4k.
    planes = [native_float(a) for a in (sci, tmpl, svar, tvar)]
    good = np.empty(shape, dtype=bool)
    s_img, t_img, s_var, t_var = (np.empty(shape, a.dtype) for a in planes)
    usable_pair_zeroed(np.ascontiguousarray(bad_arr), *planes, good, s_img, t_img, s_var, t_var)
    del planes
    if not good.any():
        raise ValueError("no usable pixels: every pixel is bad or non-finite")

    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    sig_s, sig_t = _sigma(psf_science, cx, cy), _sigma(psf_template, cx, cy)
    direction = resolve_mode(mode, sig_s, sig_t)
    if direction == "convolveScience":
        ref, ref_var, target, target_var = s_img, s_var, t_img, t_var
        sig_from, sig_to = sig_s, sig_t
    else:
        ref, ref_var, target, target_var = t_img, t_var, s_img, s_var
        sig_from, sig_to = sig_t, sig_s
    if direction == "preconvolve":
        target = convolve_psf_model(s_img, psf_science, workers=workers)
        p_c = normalise_psf(psf_science.at(cx, cy))
        target_var = s_var * float((p_c * p_c).sum())
        sig_to = math.sqrt(2.0) * sig_s
    sigmas = basis_sigmas(sig_from, sig_to)
    ks = kernel_size if kernel_size is not None else kernel_size_for(sigmas)
    basis = al_basis(sigmas, DEGREES, ks)
    sig_k = max(math.sqrt(abs(sig_to**2 - sig_from**2)), 0.5)
    ref_gain = min(1.0, 1.0 / (4.0 * math.pi * sig_k**2))

    fwhm = FWHM_PER_SIGMA * max(sig_s, sig_t)
    stamp_half = ks // 2 + max(int(math.ceil(1.5 * fwhm)), 3)
    lap("prepare")
    stars = select_kernel_stars(
        s_img, s_var, t_img, t_var, ~good, fwhm=fwhm, stamp_half=stamp_half, margin=ks // 2,
        snr_range=SNR_RANGE, cell=stamp_cell, per_cell=PER_CELL, detections=science_sources,
    )  # fmt: skip
    n_found = len(stars.x)
    if n_found < min_stars:
        raise ValueError(
            f"Alard-Lupton needs at least {min_stars} kernel stars, found {n_found} "
            f"(S/N {SNR_RANGE[0]:g}-{SNR_RANGE[1]:g}, isolated, on good pixels; "
            f"{stars.n_detected} detections)"
        )
    lap("selectStars")
    systems = stamp_systems(
        ref, ref_var, target, target_var, good, stars.x, stars.y, basis, stamp_half,
        ref_gain=ref_gain, workers=workers,
    )  # fmt: skip
    lap("stampSystems")
    fit = fit_kernel(
        systems, stars.x, stars.y, basis, shape, spatial_order=spatial_order,
        background_order=background_order, min_stars=min_stars,
    )  # fmt: skip
    kernel = fit.kernel
    ksum = kernel.kernel_sum
    if not (math.isfinite(ksum) and ksum > 0):
        raise ValueError(f"fitted kernel sum must be finite and > 0, got {ksum:g}")
    lap("fitKernel")
    matched = convolve_spatial(ref, kernel, workers=workers)
    lap("convolve")
    delta = np.ones((1, 1))
    # In-place arithmetic: each full-image temporary of a 4k frame is 128 MB of fresh pages.
    if direction == "convolveScience":
        diff = _add_background(matched - t_img, fit.background_coeffs, background_order)
        diff /= ksum
        matched /= ksum

        def kernels_at(x: float, y: float):
            return kernel.at(x, y) / ksum, delta / ksum, psf_science.at(x, y)
    else:
        diff = _add_background(target - matched, fit.background_coeffs, background_order, -1.0)
        pre = direction == "preconvolve"

        def kernels_at(x: float, y: float):
            p = psf_science.at(x, y)
            return (p if pre else delta), kernel.at(x, y), p

    matched32 = matched.astype(np.float32)
    del matched
    matched32[~good] = 0.0
    var_scale = 1.0 / (ksum * ksum) if direction == "convolveScience" else 1.0

    def matched_variance() -> np.ndarray:
        var = convolve_spatial_variance(ref_var, kernel, workers=workers)
        var *= var_scale
        var32 = var.astype(np.float32)
        del var
        var32[~good] = np.nan
        return var32

    result = decorrelate(
        diff, s_var, t_var, good, kernels_at, science=s_img,
        psf_error_fraction=psf_error_fraction, tile_size=tile_size, workers=workers,
        precision=precision,
    )  # fmt: skip
    lap("decorrelate")
    info = ALInfo(
        matched=matched32,
        kernel=kernel, kernel_sum=ksum, direction=direction,
        n_stars_used=int(fit.used.sum()), n_stars_found=n_found,
        residual_rms=fit.residual_rms, basis_sigmas=tuple(float(s) for s in sigmas),
        kernel_size=int(ks), background_coeffs=fit.background_coeffs,
        background_order=background_order, spatial_order=spatial_order,
        star_candidates=stars.source, stage_times=times,
        variance_of_matched=matched_variance,
    )  # fmt: skip
    return result, info
