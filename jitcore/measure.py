"""Measurement of diaSources on the difference image (and forced photometry on the inputs).

One row per detected source (same order as the input), with LSST diaSource field names
where the quantity appears in the alert schema; floats are float64 here and the alert layer
casts.  Positions are 0-based pixel coordinates with pixel centres at integers; fluxes are
in the images' units (nJy after calibration); second moments are in pixels^2 (the schema's
arcsec^2 is the alert layer's conversion).

What is measured, in order:

1. Centroid: Gauss-Newton fit of (flux, x, y) of ``psf_d`` on the difference, weights
   1 / difference_variance over the PSF stamp, starting at the detection's sub-pixel peak;
   steps limited to 0.5 px and the result to ``centroid_bound`` px from the start; converged
   when a step is < 1e-3 of the position error, at most ``max_iter`` iterations.  The fitted
   pixels are the PSF-sized window around the start, fixed while iterating.  xErr,
   yErr from the inverse Fisher matrix (flux-position covariance kept).  On failure
   ``centroid_flag`` is set, x, y stay at the detection peak and the errors are NaN.
2. psfFlux: linear fit of psf_d at the final position, flux = sum(P D/V) / sum(P^2/V),
   err = 1/sqrt(sum(P^2/V)); psfChi2, psfLnL (Gaussian log-likelihood), psfNdata (good
   pixels in the stamp).  ``psfFlux_flag_edge`` when the stamp leaves the image (the fit
   still uses the pixels inside), ``_noGoodPixels`` when none are usable.
3. apFlux: exact circle/pixel overlap sum (sep.sum_circle, subpix=0) of radius ap_radius,
   default 2 x FWHM of psf_d at the source (FWHM from the PSF's adaptive moments).  Unusable
   pixels are excluded and sep scales the sum by the total/unmasked area ratio, which
   underestimates a source whose core is masked, so ``apFlux_flag`` is set whenever the
   aperture holds an unusable pixel.
4. Adaptive second moments of ``sign * difference`` about the centroid (the brief's
   "|difference|": multiplying by the polarity measures negative sources like positive
   ones without the positive bias that |noise| would add), and of psf_d (ixxPSF...).
5. Forced PSF photometry on science and template at the final position with their own PSFs
   and variances (scienceFlux, templateFlux).
6. Pixel flags from ``mask`` over the measurement box (the square of side bboxSize centred
   on the nearest pixel to the centroid, clipped to the image) and over the 3x3 pixels
   around that pixel (``*Center``).

A pixel is used by the fits when its value and variance are finite, the variance is > 0
and its mask has none of ``bad_mask_planes`` (default: diffstream.jitcore.masks.UNUSABLE_PLANES, the
pixels the subtraction could not use either).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from diffstream.jitcore._kernels import measure as _k
from diffstream.jitcore._kernels import psffit as _fit
from diffstream.jitcore.constants import FWHM_PER_SIGMA
from diffstream.jitcore.masks import DEFAULT_PLANES, MASK_DTYPE, UNUSABLE_PLANES, bits
from diffstream.jitcore.photometry import aperture_flux, distinct_stamps, stack_psfs
from diffstream.jitcore.tiles import thread_count

__all__ = ["MEASURE_DTYPE", "measure", "forced_psf_flux"]

_F = np.float64
_B = np.bool_
MEASURE_DTYPE = np.dtype(
    [
        ("x", _F),
        ("y", _F),
        ("xErr", _F),
        ("yErr", _F),
        ("centroid_flag", _B),
        ("psfFlux", _F),
        ("psfFluxErr", _F),
        ("psfChi2", _F),
        ("psfLnL", _F),
        ("psfNdata", np.int32),
        ("psfFlux_flag", _B),
        ("psfFlux_flag_edge", _B),
        ("psfFlux_flag_noGoodPixels", _B),
        ("snr", _F),
        ("isNegative", _B),
        ("apFlux", _F),
        ("apFluxErr", _F),
        ("apFlux_flag", _B),
        ("apFlux_flag_apertureTruncated", _B),
        ("apRadius", _F),  # not in the schema: the radius used, pixels
        ("ixx", _F),
        ("iyy", _F),
        ("ixy", _F),
        ("ixxPSF", _F),
        ("iyyPSF", _F),
        ("ixyPSF", _F),
        ("shape_flag", _B),
        ("shape_flag_no_pixels", _B),
        ("shape_flag_not_contained", _B),
        ("scienceFlux", _F),
        ("scienceFluxErr", _F),
        ("forced_PsfFlux_flag", _B),
        ("forced_PsfFlux_flag_edge", _B),
        ("forced_PsfFlux_flag_noGoodPixels", _B),
        ("templateFlux", _F),
        ("templateFluxErr", _F),
        ("templateFlux_flag", _B),  # not in the schema, same meaning as forced_PsfFlux_*
        ("templateFlux_flag_edge", _B),
        ("templateFlux_flag_noGoodPixels", _B),
        ("scoreFlux", _F),  # not in the schema: ZOGY S/F_S at the centroid
        ("scoreFluxErr", _F),
        ("bboxSize", np.int32),
        ("pixelFlags", _B),
        ("pixelFlags_bad", _B),
        ("pixelFlags_cr", _B),
        ("pixelFlags_crCenter", _B),
        ("pixelFlags_edge", _B),
        ("pixelFlags_nodata", _B),
        ("pixelFlags_nodataCenter", _B),
        ("pixelFlags_interpolated", _B),
        ("pixelFlags_interpolatedCenter", _B),
        ("pixelFlags_saturated", _B),
        ("pixelFlags_saturatedCenter", _B),
        ("pixelFlags_suspect", _B),
        ("pixelFlags_suspectCenter", _B),
        ("pixelFlags_offimage", _B),
        ("pixelFlags_streak", _B),
        ("pixelFlags_streakCenter", _B),
    ]
)

# pixelFlags_<suffix> -> (mask plane, has a *Center variant)
PIXEL_FLAG_PLANES: dict[str, tuple[str, bool]] = {
    "bad": ("BAD", False),
    "cr": ("CR", True),
    "edge": ("EDGE", False),
    "nodata": ("NO_DATA", True),
    "interpolated": ("INTRP", True),
    "saturated": ("SAT", True),
    "suspect": ("SUSPECT", True),
    "streak": ("STREAK", True),  # set by stream.pipeline.streaks (a Hough search)
}

_SOURCE_FIELDS = ("x", "y", "sign", "bbox")


def image_pair(name: str, img, var, shape) -> tuple[np.ndarray, np.ndarray]:
    """Check an (image, variance) pair; return C-contiguous arrays of one float dtype."""
    for label, arr in ((name, img), (f"{name}_variance", var)):
        if not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.float64):
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise TypeError(f"{label} must be a float32 or float64 ndarray, got {got}")
        if arr.ndim != 2 or (shape is not None and arr.shape != shape):
            want = "2-D" if shape is None else f"shape {shape}"
            raise ValueError(f"{label} must be {want}, got shape {arr.shape}")
    if var.shape != img.shape:
        raise ValueError(f"{name}_variance shape {var.shape} differs from {name} shape {img.shape}")
    dtype = img.dtype if img.dtype == var.dtype else np.dtype(np.float64)
    # The kernels are compiled for native byte order; "=" keeps float32 float32.
    dtype = dtype.newbyteorder("=")
    return np.ascontiguousarray(img, dtype=dtype), np.ascontiguousarray(var, dtype=dtype)


def check_sources(sources) -> None:
    names = getattr(getattr(sources, "dtype", None), "names", None)
    if not isinstance(sources, np.ndarray) or names is None or sources.ndim != 1:
        raise TypeError(
            "sources must be a 1-D structured array from diffstream.jitcore.detect.detect"
        )
    missing = [f for f in _SOURCE_FIELDS if f not in names]
    if missing:
        raise TypeError(f"sources lacks fields {missing}; it has {list(names)}")
    if sources["bbox"].shape[1:] != (4,):
        raise TypeError(f"sources['bbox'] must hold 4 values, got {sources['bbox'].shape[1:]}")
    if not (np.all(np.isfinite(sources["x"])) and np.all(np.isfinite(sources["y"]))):
        raise ValueError("sources x, y must be finite")


def _check_number(name: str, value, *, minimum: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > minimum):
        raise ValueError(f"{name} must be a finite number > {minimum:g}, got {value!r}")


def check_mask(mask, mask_planes, shape) -> tuple[np.ndarray, Mapping[str, int]]:
    if mask is None:
        mask = np.zeros(shape, dtype=MASK_DTYPE)
    if not isinstance(mask, np.ndarray) or not np.issubdtype(mask.dtype, np.integer):
        got = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
        raise TypeError(f"mask must be an integer ndarray, got {got}")
    if mask.shape != shape:
        raise ValueError(f"mask must have shape {shape}, got {mask.shape}")
    planes = DEFAULT_PLANES if mask_planes is None else mask_planes
    if not isinstance(planes, Mapping) or not all(
        isinstance(k, str)
        and isinstance(v, numbers.Integral)
        and not isinstance(v, bool)
        and 0 <= int(v) < 32
        for k, v in planes.items()
    ):
        raise TypeError(f"mask_planes must map plane names to bits 0..31, got {planes!r}")
    return np.ascontiguousarray(mask, dtype=MASK_DTYPE), planes


def _optional_triplet(name: str, img, var, psf_at, shape):
    given = [img is not None, var is not None, psf_at is not None]
    if any(given) and not all(given):
        raise ValueError(
            f"{name}, {name}_variance and psf_{name}_at must be given together, "
            f"got {name}={given[0]}, {name}_variance={given[1]}, psf_{name}_at={given[2]}"
        )
    if not any(given):
        return None
    if not callable(psf_at):
        raise TypeError(f"psf_{name}_at must be callable (x, y) -> stamp")
    return (*image_pair(name, img, var, shape), psf_at, f"psf_{name}_at")


def _work(psfs: np.ndarray) -> np.ndarray:
    """Scratch of the fitting kernels: moved stamp, its two derivatives, two temporaries."""
    m = psfs.shape[1] + 2 * _fit.PAD
    return np.empty((5, m, m))


def _forced(images, xs, ys, badbits, mask, n):
    """Forced PSF fit on (image, variance, psf_at, name) or NaNs: (flux, err, edge, no_good)."""
    if images is None:
        nan = np.full(n, np.nan)
        return nan, nan.copy(), np.zeros(n, bool), np.ones(n, bool)
    img, var, psf_at, label = images
    psfs, _ = stack_psfs(psf_at, xs, ys, label)
    res = np.empty((n, 6))
    _fit.forced_psf_fit(img, var, mask, badbits, psfs, xs, ys, _work(psfs), res)
    no_good = (res[:, 3] == 0) | ~np.isfinite(res[:, 0])
    return res[:, 0], res[:, 1], res[:, 4] > 0, no_good


def forced_psf_flux(
    image: np.ndarray,
    variance: np.ndarray,
    psf_at: Callable[[float, float], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    mask_planes: Mapping[str, int] | None = None,
    bad_mask_planes: Sequence[str] = UNUSABLE_PLANES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forced PSF photometry at fixed pixel positions: (flux, fluxErr, flag) per position.

    The linear PSF fit that :func:`measure` uses for scienceFlux/templateFlux (same kernel,
    same pixel rules), for positions that need not be detections: the APDB's forced
    photometry of known diaObjects (stream/pipeline/apdb/forced.py).  ``flag`` is set when
    the stamp leaves the image or has no usable pixel (flux NaN then).
    """
    img, var = image_pair("image", image, variance, None)
    mask, planes = check_mask(mask, mask_planes, img.shape)
    if not callable(psf_at):
        raise TypeError("psf_at must be callable (x, y) -> stamp")
    xs = np.ascontiguousarray(x, dtype=np.float64)
    ys = np.ascontiguousarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {xs.shape} and {ys.shape}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("x, y must be finite")
    n = xs.size
    if n == 0:
        empty = np.zeros(0)
        return empty, empty.copy(), np.zeros(0, bool)
    badbits = bits(dict(planes), tuple(bad_mask_planes))
    flux, err, edge, no_good = _forced((img, var, psf_at, "psf_at"), xs, ys, badbits, mask, n)
    return flux, err, edge | no_good


def measure(
    sources: np.ndarray,
    *,
    difference: np.ndarray,
    difference_variance: np.ndarray,
    psf_d_at: Callable[[float, float], np.ndarray],
    flux: np.ndarray | None = None,
    flux_variance: np.ndarray | None = None,
    science: np.ndarray | None = None,
    science_variance: np.ndarray | None = None,
    psf_science_at: Callable[[float, float], np.ndarray] | None = None,
    template: np.ndarray | None = None,
    template_variance: np.ndarray | None = None,
    psf_template_at: Callable[[float, float], np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    mask_planes: Mapping[str, int] | None = None,
    ap_radius: float | None = None,
    bad_mask_planes: tuple[str, ...] = UNUSABLE_PLANES,
    centroid_bound: float = 1.5,
    max_iter: int = 50,
    workers: int | None = None,
) -> np.ndarray:
    """Measure each detected source; returns a structured array of :data:`MEASURE_DTYPE`.

    ``sources`` comes from :func:`jitcore.detect.detect` (fields x, y, sign, bbox are used).
    ``psf_*_at(x, y)`` return odd square PSF stamps (normalised to unit sum here).  ``flux``
    and ``flux_variance`` are ZOGY's S/F_S maps (scoreFlux); science and template (each with
    variance and PSF) are optional, their fluxes are NaN and flagged when absent.  ``mask``
    (integer, planes named by ``mask_planes``, default LSST's) gives the pixel flags and, via
    ``bad_mask_planes``, the pixels every fit skips, on the difference, science and template
    alike (pass the union of the masks the pipeline carries).  Rows are in the order of
    ``sources``.  ``workers`` (scipy.fft convention; None: 1, -1: all cores) measures
    chunks of the sources on that many threads, with the same rows as one thread.
    """
    check_sources(sources)
    diff, dvar = image_pair("difference", difference, difference_variance, None)
    shape = diff.shape
    if not callable(psf_d_at):
        raise TypeError("psf_d_at must be callable (x, y) -> stamp")
    if (flux is None) != (flux_variance is None):
        raise ValueError("flux and flux_variance must be given together")
    score_maps = None if flux is None else image_pair("flux", flux, flux_variance, shape)
    sci = _optional_triplet("science", science, science_variance, psf_science_at, shape)
    tpl = _optional_triplet("template", template, template_variance, psf_template_at, shape)
    mask, planes = check_mask(mask, mask_planes, shape)
    _check_number("ap_radius", ap_radius, minimum=0.0, allow_none=True)
    _check_number("centroid_bound", centroid_bound, minimum=0.0)
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(bad_mask_planes, str):
        raise TypeError(
            f"bad_mask_planes must be a sequence of plane names, got {bad_mask_planes!r}"
        )
    unknown = [p for p in bad_mask_planes if not isinstance(p, str)]
    if unknown:
        raise TypeError(f"bad_mask_planes must be plane names, got {unknown!r}")

    thread_count(workers, 1)  # checks workers even when there is nothing to measure
    n = sources.shape[0]
    if n == 0:
        return np.zeros(0, dtype=MEASURE_DTYPE)
    badbits = bits(planes, tuple(bad_mask_planes))
    n_threads = thread_count(workers, max(1, n // _MIN_CHUNK))

    def run(chunk: slice) -> np.ndarray:
        return _measure_chunk(
            sources[chunk], diff, dvar, psf_d_at, score_maps, sci, tpl, mask, planes,
            badbits, ap_radius, centroid_bound, max_iter,
        )  # fmt: skip

    if n_threads == 1:
        return run(slice(0, n))
    # Sources are independent and the kernels release the GIL, so contiguous chunks run
    # concurrently; only the per-source PSF stamps (psf_*_at, Python) serialise.
    edges = np.linspace(0, n, n_threads + 1).astype(int)
    chunks = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    with ThreadPoolExecutor(n_threads, "measure") as pool:
        return np.concatenate(list(pool.map(run, chunks)))


# Fewer sources than this per thread do not pay for a thread.
_MIN_CHUNK = 64


def _measure_chunk(
    sources, diff, dvar, psf_d_at, score_maps, sci, tpl, mask, planes, badbits, ap_radius,
    centroid_bound, max_iter,
) -> np.ndarray:  # fmt: skip
    """:func:`measure` of ``sources`` (checked inputs); rows in the order of ``sources``."""
    shape = diff.shape
    n = sources.shape[0]
    out = np.zeros(n, dtype=MEASURE_DTYPE)
    ny, nx = shape
    x0 = np.ascontiguousarray(sources["x"], dtype=np.float64)
    y0 = np.ascontiguousarray(sources["y"], dtype=np.float64)
    sign = np.where(sources["sign"] < 0, -1.0, 1.0)

    # Difference PSF at the detection: the centroid moves < centroid_bound px, far less than
    # the scale on which a PSF model varies.
    psfs, psf_half = stack_psfs(psf_d_at, x0, y0, "psf_d_at")
    kk = psfs.shape[1]
    work = _work(psfs)

    cen = np.empty((n, 6))
    _fit.fit_centroids(
        diff, dvar, mask, badbits, psfs, x0, y0, int(max_iter), float(centroid_bound), 1e-3,
        work, cen,
    )  # fmt: skip
    x = cen[:, 0].copy()
    y = cen[:, 1].copy()
    out["x"], out["y"], out["xErr"], out["yErr"] = x, y, cen[:, 2], cen[:, 3]
    out["centroid_flag"] = cen[:, 4] != _fit.CENTROID_OK

    fit = np.empty((n, 6))
    _fit.forced_psf_fit(diff, dvar, mask, badbits, psfs, x, y, work, fit)
    out["psfFlux"], out["psfFluxErr"], out["psfChi2"] = fit[:, 0], fit[:, 1], fit[:, 2]
    out["psfLnL"] = fit[:, 5]
    out["psfNdata"] = fit[:, 3].astype(np.int32)
    no_good = (fit[:, 3] == 0) | ~np.isfinite(fit[:, 0])
    out["psfFlux_flag_edge"] = fit[:, 4] > 0
    out["psfFlux_flag_noGoodPixels"] = no_good
    out["psfFlux_flag"] = no_good | (fit[:, 4] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["snr"] = fit[:, 0] / fit[:, 1]
    out["isNegative"] = sign < 0

    # Moments: the PSF's first (its FWHM sets the default aperture), then the source's,
    # starting from the PSF's moments.
    # Once per distinct stamp (PSF_D: one per ZOGY tile), the same rows bit for bit.
    distinct = distinct_stamps(psfs)
    if distinct is None:
        pmom = np.empty((n, 4))
        _k.stamp_adaptive_moments(psfs, 100, 1e-6, pmom)
    else:
        pmom = np.empty((distinct[0].shape[0], 4))
        _k.stamp_adaptive_moments(distinct[0], 100, 1e-6, pmom)
        pmom = pmom[distinct[1]]
    bad_psf = pmom[:, 3] != _k.SHAPE_OK
    if bad_psf.any():
        # Adaptive moments of a PSF only fail for pathological stamps; fall back to a circle
        # of the stamp's radius / 3 so that the source moments still have a start.
        fallback = (psf_half[bad_psf] / 3.0) ** 2
        pmom[bad_psf, 0], pmom[bad_psf, 1], pmom[bad_psf, 2] = fallback, fallback, 0.0
    out["ixxPSF"], out["iyyPSF"], out["ixyPSF"] = pmom[:, 0], pmom[:, 1], pmom[:, 2]
    smom = np.empty((n, 4))
    _k.adaptive_moments(
        diff, dvar, mask, badbits, x, y, sign, np.ascontiguousarray(pmom[:, :3]),
        2 * (kk // 2), 100, 1e-6, smom,
    )  # fmt: skip
    out["ixx"], out["iyy"], out["ixy"] = smom[:, 0], smom[:, 1], smom[:, 2]
    out["shape_flag"] = smom[:, 3] != _k.SHAPE_OK
    out["shape_flag_no_pixels"] = smom[:, 3] == _k.SHAPE_NO_PIXELS
    bbox = sources["bbox"]
    outside = (x < bbox[:, 0] - 0.5) | (x > bbox[:, 1] + 0.5)
    outside |= (y < bbox[:, 2] - 0.5) | (y > bbox[:, 3] + 0.5)
    out["shape_flag_not_contained"] = outside
    out["shape_flag"] |= outside

    if ap_radius is None:
        radius = 2.0 * FWHM_PER_SIGMA * np.sqrt(0.5 * (pmom[:, 0] + pmom[:, 1]))
    else:
        radius = np.full(n, float(ap_radius))
    out["apRadius"] = radius
    # The unusable-pixel map around this chunk's apertures only (photometry.unusable_map).
    ap, ap_err, truncated, masked, failed = aperture_flux(diff, dvar, mask, badbits, x, y, radius)
    out["apFlux"], out["apFluxErr"] = ap, ap_err
    out["apFlux_flag_apertureTruncated"] = truncated
    out["apFlux_flag"] = truncated | masked | failed

    for images, prefix, names in (
        (sci, "scienceFlux", ("forced_PsfFlux_flag", "scienceFluxErr")),
        (tpl, "templateFlux", ("templateFlux_flag", "templateFluxErr")),
    ):
        fflux, ferr, fedge, fnogood = _forced(images, x, y, badbits, mask, n)
        out[prefix], out[names[1]] = fflux, ferr
        out[names[0] + "_edge"] = fedge
        out[names[0] + "_noGoodPixels"] = fnogood
        out[names[0]] = fedge | fnogood

    if score_maps is None:
        out["scoreFlux"] = np.nan
        out["scoreFluxErr"] = np.nan
    else:
        fmap, fvar = score_maps
        sample = np.empty(n)
        _k.quadratic_sample(fmap, x, y, sample)
        out["scoreFlux"] = sample
        cx = np.floor(x + 0.5).astype(np.int64)
        cy = np.floor(y + 0.5).astype(np.int64)
        inside = (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
        err = np.full(n, np.nan)
        with np.errstate(invalid="ignore"):
            err[inside] = np.sqrt(fvar[cy[inside], cx[inside]])
        out["scoreFluxErr"] = err

    _pixel_flags(out, mask, planes, x, y, bbox, psf_half, shape)
    return out


def _pixel_flags(out, mask, planes, x, y, bbox, psf_half, shape) -> None:
    ny, nx = shape
    cx = np.floor(x + 0.5).astype(np.int64)
    cy = np.floor(y + 0.5).astype(np.int64)
    half = np.max(
        np.column_stack(
            [psf_half, cx - bbox[:, 0], bbox[:, 1] - cx, cy - bbox[:, 2], bbox[:, 3] - cy]
        ),
        axis=1,
    ).astype(np.int64)
    out["bboxSize"] = (2 * half + 1).astype(np.int32)
    ors = np.empty((x.shape[0], 2), dtype=np.int64)
    _k.mask_or(mask, cx, cy, np.ascontiguousarray(half), ors)
    offimage = (cx < 0) | (cx >= nx) | (cy < 0) | (cy >= ny)
    # The footprint box runs off the image: the difference there was convolved with zeros
    # beyond the edge (valid on empty sky, jitcore.zogy), and the footprint is cut.
    runs_off = (cx - half < 0) | (cx + half >= nx) | (cy - half < 0) | (cy + half >= ny)
    out["pixelFlags_offimage"] = offimage
    anyflag = offimage.copy()
    for suffix, (plane, centre) in PIXEL_FLAG_PLANES.items():
        bit = bits(planes, (plane,))
        hit = (ors[:, 0] & bit) != 0 if bit else np.zeros(x.shape[0], bool)
        if suffix == "edge":
            hit = hit | offimage | runs_off
        out[f"pixelFlags_{suffix}"] = hit
        anyflag |= hit
        if centre:
            chit = (ors[:, 1] & bit) != 0 if bit else np.zeros(x.shape[0], bool)
            out[f"pixelFlags_{suffix}Center"] = chit
    out["pixelFlags"] = anyflag
