"""Trailed sources: a PSF convolved with a line segment, fitted to every diaSource.

LSST's ``ext_trailedSources_Naive`` (Veres et al. 2012): the model of
diffstream.jitcore._kernels.trails (a circular Gaussian of the PSF's sigma convolved with a
segment: centre, length, angle, flux) is fitted by Levenberg-Marquardt to the difference and
its variance over the source's detection footprint, grown by ``margin_sigma`` PSF sigmas on
every side (the trail's faint ends fall below the detection threshold).  The Gaussian sigma
is the measured PSF_D's at the source: that of the circular Gaussian that fits its stamp best
(:func:`gaussian_sigma`).

Every source is fitted, whatever its S/N: a point source is the L = 0 member of the family
(the fit crosses it freely), so no cut is needed to keep the fit defined, and the cost is
small beside detection (benchmarks/bench_pipeline.py; docs/alerts.md has the figures).

Units: flux as the image (nJy), centre and length in pixels, angle in degrees in the pixel
frame, counter-clockwise from +x, folded into [0, 180) (a trail has no direction).  The alert
layer converts to the schema's arcsec and bearing (diffstream.stream.pipeline.trails).
Errors: the inverse Fisher matrix at the solution.  Near L = 0 the Fisher information on L
vanishes as L^2 (the model is even in L), so a point source's trailLengthErr is large and
L / trailLengthErr ~ 2 q / sigma_q with q = L^2, the quantity that is Gaussian there
(tests/science/test_trail_science.py uses it).

Flags: ``trail_flag`` when the fit failed (no pixels, no convergence, centre left the
window, singular Fisher matrix); ``trail_flag_edge`` when the fitted segment, widened by
2 PSF sigmas, reaches past the image or the fit window was cut by the image edge.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from diffstream.jitcore._kernels import trails as _k
from diffstream.jitcore.masks import UNUSABLE_PLANES, bits
from diffstream.jitcore.measure import check_mask, check_sources, image_pair
from diffstream.jitcore.photometry import distinct_stamps, stack_psfs
from diffstream.jitcore.psf import psf_sigma
from diffstream.jitcore.tiles import run_tiles, thread_count

__all__ = ["TRAIL_DTYPE", "fit_trails", "gaussian_sigma", "trail_image"]

_F = np.float64
TRAIL_DTYPE = np.dtype(
    [
        ("trailFlux", _F),  # nJy
        ("trailFluxErr", _F),
        ("trailX", _F),  # centre, pixels
        ("trailY", _F),
        ("trailXErr", _F),
        ("trailYErr", _F),
        ("trailXYCov", _F),  # px^2
        ("trailLength", _F),  # pixels (schema: arcsec)
        ("trailLengthErr", _F),
        ("trailAngle", _F),  # degrees CCW from +x in [0, 180) (schema: bearing on the sky)
        ("trailAngleErr", _F),
        ("trailChi2", _F),
        ("trailNdata", np.int32),
        ("trail_flag", np.bool_),
        ("trail_flag_edge", np.bool_),
        ("trailFitCode", np.int8),  # jitcore._kernels.trails.TRAIL_*; -1 not fitted
        ("trailSigma", _F),  # the Gaussian sigma used, pixels
    ]
)


def trail_image(
    shape: tuple[int, int],
    flux: float,
    x: float,
    y: float,
    length: float,
    angle_deg: float,
    sigma: float,
) -> np.ndarray:
    """The fitted model rendered on an image of ``shape`` (for plots and residuals)."""
    ny, nx = shape
    out = np.zeros((ny, nx))
    grad = np.empty(_k.NPAR)
    theta = math.radians(angle_deg)
    for j in range(ny):
        for i in range(nx):
            out[j, i] = _k.trail_model(float(i), float(j), flux, x, y, length, theta, sigma,
                                       grad, False)  # fmt: skip
    return out


def _positive_int(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _positive(name: str, value) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def gaussian_sigma(psfs: np.ndarray) -> np.ndarray:
    """The Gaussian-equivalent sigma of each unit-sum stamp of ``psfs`` (n, K, K): the sigma
    of the circular Gaussian, sampled at pixel centres as the trail model is, that fits the
    stamp best in least squares (amplitude free, centre at the stamp's centroid).

    Not sqrt((Ixx + Iyy) / 2) of the moments, tried first: PSF_D is not a Gaussian, and a
    model sigma 2% off the best-fitting one leaves a residual that a trail of ~1.3 px
    absorbs, so point sources came out trailed (L / trailLengthErr > 3.3 for 27% of them on
    a seeded pair; tests/science/test_trail_science.py).  Grid of 21 ratios in [0.75, 1.25]
    of the moments' sigma, refined by a parabola through the best three."""
    # Once per distinct stamp (45 ms -> ~3 ms on a 4k exposure; tests/unit/test_trails.py
    # checks the result is the same bit for bit).
    distinct = distinct_stamps(psfs)
    if distinct is not None:
        return _gaussian_sigma(distinct[0])[distinct[1]]
    return _gaussian_sigma(psfs)


def _gaussian_sigma(psfs: np.ndarray) -> np.ndarray:
    """:func:`gaussian_sigma` of every stamp, distinct or not."""
    n, ky, kx = psfs.shape
    yy, xx = np.mgrid[0:ky, 0:kx].astype(np.float64)
    tot = psfs.sum(axis=(1, 2))
    xc = (psfs * xx).sum(axis=(1, 2)) / tot
    yc = (psfs * yy).sum(axis=(1, 2)) / tot
    r2 = (xx[None] - xc[:, None, None]) ** 2 + (yy[None] - yc[:, None, None]) ** 2
    s0 = np.array([psf_sigma(p, 1e-6) for p in psfs])
    ratios = np.linspace(0.75, 1.25, 21)
    score = np.empty((n, ratios.size))
    for k, f in enumerate(ratios):
        g = np.exp(-0.5 * r2 / (f * s0)[:, None, None] ** 2)
        # Best amplitude's explained power <P, G>^2 / <G, G>: the residual is <P, P> minus it.
        score[:, k] = (psfs * g).sum(axis=(1, 2)) ** 2 / (g * g).sum(axis=(1, 2))
    best = np.clip(score.argmax(axis=1), 1, ratios.size - 2)
    rows = np.arange(n)
    lo, mid, hi = score[rows, best - 1], score[rows, best], score[rows, best + 1]
    den = lo - 2 * mid + hi
    shift = np.where(den < 0, 0.5 * (lo - hi) / np.where(den < 0, den, -1.0), 0.0)
    step = ratios[1] - ratios[0]
    return s0 * (ratios[best] + np.clip(shift, -1.0, 1.0) * step)


_MIN_CHUNK = 64  # fewer sources than this per thread do not pay for a thread
_MAX_HALF = 100  # px: the largest half-window a refit may take (a 200 px trail)


def _grown(
    res: np.ndarray,
    boxes: np.ndarray,
    sigma: np.ndarray,
    margin_sigma: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Windows that hold each fitted segment +- margin_sigma sigmas (and the old window)."""
    ny, nx = shape
    xc, yc, length, th = res[:, 1], res[:, 2], res[:, 3], res[:, 4]
    ok = np.isfinite(xc) & np.isfinite(yc) & np.isfinite(length) & np.isfinite(th)
    half = np.minimum(0.5 * np.where(ok, length, 0.0), _MAX_HALF)
    hx = np.abs(half * np.cos(np.where(ok, th, 0.0))) + margin_sigma * sigma + 1
    hy = np.abs(half * np.sin(np.where(ok, th, 0.0))) + margin_sigma * sigma + 1
    xc = np.where(ok, xc, 0.5 * (boxes[:, 0] + boxes[:, 1]))
    yc = np.where(ok, yc, 0.5 * (boxes[:, 2] + boxes[:, 3]))
    out = boxes.copy()
    out[:, 0] = np.minimum(boxes[:, 0], np.clip(np.floor(xc - hx), 0, nx - 1))
    out[:, 1] = np.maximum(boxes[:, 1], np.clip(np.ceil(xc + hx), 0, nx - 1))
    out[:, 2] = np.minimum(boxes[:, 2], np.clip(np.floor(yc - hy), 0, ny - 1))
    out[:, 3] = np.maximum(boxes[:, 3], np.clip(np.ceil(yc + hy), 0, ny - 1))
    return out


def fit_trails(
    sources: np.ndarray,
    rows: np.ndarray,
    difference: np.ndarray,
    difference_variance: np.ndarray,
    psf_d_at: Callable[[float, float], np.ndarray],
    *,
    mask: np.ndarray | None = None,
    mask_planes: Mapping[str, int] | None = None,
    bad_mask_planes: Sequence[str] = UNUSABLE_PLANES,
    margin_sigma: float = 3.0,
    max_iter: int = 60,
    tol: float = 1e-3,
    workers: int | None = None,
) -> np.ndarray:
    """One TRAIL_DTYPE row per source (same order).  ``workers`` (scipy.fft convention;
    None: 1, -1: all cores): threads over chunks of sources, as in jitcore.measure.

    ``sources``: detections (diffstream.jitcore.detect.SOURCE_DTYPE: bbox, sign); ``rows``:
    their measurements (x, y: the fit starts at the centroid), same length.  ``psf_d_at(x, y)``
    returns the difference's PSF stamp there.  Raises TypeError / ValueError on bad input.
    """
    check_sources(sources)
    names = getattr(getattr(rows, "dtype", None), "names", None) or ()
    if not isinstance(rows, np.ndarray) or "x" not in names or "y" not in names:
        raise TypeError("rows must be a structured array with x and y (jitcore.measure output)")
    if rows.shape != sources.shape:
        raise ValueError(f"rows has {rows.shape[0]} entries but sources has {sources.shape[0]}")
    diff, dvar = image_pair("difference", difference, difference_variance, None)
    shape = diff.shape
    mask, planes = check_mask(mask, mask_planes, shape)
    margin_sigma = _positive("margin_sigma", margin_sigma)
    tol = _positive("tol", tol)
    max_iter = _positive_int("max_iter", max_iter)
    thread_count(workers, 1)  # checks workers even when there is nothing to fit
    n = sources.shape[0]
    out = np.zeros(n, dtype=TRAIL_DTYPE)
    out["trailFitCode"] = -1
    if n == 0:
        return out
    x = rows["x"].astype(_F)
    y = rows["y"].astype(_F)
    # A centroid that failed (NaN) falls back to the detection peak.
    x = np.where(np.isfinite(x), x, sources["x"].astype(_F))
    y = np.where(np.isfinite(y), y, sources["y"].astype(_F))
    psfs, _ = stack_psfs(psf_d_at, x, y, "psf_d_at")
    sigma = gaussian_sigma(psfs)
    ny, nx = shape
    grow = np.ceil(margin_sigma * sigma).astype(np.int64) + 1
    bbox = sources["bbox"].astype(np.int64)
    wanted = np.column_stack([bbox[:, 0] - grow, bbox[:, 1] + grow, bbox[:, 2] - grow,
                              bbox[:, 3] + grow])  # fmt: skip
    boxes = np.empty((n, 4), dtype=np.int64)
    boxes[:, :2] = np.clip(wanted[:, :2], 0, nx - 1)  # (x0, x1, y0, y1)
    boxes[:, 2:] = np.clip(wanted[:, 2:], 0, ny - 1)
    centre = np.ascontiguousarray(np.column_stack([x, y]))
    sign = np.where(sources["sign"] < 0, -1.0, 1.0)
    res = np.empty((n, _k.NOUT))
    cov = np.empty((n, _k.NPAR, _k.NPAR))
    badbits = bits(dict(planes), tuple(bad_mask_planes))
    sigma = np.ascontiguousarray(sigma)
    n_threads = thread_count(workers, max(1, n // _MIN_CHUNK))

    def fit(idx: np.ndarray) -> None:
        """Run the kernel on sources ``idx`` into res[idx], cov[idx], in contiguous chunks
        on ``n_threads`` threads (the kernel releases the GIL; sources are independent)."""
        chunks = np.array_split(idx, min(n_threads, max(1, idx.size // _MIN_CHUNK)))

        def one(c: int) -> None:
            sel = chunks[c]
            sub_res = np.empty((sel.size, _k.NOUT))
            sub_cov = np.empty((sel.size, _k.NPAR, _k.NPAR))
            _k.fit_trails(diff, dvar, mask, badbits, np.ascontiguousarray(sigma[sel]),
                          np.ascontiguousarray(centre[sel]), np.ascontiguousarray(sign[sel]),
                          np.ascontiguousarray(boxes[sel]), max_iter, tol, sub_res,
                          sub_cov)  # fmt: skip
            res[sel], cov[sel] = sub_res, sub_cov

        run_tiles(one, len(chunks), len(chunks))

    fit(np.arange(n))
    # A trail's faint ends fall below the detection threshold (a long faint one may even be
    # detected in pieces), so the footprint can be shorter than the trail: where the fitted
    # segment, +- margin_sigma sigmas, reaches past the window, fit once more over a window
    # that holds it (at most _MAX_HALF px from the centre).
    again = _grown(res, boxes, sigma, margin_sigma, shape)
    redo = np.flatnonzero(np.any(again != boxes, axis=1))
    if redo.size:
        # Lower bounds (x0, y0) take the min, upper bounds (x1, y1) the max.
        lo, hi = np.ix_(redo, np.array([0, 2])), np.ix_(redo, np.array([1, 3]))
        wanted[lo] = np.minimum(wanted[lo], again[lo])
        wanted[hi] = np.maximum(wanted[hi], again[hi])
        boxes[redo] = again[redo]
        fit(redo)
    cut = np.any(boxes != wanted, axis=1)
    code = res[:, 10].astype(np.int8)
    # A point source may converge to L = 0 exactly, where the Fisher matrix is singular (no
    # information on L or theta): a measurement (length 0, errors NaN), not a failure.
    ok = (code == _k.TRAIL_OK) | ((code == _k.TRAIL_SINGULAR) & (res[:, 3] < 0.1 * sigma))
    out["trailFitCode"] = code
    out["trail_flag"] = ~ok
    out["trailSigma"] = sigma
    out["trailFlux"], out["trailX"], out["trailY"] = res[:, 0], res[:, 1], res[:, 2]
    out["trailLength"] = res[:, 3]
    out["trailAngle"] = np.degrees(res[:, 4]) % 180.0
    out["trailFluxErr"], out["trailXErr"], out["trailYErr"] = res[:, 5], res[:, 6], res[:, 7]
    out["trailLengthErr"] = res[:, 8]
    out["trailAngleErr"] = np.degrees(res[:, 9])
    out["trailXYCov"] = cov[:, 1, 2]
    out["trailChi2"] = res[:, 11]
    out["trailNdata"] = np.where(np.isfinite(res[:, 12]), res[:, 12], 0).astype(np.int32)
    # The segment's ends, widened by 2 sigma along the trail, must lie on the image.
    half = 0.5 * out["trailLength"] + 2.0 * sigma
    th = res[:, 4]
    ends_x = out["trailX"][:, None] + np.array([-1.0, 1.0]) * (half * np.cos(th))[:, None]
    ends_y = out["trailY"][:, None] + np.array([-1.0, 1.0]) * (half * np.sin(th))[:, None]
    with np.errstate(invalid="ignore"):
        off = (ends_x < -0.5) | (ends_x > nx - 0.5) | (ends_y < -0.5) | (ends_y > ny - 0.5)
    out["trail_flag_edge"] = cut | off.any(axis=1)
    return out
