"""Alard-Lupton kernel basis, the spatially varying matching kernel, and how it is applied.

Basis (Alard & Lupton 1998; LSST ip_diffim's ``generateAlardLuptonBasisList`` defaults):
Gaussians of ``n_gauss`` widths, each multiplied by the monomials u^i v^j (i + j <= its
degree; u, v run over [-1, 1] edge to edge of the kernel box).  The widths follow the PSFs:
the central one is the Gaussian that turns the sharper PSF into the broader one,
sigma_K = sqrt(sigma_to^2 - sigma_from^2) (at least ``min_sigma``), the first is
max(min_sigma, sigma_K / beta) and each next one beta times the previous.  The kernel box is
``scaling`` times the largest width, made odd and clamped to [min_size, max_size].

The first basis function is normalised to unit sum and every other one has the first
subtracted to make its sum 0 (ip_diffim's renormalisation), so the kernel sum is the first
coefficient alone: it is kept spatially constant (one photometric scale per exposure) while
the shape terms vary.  The zero-sum functions are then orthonormalised (QR): the span is
unchanged but Gaussians times polynomials are nearly collinear (condition numbers ~1e10 for
the raw 3 x (4, 2, 2) set) and the orthonormal set keeps the normal equations well posed.

Spatial variation: kernel(x, y) = sum_k c_k(x, y) basis_k with c_k a polynomial of total
degree ``order`` in u = 2x / (nx - 1) - 1, v = 2y / (ny - 1) - 1 (jitcore.psf's convention;
monomials ordered 1, u, v, u^2, u v, v^2, ...).  Gathering the monomials,
kernel(x, y) = sum_s m_s(u, v) K_s, so the image is convolved once with each K_s (scipy.fft)
and the results combined pixel by pixel with the monomials (Numba): the output at every
pixel is the convolution with the kernel *evaluated at that pixel*, exactly, for the cost of
(order + 1)(order + 2) / 2 convolutions.  The variance of the result needs the square of
the kernel, a polynomial of twice the order in the same monomials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffstream.jitcore import fft as frame_fft
from diffstream.jitcore._kernels.alardlupton import poly_accumulate
from diffstream.jitcore.psf import normalise_psf
from diffstream.jitcore.tiles import (
    frame_shape,
    overlap,
    run_tiles,
    stamp_spectrum,
    thread_count,
    tile_cores,
)

__all__ = [
    "SIGMA_TO_FWHM",
    "SpatialKernel",
    "al_basis",
    "basis_sigmas",
    "convolve_many",
    "convolve_psf_model",
    "convolve_spatial",
    "convolve_spatial_variance",
    "kernel_size_for",
    "monomials",
]

SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def basis_sigmas(
    sigma_from: float,
    sigma_to: float,
    *,
    n_gauss: int = 3,
    beta: float = 2.0,
    min_sigma: float = 0.7,
    min_sigma_deconv: float = 0.4,
) -> tuple[float, ...]:
    """Gaussian widths (px) of the basis matching a PSF of ``sigma_from`` to ``sigma_to``.

    ``sigma_to < sigma_from`` asks for a deconvolution; like ip_diffim the roles are swapped
    and the smaller ``min_sigma_deconv`` floor is used (the automatic mode never asks for it).
    """
    for name, v in (("sigma_from", sigma_from), ("sigma_to", sigma_to), ("beta", beta),
                    ("min_sigma", min_sigma), ("min_sigma_deconv", min_sigma_deconv)):  # fmt: skip
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite and > 0, got {v}")
    if isinstance(n_gauss, bool) or not isinstance(n_gauss, int) or n_gauss < 1:
        raise ValueError(f"n_gauss must be an int >= 1, got {n_gauss!r}")
    lo, hi, floor = sigma_from, sigma_to, min_sigma
    if sigma_to < sigma_from:
        lo, hi, floor = sigma_to, sigma_from, min_sigma_deconv
    k = max(math.sqrt(hi * hi - lo * lo), floor)
    first = max(floor, k / beta) if n_gauss > 1 else k
    return tuple(first * beta**i for i in range(n_gauss))


def kernel_size_for(
    sigmas: tuple[float, ...], *, scaling: float = 6.0, min_size: int = 21, max_size: int = 35
) -> int:
    """Odd kernel box: ``scaling`` x the largest width, clamped to [min_size, max_size]."""
    if not sigmas:
        raise ValueError("sigmas must not be empty")
    if min_size % 2 == 0 or max_size % 2 == 0 or min_size > max_size or min_size < 3:
        raise ValueError(f"need odd 3 <= min_size <= max_size, got {min_size}, {max_size}")
    size = int(scaling * max(sigmas))
    size += 0 if size % 2 else 1
    return int(min(max_size, max(size, min_size)))


def monomials(order: int) -> list[tuple[int, int]]:
    """(power of u, power of v) for total degree <= order: 1, u, v, u^2, u v, v^2, ..."""
    return [(total - j, j) for total in range(order + 1) for j in range(total + 1)]


def al_basis(sigmas: tuple[float, ...], degrees: tuple[int, ...], size: int) -> np.ndarray:
    """Basis stamps (nbasis, size, size), float64: first of unit sum, the rest orthonormal, sum 0.

    Functions that are numerically dependent (|r_kk| < 1e-9 max |r|) are dropped, so nbasis
    may be below sum((d + 1)(d + 2) / 2).
    """
    if len(sigmas) != len(degrees) or not sigmas:
        raise ValueError(f"need one degree per sigma, got {len(sigmas)} sigmas, {len(degrees)}")
    if size < 3 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 3, got {size}")
    if any(d < 0 for d in degrees) or any(not s > 0 for s in sigmas):
        raise ValueError(f"degrees must be >= 0 and sigmas > 0, got {degrees}, {sigmas}")
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    u, v = x / half, y / half
    funcs: list[np.ndarray] = []
    for s, d in zip(sigmas, degrees, strict=True):
        g = np.exp(-(x * x + y * y) / (2.0 * s * s))
        funcs.extend(g * u**px * v**py for px, py in monomials(d))
    b = np.array(funcs)
    first = b[0] / b[0].sum()
    rest = b[1:] - b[1:].sum(axis=(1, 2))[:, None, None] * first
    if len(rest) == 0:
        return first[None]
    # One BLAS thread for this small QR (~441 x 26): with another process on the core,
    # OpenBLAS's two threads waited on each other 0.04-0.12 s in 3 of 7 calls, against
    # 0.5 ms otherwise (as in jitcore.alardlupton.fit_kernel; issue 17).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        q, r = np.linalg.qr(rest.reshape(len(rest), -1).T)
    diag = np.abs(np.diag(r))
    keep = diag > 1e-9 * diag.max()
    ortho = q[:, keep].T.reshape(-1, size, size)
    # QR's columns are combinations of zero-sum vectors; remove the rounding residue.
    ortho -= ortho.mean(axis=(1, 2))[:, None, None]
    return np.concatenate([first[None], ortho])


def _coord_scale(n: int) -> float:
    return 2.0 / max(n - 1, 1)


@dataclass
class SpatialKernel:
    """kernel(x, y) = sum_k (sum_s coeffs[k, s] m_s(u, v)) basis[k] (see the module docstring).

    ``shape`` (ny, nx) of the image whose pixel coordinates (0-based) the model uses.
    """

    basis: np.ndarray
    coeffs: np.ndarray
    order: int
    shape: tuple[int, int]

    @property
    def size(self) -> int:
        return int(self.basis.shape[1])

    def terms(self, x: float, y: float) -> np.ndarray:
        u = x * _coord_scale(self.shape[1]) - 1.0
        v = y * _coord_scale(self.shape[0]) - 1.0
        return np.array([u**px * v**py for px, py in monomials(self.order)])

    def spatial_kernels(self) -> np.ndarray:
        """K_s (nterms, size, size) with kernel(x, y) = sum_s m_s(u, v) K_s."""
        return np.tensordot(self.coeffs.T, self.basis, axes=1)

    def at(self, x: float, y: float) -> np.ndarray:
        """The matching kernel stamp (float64) at pixel (x, y); not renormalised."""
        return np.tensordot(self.terms(x, y), self.spatial_kernels(), axes=1)

    @property
    def kernel_sum(self) -> float:
        """Sum of the kernel (the same everywhere: only the first basis has a non-zero sum)."""
        return float(self.coeffs[0, 0] * self.basis[0].sum())


# Tile core (px) of convolve_many: frames of ~540^2 stay in cache (a 4096^2 float32 frame
# transform is memory-bound) and whole tiles run on threads; the kernel spectra are made once
# on the small frame instead of a full-image transform per kernel.
CONVOLVE_TILE = 512


def convolve_many(
    image: np.ndarray,
    kernels: list[np.ndarray],
    emit: Callable[[int, np.ndarray, int, int], None],
    *,
    workers: int | None = None,
    tile: int | None = None,
) -> None:
    """Convolve ``image`` (zero outside) with each odd kernel, tile by tile.

    ``emit(i, conv, y0, x0)`` receives kernel i's result on one tile core, whose first
    pixel is image pixel (y0, x0); each core is emitted once per kernel, and the cores
    partition the image, so callers may accumulate into disjoint parts of one output from
    several threads (``workers``: tile threads, scipy.fft convention; ``tile``: the core
    size, default CONVOLVE_TILE, read at call time).  Each core is
    transformed with the largest kernel half-size of real image pixels (zeros outside the
    image) around it, so the result is the exact linear convolution, without seams
    (tests/unit/test_alardlupton.py::test_tiled_convolution_has_no_seams).  Each tile's
    forward transform serves every kernel, and the kernels' spectra are computed once.

    Single precision: 2-3x faster than double, and its rounding (~1e-7 of the frame's RMS,
    dominated by the stars) is ~1e-5 of the sky noise; the results are combined in double.
    The float32 array passed to ``emit`` is reused by the next call on that thread.
    Before tiling (one 4096^2 frame, one full-frame transform per kernel) the 4k AL run spent
    5.7 s here (issue 17).
    """
    ny, nx = image.shape
    kh = max(k.shape[0] for k in kernels) // 2
    cores = tile_cores((ny, nx), CONVOLVE_TILE if tile is None else int(tile))
    fy, fx = frame_shape(cores, kh)
    kspecs = [
        stamp_spectrum(np.asarray(k, dtype=np.float64), (fy, fx), real=np.float32) for k in kernels
    ]
    n_threads = thread_count(workers, len(cores))

    def run(c: int) -> None:
        y0, y1, x0, x1 = cores[c]
        oy, ox = y0 - kh, x0 - kh
        wy0, wy1, wx0, wx1 = overlap((ny, nx), oy, ox, fy, fx)
        frame = np.zeros((fy, fx), np.float32)
        frame[wy0 - oy : wy1 - oy, wx0 - ox : wx1 - ox] = image[wy0:wy1, wx0:wx1]
        # jitcore.fft (ducc0, as ZOGY's and the decorrelation's frames: ~1.3x faster than
        # scipy.fft, equal to rounding; one thread per transform, so that results do not
        # depend on the thread count); its irfft2 may overwrite ``prod``, which each kernel
        # refills.
        spec = frame_fft.rfft2(frame)
        prod = np.empty_like(spec)
        for i, kspec in enumerate(kspecs):
            np.multiply(spec, kspec, out=prod)
            out = frame_fft.irfft2(prod, (fy, fx))
            emit(i, out[kh : kh + y1 - y0, kh : kh + x1 - x0], y0, x0)

    run_tiles(run, len(cores), n_threads)


def _accumulate(
    out: np.ndarray, conv: np.ndarray, power: tuple[int, int], scale: float, y0: int, x0: int
) -> None:
    """out[y0:, x0:] += scale * u^px v^py * conv over conv's box (image coordinates)."""
    ny, nx = out.shape
    _tile_accumulate(out, conv, power, scale, y0, x0, _coord_scale(ny), _coord_scale(nx))


def _tile_accumulate(out, conv, power, scale, y0, x0, sy, sx) -> None:
    # Into a C buffer, then added: the kernel's argument types (C or any layout) must not
    # depend on whether a tile spans whole rows of ``out``, or a run whose tiles do not
    # compiles what the warm-up's single-tile image did not (tests/unit/test_warmup.py).
    h, w = conv.shape
    part = np.zeros((h, w))
    poly_accumulate(conv, power[0], power[1], float(scale), y0, x0, sy, sx, part)
    out[y0 : y0 + h, x0 : x0 + w] += part


def convolve_spatial(
    image: np.ndarray, kernel: SpatialKernel, *, workers: int | None = None
) -> np.ndarray:
    """``image`` (x) the spatially varying ``kernel`` (float64; zero outside the image)."""
    if image.shape != kernel.shape:
        raise ValueError(f"image shape {image.shape} != kernel model shape {kernel.shape}")
    out = np.zeros(image.shape)
    powers = monomials(kernel.order)
    ks = list(kernel.spatial_kernels())

    def emit(i: int, conv: np.ndarray, y0: int, x0: int) -> None:
        _accumulate(out, conv, powers[i], 1.0, y0, x0)

    convolve_many(image, ks, emit, workers=workers)
    return out


def convolve_spatial_variance(
    variance: np.ndarray, kernel: SpatialKernel, *, workers: int | None = None
) -> np.ndarray:
    """``variance`` (x) kernel(x, y)^2: the variance of :func:`convolve_spatial`'s output.

    kernel^2 = sum_{s,t} m_s m_t K_s K_t is a polynomial of degree 2 x order; the products
    K_s K_t with the same monomial are summed before convolving.
    """
    if variance.shape != kernel.shape:
        raise ValueError(f"variance shape {variance.shape} != kernel shape {kernel.shape}")
    ks = kernel.spatial_kernels()
    powers = monomials(kernel.order)
    sq: dict[tuple[int, int], np.ndarray] = {}
    for s, ps in enumerate(powers):
        for t, pt in enumerate(powers):
            key = (ps[0] + pt[0], ps[1] + pt[1])
            sq[key] = sq.get(key, 0.0) + ks[s] * ks[t]
    keys = list(sq)
    out = np.zeros(variance.shape)

    def emit(i: int, conv: np.ndarray, y0: int, x0: int) -> None:
        _accumulate(out, conv, keys[i], 1.0, y0, x0)

    convolve_many(variance, [sq[k] for k in keys], emit, workers=workers)
    return out


def convolve_psf_model(image: np.ndarray, psf: Any, *, workers: int | None = None) -> np.ndarray:
    """``image`` (x) its own spatially varying PSF, each pixel with the PSF at that pixel.

    ``psf`` like jitcore.psf.PsfModel: psf(x, y) = sum_t m_t basis_t / sum_t m_t sum(basis_t)
    (monomials over ``psf.shape``), so the convolution is sum_t m_t (basis_t (x) image) divided
    by the normalisation polynomial -- exact, as for :class:`SpatialKernel`.  An object with
    only ``.at(x, y)`` is used at the image centre (constant PSF).
    """
    basis = getattr(psf, "basis", None)
    degree = getattr(psf, "degree", None)
    pshape = getattr(psf, "shape", None)
    ny, nx = image.shape
    if basis is None or degree is None or pshape is None:
        stamp = normalise_psf(psf.at((nx - 1) / 2.0, (ny - 1) / 2.0))
        basis, degree, pshape = stamp[None], 0, image.shape
    basis = np.asarray(basis, dtype=np.float64)
    powers = monomials(int(degree))
    sy, sx = _coord_scale(pshape[0]), _coord_scale(pshape[1])
    out = np.zeros(image.shape)

    def emit(i: int, conv: np.ndarray, y0: int, x0: int) -> None:
        _tile_accumulate(out, conv, powers[i], 1.0, y0, x0, sy, sx)

    convolve_many(image, list(basis), emit, workers=workers)
    norm = np.zeros(image.shape)
    ones = np.ones(image.shape)
    for t, p in enumerate(powers):
        poly_accumulate(ones, p[0], p[1], float(basis[t].sum()), 0, 0, sy, sx, norm)
    with np.errstate(divide="ignore", invalid="ignore"):
        out /= norm
    out[~np.isfinite(out)] = 0.0
    return out
