"""Dipoles: a joint fit of a positive and a negative PSF to adjacent opposite-sign sources.

A static star that is misregistered (or moved, or subtracted with a wrong PSF) leaves a
positive and a negative lobe side by side on the difference; detection finds them as two
sources and points each to the other (``adjacent_opposite``, diffstream.jitcore.detect).  For every
mutual pair this module fits the model of diffstream.jitcore._kernels.dipole (two PSF_D of opposite
sign, both positions and both fluxes free) on the difference, optionally together with the
science and the template (weight ``rel_weight``, LSST's relWeight), which pin the lobes'
fluxes when the lobes are much closer than the PSF width (the kernel module says why), and
classifies the pair with LSST's DipoleFitPlugin criteria:

* dipole S/N >= ``snr_min`` (5 sqrt(2): two 5 sigma lobes in quadrature), where
  S/N = sqrt(chi2_D(zero model) - chi2_D(dipole)) on the difference.  LSST's
  sqrt((f+/sigma+)^2 + (f-/sigma-)^2) was rejected: on D alone a close dipole's fluxes are
  degenerate with its length, so their errors say nothing about the detection;
* each lobe holds less than ``max_flux_ratio`` (0.65) of f+ + f-;
* the lobes are at most ``max_separation`` PSF sigmas apart (LSST's maxSeparation, 5 sigma
  = 2.1 FWHM; sigma from the second moments of PSF_D);
* the fit converged.

A pair is fitted only when both lobes' footprints together hold at most ``max_area``
pixels (LSST: 1200); larger ones are extended residuals, not dipoles.  Only the difference,
its variance and its PSF are required, so this works for any subtraction method.

Errors: with the difference alone, the inverse Fisher matrix of D (exact for white noise).
With science and template, that of S and T alone: D is a linear function of them, so the
fit's weighted normal matrix counts the same photons twice (its errors were 10-30% small on
seeded simulations, pull std 1.1-1.3; the S+T Fisher matrix gives 0.9-1.0,
tests/science/test_dipole_science.py).

Limits of the difference alone: below ~1 PSF sigma of separation the lobes' fluxes and
their separation are degenerate (large, honest errors on dipoleLength and the fluxes;
give the science and template).  And the PSF stamp moved by sub-pixel interpolation is not
the PSF at that position when the PSF is near critical sampling; the small difference of
two overlapping lobes amplifies that: noise-free 1.5 px dipoles come out 6% short at PSF
sigma 1.0 px, 3% at 1.3 px, 0.8% at 1.8 px (tests/science/test_dipole_science.py).  The
joint fit is free of both.

Units: fluxes as the images (nJy), lengths in pixels, angles in degrees in the pixel frame
(counter-clockwise from +x, from the negative to the positive lobe).  The LSST schema wants
dipoleLength in arcsec and dipoleAngle as a bearing on the sky;
diffstream.stream.pipeline.astrometry.dipole_alert_fields converts with the WCS.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import numpy as np

from diffstream.jitcore._kernels import dipole as _k
from diffstream.jitcore._kernels.psffit import PAD
from diffstream.jitcore.masks import UNUSABLE_PLANES, bits
from diffstream.jitcore.measure import check_mask, check_sources, image_pair
from diffstream.jitcore.photometry import stack_psfs
from diffstream.jitcore.psf import psf_sigma

__all__ = ["DIPOLE_DTYPE", "fit_dipoles", "merge_dipoles"]

_F = np.float64
_B = np.bool_
DIPOLE_DTYPE = np.dtype(
    [
        ("dipoleFitAttempted", _B),
        ("isDipole", _B),
        ("dipoleMeanFlux", _F),  # (f+ + f-) / 2, nJy
        ("dipoleMeanFluxErr", _F),
        ("dipoleFluxDiff", _F),  # f+ - f-, nJy
        ("dipoleFluxDiffErr", _F),
        ("dipoleLength", _F),  # |r+ - r-|, pixels (schema: arcsec)
        ("dipoleLengthErr", _F),
        ("dipoleAngle", _F),  # atan2(y+ - y-, x+ - x-), degrees in the pixel frame
        ("dipoleAngleErr", _F),
        ("dipoleChi2", _F),  # chi^2 on the difference alone
        ("dipoleNdata", np.int32),  # good difference pixels in the fit
        ("dipoleSnr", _F),
        ("dipoleX", _F),  # centroid (r+ + r-) / 2, pixels
        ("dipoleY", _F),
        ("dipoleXErr", _F),
        ("dipoleYErr", _F),
        ("dipolePosX", _F),
        ("dipolePosY", _F),
        ("dipoleNegX", _F),
        ("dipoleNegY", _F),
        ("dipolePosFlux", _F),  # f+ > 0
        ("dipolePosFluxErr", _F),
        ("dipoleNegFlux", _F),  # f- > 0 (absolute flux of the negative lobe)
        ("dipoleNegFluxErr", _F),
        ("dipolePartner", np.int64),  # row of the other lobe, -1 when not paired
        ("dipoleLobe", np.int8),  # +1 positive lobe, -1 negative lobe, 0 not paired
        (
            "dipoleFitCode",
            np.int8,
        ),  # diffstream.jitcore._kernels.dipole.DIPOLE_*, -1 when not fitted
        ("dipole_flag", _B),  # a fit was attempted and failed
    ]
)

_ROW_FIELDS = ("x", "y", "psfFlux")
_SOURCE_EXTRA = ("npix", "adjacent_opposite")


def _check_real(name: str, value, *, low: float, high: float = math.inf, closed=False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and math.isfinite(value) and (low <= value if closed else low < value) and value < high:
        return float(value)
    lo = f">= {low:g}" if closed else f"> {low:g}"
    hi = "" if math.isinf(high) else f" and < {high:g}"
    raise ValueError(f"{name} must be a finite number {lo}{hi}, got {value!r}")


def _check_int(name: str, value, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _optional_plane(name, img, var, psf_at, shape, dtype):
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
    a, v = image_pair(name, img, var, shape)
    return np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(v, dtype=dtype), psf_at


def _pairs(sources: np.ndarray, area_ok) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) row indices of mutual nearest opposite-sign neighbours."""
    adj = sources["adjacent_opposite"]
    pos = np.flatnonzero((sources["sign"] > 0) & (adj >= 0))
    if pos.size == 0:
        return pos, pos
    neg = adj[pos]
    mutual = (adj[neg] == pos) & (sources["sign"][neg] < 0)
    pos, neg = pos[mutual], neg[mutual]
    keep = area_ok(pos, neg)
    return pos[keep], neg[keep]


def fit_dipoles(
    sources: np.ndarray,
    rows: np.ndarray,
    difference: np.ndarray,
    difference_variance: np.ndarray,
    psf_d_at: Callable[[float, float], np.ndarray],
    *,
    science: np.ndarray | None = None,
    science_variance: np.ndarray | None = None,
    psf_science_at: Callable[[float, float], np.ndarray] | None = None,
    template: np.ndarray | None = None,
    template_variance: np.ndarray | None = None,
    psf_template_at: Callable[[float, float], np.ndarray] | None = None,
    rel_weight: float = 0.5,
    mask: np.ndarray | None = None,
    mask_planes: Mapping[str, int] | None = None,
    bad_mask_planes: tuple[str, ...] = UNUSABLE_PLANES,
    snr_min: float = 5.0 * math.sqrt(2.0),
    max_flux_ratio: float = 0.65,
    max_area: int = 1200,
    max_separation: float = 5.0,
    max_iter: int = 50,
    max_step: float = 0.5,
    tol: float = 1e-3,
    lobe_snr_min: float | None = 3.0,
    score: np.ndarray | None = None,
) -> np.ndarray:
    """Fit a dipole to every mutual pair of adjacent opposite-sign sources, and to every
    other source whose neighbourhood holds an undetected opposite-sign lobe.

    ``sources``: diffstream.jitcore.detect.detect output (fields x, y, sign, bbox, npix,
    adjacent_opposite); ``rows``: jitcore.measure.measure output for the same sources (x, y,
    psfFlux start the fit; scienceFlux/templateFlux, when present and the planes are given,
    start the fluxes).  ``difference``/``difference_variance`` (nJy, nJy^2) with PSF
    ``psf_d_at(x, y)``; ``science``/``template`` (each with variance and PSF, on the same
    grid, background-subtracted, in the same unit; both or neither) are optional extra
    planes weighted by ``rel_weight``.
    ``mask``/``mask_planes``/``bad_mask_planes`` pick the pixels the fit skips, as in
    diffstream.jitcore.measure.  ``max_separation`` is in units of PSF_D's sigma, ``max_area`` in
    pixels.  Returns one :data:`DIPOLE_DTYPE` row per source (both lobes of a pair carry the
    same fit); unpaired sources have ``dipoleFitAttempted`` False, NaN values,
    ``dipoleNdata`` 0 and ``dipolePartner`` -1.

    A lobe below the detection threshold: for a source with no detected partner, the PSF
    matched filter of the difference (S/N = sum(P D / V) / sqrt(sum(P^2 / V))) is searched
    within ``max_separation`` PSF sigmas of it for the opposite sign; if its extreme reaches
    ``lobe_snr_min`` (3: below the 5 sigma threshold, above what noise gives often: about 6
    independent PSF positions in the disc, so ~1% of point sources have a noise 3 sigma
    dip there, and the fit's classification (both lobes >= 35% of the flux, S/N >= 5 sqrt 2)
    rejects those), the pair is fitted from that pixel as for a detected pair.  The
    source's row carries the fit, with ``dipoleLobe`` its own sign and ``dipolePartner``
    -1 (the other lobe has no row).  ``lobe_snr_min=None`` turns the search off.
    ``score``: the difference's detection S/N image (ZOGY's S_corr), when the caller has it:
    it is the matched filter, so the search reads it instead of computing one per source
    (on a 4k CCD, 2.4 s -> ~0.05 s for 1250 sources).
    """
    check_sources(sources)
    names = sources.dtype.names or ()
    missing = [f for f in _SOURCE_EXTRA if f not in names]
    if missing:
        raise TypeError(f"sources lacks fields {missing}; it has {list(names)}")
    rnames = getattr(getattr(rows, "dtype", None), "names", None)
    if not isinstance(rows, np.ndarray) or rnames is None or rows.ndim != 1:
        raise TypeError(
            "rows must be a 1-D structured array from diffstream.jitcore.measure.measure"
        )
    missing = [f for f in _ROW_FIELDS if f not in rnames]
    if missing:
        raise TypeError(f"rows lacks fields {missing}; it has {list(rnames)}")
    if rows.shape != sources.shape:
        raise ValueError(f"rows has {rows.shape[0]} entries but sources has {sources.shape[0]}")
    diff, dvar = image_pair("difference", difference, difference_variance, None)
    shape = diff.shape
    if not callable(psf_d_at):
        raise TypeError("psf_d_at must be callable (x, y) -> stamp")
    sci = _optional_plane("science", science, science_variance, psf_science_at, shape, diff.dtype)
    tpl = _optional_plane(
        "template", template, template_variance, psf_template_at, shape, diff.dtype
    )
    if (sci is None) != (tpl is None):
        # D is a linear function of S and T: with one of them only, the Fisher matrix of the
        # fit (which treats the planes as independent) would have no honest form.
        raise ValueError(
            "science and template must be given together (or neither), got "
            f"science={sci is not None}, template={tpl is not None}"
        )
    mask, planes = check_mask(mask, mask_planes, shape)
    if isinstance(bad_mask_planes, str) or not all(isinstance(p, str) for p in bad_mask_planes):
        raise TypeError(
            f"bad_mask_planes must be a sequence of plane names, got {bad_mask_planes!r}"
        )
    rel_weight = _check_real("rel_weight", rel_weight, low=0.0)
    snr_min = _check_real("snr_min", snr_min, low=0.0, closed=True)
    max_flux_ratio = _check_real("max_flux_ratio", max_flux_ratio, low=0.5, high=1.0, closed=True)
    max_area = _check_int("max_area", max_area, low=2)
    max_separation = _check_real("max_separation", max_separation, low=0.0)
    max_iter = _check_int("max_iter", max_iter, low=1)
    max_step = _check_real("max_step", max_step, low=0.0)
    tol = _check_real("tol", tol, low=0.0)

    n = sources.shape[0]
    out = np.zeros(n, dtype=DIPOLE_DTYPE)
    for name in DIPOLE_DTYPE.names or ():
        if DIPOLE_DTYPE[name].kind == "f":
            out[name] = np.nan
    out["dipolePartner"] = -1
    out["dipoleFitCode"] = -1
    if lobe_snr_min is not None:
        lobe_snr_min = _check_real("lobe_snr_min", lobe_snr_min, low=0.0)
    npix = sources["npix"]
    pos, neg = _pairs(sources, lambda p, q: npix[p] + npix[q] <= max_area)
    badbits = bits(dict(planes), tuple(bad_mask_planes))
    single = np.zeros(0, dtype=np.int64)
    hidden = np.zeros((0, 3))
    if lobe_snr_min is not None:
        # Only sources with no detected opposite-sign neighbour: a detected one that is not
        # a mutual pair (or too large a pair) is not a hidden lobe.
        alone = np.flatnonzero((npix <= max_area) & (sources["adjacent_opposite"] < 0))
        if score is not None:
            if not isinstance(score, np.ndarray) or score.shape != shape:
                raise ValueError(f"score must be an ndarray of shape {shape}")
            single, hidden = _hidden_lobes_on_score(
                sources, rows, alone, score, diff, dvar, psf_d_at, max_separation, lobe_snr_min
            )
        else:
            single, hidden = _hidden_lobes(sources, rows, alone, diff, dvar, mask, badbits,
                                           psf_d_at, max_separation, lobe_snr_min)  # fmt: skip
    n_pairs = pos.size
    if n_pairs + single.size == 0:
        return out

    xp, yp = rows["x"][pos].astype(_F), rows["y"][pos].astype(_F)
    xn, yn = rows["x"][neg].astype(_F), rows["y"][neg].astype(_F)
    fp = np.abs(rows["psfFlux"][pos].astype(_F))
    fn = np.abs(rows["psfFlux"][neg].astype(_F))
    # Single-lobe fits: the detected lobe's row on its side, the hidden lobe's pixel and
    # matched-filter flux on the other; the forced fluxes (_better_start) come from the
    # detected row on both sides (the hidden lobe is the same star, offset by < 1 FWHM).
    up = sources["sign"][single] > 0
    sx, sy = rows["x"][single].astype(_F), rows["y"][single].astype(_F)
    sf = np.abs(rows["psfFlux"][single].astype(_F))
    hx, hy, hf = hidden[:, 0], hidden[:, 1], np.abs(hidden[:, 2])
    xp = np.concatenate([xp, np.where(up, sx, hx)])
    yp = np.concatenate([yp, np.where(up, sy, hy)])
    xn = np.concatenate([xn, np.where(up, hx, sx)])
    yn = np.concatenate([yn, np.where(up, hy, sy)])
    fp = np.concatenate([fp, np.where(up, sf, hf)])
    fn = np.concatenate([fn, np.where(up, hf, sf)])
    pos_rows = np.concatenate([pos, single])
    neg_rows = np.concatenate([neg, single])
    xc, yc = 0.5 * (xp + xn), 0.5 * (yp + yn)
    psf_d, half_d = stack_psfs(psf_d_at, xc, yc, "psf_d_at")
    w_s = w_t = 0.0
    psf_s = psf_t = psf_d
    half = half_d.copy()
    if sci is not None:
        psf_s, half_s = stack_psfs(sci[2], xp, yp, "psf_science_at")
        half = np.maximum(half, half_s)
        w_s = rel_weight
        fp = _better_start(fp, rows, "scienceFlux", pos_rows)
    if tpl is not None:
        psf_t, half_t = stack_psfs(tpl[2], xn, yn, "psf_template_at")
        half = np.maximum(half, half_t)
        w_t = rel_weight
        fn = _better_start(fn, rows, "templateFlux", neg_rows)
    start = np.ascontiguousarray(np.column_stack([fp, xp, yp, fn, xn, yn]))
    ny, nx = shape
    boxes = np.empty((xp.size, 4), dtype=np.int64)
    boxes[:, 0] = np.clip(np.floor(np.minimum(xp, xn) + 0.5) - half, 0, nx - 1)
    boxes[:, 1] = np.clip(np.floor(np.maximum(xp, xn) + 0.5) + half, 0, nx - 1)
    boxes[:, 2] = np.clip(np.floor(np.minimum(yp, yn) + 0.5) - half, 0, ny - 1)
    boxes[:, 3] = np.clip(np.floor(np.maximum(yp, yn) + 0.5) + half, 0, ny - 1)
    bound = half_d.astype(_F)

    def work(stamps, lobes=None):
        m = stamps.shape[1] + 2 * PAD
        return np.empty((5, m, m)) if lobes is None else np.empty((lobes, 5, m, m))

    dummy = (diff, dvar)
    s_img, s_var = sci[:2] if sci is not None else dummy
    t_img, t_var = tpl[:2] if tpl is not None else dummy
    res = np.empty((xp.size, _k.NOUT))
    cov = np.empty((xp.size, _k.NPAR, _k.NPAR))
    _k.fit_dipole_pairs(
        diff, dvar, s_img, s_var, t_img, t_var, mask, badbits,
        psf_d, np.ascontiguousarray(psf_s), np.ascontiguousarray(psf_t), w_s, w_t, start,
        boxes, bound, max_iter, max_step, tol, work(psf_d, 2), work(psf_s), work(psf_t), res,
        cov,
    )  # fmt: skip
    sigma = np.array([psf_sigma(p) for p in psf_d])
    fit = _derived(res, cov)
    code = res[:, 12].astype(np.int8)
    ok = code == _k.DIPOLE_OK
    total = np.abs(fit["f+"]) + np.abs(fit["f-"])
    with np.errstate(invalid="ignore", divide="ignore"):
        classified = (
            ok
            & (fit["snr"] >= snr_min)
            & (np.abs(fit["f+"]) < max_flux_ratio * total)
            & (np.abs(fit["f-"]) < max_flux_ratio * total)
            & (fit["length"] <= max_separation * sigma)
        )
    pair = slice(0, n_pairs)
    lone = slice(n_pairs, None)
    no_row = np.full(single.size, -1, dtype=np.int64)
    for mine, other, lobe, part in (
        (pos, neg, 1, pair), (neg, pos, -1, pair),
        (single, no_row, sources["sign"][single].astype(np.int8), lone),
    ):  # fmt: skip
        o = out[mine]
        o["dipoleLobe"] = lobe
        o["dipoleFitAttempted"] = True
        o["isDipole"] = classified[part]
        o["dipole_flag"] = ~ok[part]
        o["dipoleFitCode"] = code[part]
        o["dipolePartner"] = other
        o["dipoleNdata"] = np.where(np.isfinite(res[part, 14]), res[part, 14], 0).astype(np.int32)
        for field, key in _FIELD_MAP.items():
            o[field] = fit[key][part]
        out[mine] = o
    return out


def _hidden_lobes_on_score(
    sources: np.ndarray,
    rows: np.ndarray,
    alone: np.ndarray,
    score: np.ndarray,
    diff: np.ndarray,
    dvar: np.ndarray,
    psf_d_at: Callable[[float, float], np.ndarray],
    max_separation: float,
    snr_min: float,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_hidden_lobes` reading the detection S/N image instead of a matched filter.

    The starting flux of the hidden lobe: its S/N times the PSF-flux error of the
    difference there, sqrt(1 / sum(P^2 / V)) with V the variance at that pixel."""
    keep: list[int] = []
    found: list[tuple[float, float, float]] = []
    if alone.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
    xs, ys = rows["x"][alone].astype(_F), rows["y"][alone].astype(_F)
    ok = np.isfinite(xs) & np.isfinite(ys)
    psfs, _ = stack_psfs(psf_d_at, np.where(ok, xs, 0.0), np.where(ok, ys, 0.0), "psf_d_at")
    # PSF_D is one stamp per ZOGY tile: its sigma once per distinct stamp (by its bytes),
    # not per source (~50 us a call, a third of this search at 4k; issue 17).
    sigmas: dict[bytes, float] = {}
    radius = np.empty(xs.shape[0])
    for k in range(xs.shape[0]):
        key = psfs[k].tobytes()
        sig = sigmas.get(key)
        if sig is None:
            sig = sigmas[key] = psf_sigma(psfs[k])
        radius[k] = max_separation * sig
    # The windows' peaks in one Numba pass (~30 us of NumPy per source before; issue 17).
    sign = sources["sign"][alone].astype(_F)
    peaks = np.empty((xs.shape[0], 3))
    _k.score_peaks(np.ascontiguousarray(score), np.where(ok, xs, 0.0), np.where(ok, ys, 0.0),
                   radius, sign, peaks)  # fmt: skip
    for k, i in enumerate(alone.tolist()):
        if not ok[k] or not peaks[k, 2] >= snr_min:
            continue
        px, py = int(peaks[k, 0]), int(peaks[k, 1])
        v = float(dvar[py, px])
        err = math.sqrt(v / float((psfs[k] ** 2).sum())) if v > 0 and math.isfinite(v) else 0.0
        keep.append(i)
        found.append((float(px), float(py), float(peaks[k, 2]) * err))
    return np.array(keep, dtype=np.int64), np.array(found, dtype=_F).reshape(-1, 3)


def _hidden_lobes(
    sources: np.ndarray,
    rows: np.ndarray,
    alone: np.ndarray,
    diff: np.ndarray,
    dvar: np.ndarray,
    mask: np.ndarray,
    badbits: int,
    psf_d_at: Callable[[float, float], np.ndarray],
    max_separation: float,
    snr_min: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``alone`` with an opposite-sign lobe, (n, 3) its pixel x, y and matched-filter
    flux): the most opposite-sign PSF matched-filter S/N within ``max_separation`` PSF
    sigmas of the source, kept when it reaches ``snr_min``."""
    from scipy.ndimage import correlate

    ny, nx = diff.shape
    keep: list[int] = []
    found: list[tuple[float, float, float]] = []
    for i in alone.tolist():
        x, y = float(rows["x"][i]), float(rows["y"][i])
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        psf = np.asarray(psf_d_at(x, y), dtype=_F)
        psf = psf / psf.sum()
        radius = max_separation * psf_sigma(psf)
        half = int(math.ceil(radius)) + psf.shape[0] // 2
        ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
        d = diff[y0:y1, x0:x1].astype(_F)
        v = dvar[y0:y1, x0:x1].astype(_F)
        good = (mask[y0:y1, x0:x1] & badbits) == 0
        good &= np.isfinite(d) & np.isfinite(v) & (v > 0)
        w = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
        num = correlate(np.where(good, d, 0.0) * w, psf, mode="constant")
        den = correlate(w, psf * psf, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = -float(sources["sign"][i]) * num / np.sqrt(den)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        near = (np.hypot(xx - x, yy - y) <= radius) & (den > 0) & np.isfinite(snr)
        if not near.any():
            continue
        k = np.flatnonzero(near.ravel())[np.argmax(snr.ravel()[near.ravel()])]
        if snr.ravel()[k] >= snr_min:
            keep.append(i)
            found.append((float(xx.ravel()[k]), float(yy.ravel()[k]),
                          float(num.ravel()[k] / den.ravel()[k])))  # fmt: skip
    return np.array(keep, dtype=np.int64), np.array(found, dtype=_F).reshape(-1, 3)


_FIELD_MAP = {
    "dipoleMeanFlux": "mean",
    "dipoleMeanFluxErr": "mean_err",
    "dipoleFluxDiff": "diff",
    "dipoleFluxDiffErr": "diff_err",
    "dipoleLength": "length",
    "dipoleLengthErr": "length_err",
    "dipoleAngle": "angle",
    "dipoleAngleErr": "angle_err",
    "dipoleChi2": "chi2",
    "dipoleSnr": "snr",
    "dipoleX": "x",
    "dipoleY": "y",
    "dipoleXErr": "x_err",
    "dipoleYErr": "y_err",
    "dipolePosX": "x+",
    "dipolePosY": "y+",
    "dipoleNegX": "x-",
    "dipoleNegY": "y-",
    "dipolePosFlux": "f+",
    "dipolePosFluxErr": "f+_err",
    "dipoleNegFlux": "f-",
    "dipoleNegFluxErr": "f-_err",
}


def _better_start(flux: np.ndarray, rows: np.ndarray, field: str, idx: np.ndarray) -> np.ndarray:
    """The larger of the lobe's difference flux and its forced flux on the input image.

    For a dipole much closer than the PSF the lobes' difference fluxes are a small fraction
    of the star's; the forced flux on the input (biased low by the lobe's offset from the
    star, but not by a factor of ten) starts the fit nearer the optimum."""
    if field not in (rows.dtype.names or ()):
        return flux
    other = rows[field][idx].astype(_F)
    return np.where(np.isfinite(other) & (other > flux), other, flux)


def _derived(res: np.ndarray, cov: np.ndarray) -> dict[str, np.ndarray]:
    """Dipole quantities and their errors (full covariance) from the kernel's output."""
    fp, xp, yp, fn, xn, yn = (res[:, k] for k in range(6))
    dx, dy = xp - xn, yp - yn
    length = np.hypot(dx, dy)

    def var(g: np.ndarray) -> np.ndarray:
        # g: (n, 6) gradients; g C g^T per row.
        with np.errstate(invalid="ignore"):
            v = np.einsum("ni,nij,nj->n", g, cov, g)
        return np.sqrt(np.where(v >= 0, v, np.nan))

    n = res.shape[0]
    g = np.zeros((n, 6))
    out: dict[str, np.ndarray] = {"f+": fp, "f-": fn, "x+": xp, "y+": yp, "x-": xn, "y-": yn}
    out["f+_err"], out["f-_err"] = res[:, 6], res[:, 9]
    g[:] = 0.0
    g[:, 0] = g[:, 3] = 0.5
    out["mean"], out["mean_err"] = 0.5 * (fp + fn), var(g)
    g[:] = 0.0
    g[:, 0], g[:, 3] = 1.0, -1.0
    out["diff"], out["diff_err"] = fp - fn, var(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        g[:] = 0.0
        g[:, 1], g[:, 2], g[:, 4], g[:, 5] = dx / length, dy / length, -dx / length, -dy / length
        out["length"], out["length_err"] = length, var(g)
        g[:] = 0.0
        l2 = length * length
        g[:, 1], g[:, 2], g[:, 4], g[:, 5] = -dy / l2, dx / l2, dy / l2, -dx / l2
        out["angle"] = np.degrees(np.arctan2(dy, dx))
        out["angle_err"] = np.degrees(var(g))
    g[:] = 0.0
    g[:, 1] = g[:, 4] = 0.5
    out["x"], out["x_err"] = 0.5 * (xp + xn), var(g)
    g[:] = 0.0
    g[:, 2] = g[:, 5] = 0.5
    out["y"], out["y_err"] = 0.5 * (yp + yn), var(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Significance of the dipole on the difference: sqrt of the chi^2 it removes.  Not
        # sqrt((f+/sigma+)^2 + (f-/sigma-)^2): on D alone a close dipole's fluxes are
        # degenerate with its length, so their errors say nothing about its detection.
        out["snr"] = np.sqrt(np.maximum(res[:, 17] - res[:, 13], 0.0))
    out["chi2"] = res[:, 13]
    return out


def merge_dipoles(
    rows: np.ndarray, dipoles: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Report each classified dipole as one diaSource, as LSST does (one footprint, two peaks).

    For every pair with ``isDipole`` the positive lobe's row is kept and the negative lobe's
    dropped.  The kept row is moved to the dipole: x, y, xErr, yErr <- the dipole centroid
    and its errors; psfFlux, psfFluxErr <- dipoleFluxDiff and its error (the net flux change
    between template and science, what a forced PSF fit at the centroid estimates);
    snr <- dipoleSnr (the dipole's detection significance on the difference, as snr is the
    S/N at which a source was detected); isNegative <- False; bboxSize grown to hold both
    lobes.  Every other
    field keeps the positive lobe's measurement.  Returns ``(rows, dipoles, index)``: the
    merged rows and dipole rows, and the original row index of each (use it to select the
    matching detections, e.g. ``sources[index]``).  ``dipolePartner`` is renumbered to the
    merged order (-1 for merged pairs and partners that were dropped).
    """
    for name, arr in (("rows", rows), ("dipoles", dipoles)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.names is None:
            raise TypeError(f"{name} must be a 1-D structured array")
    if dipoles.dtype != DIPOLE_DTYPE:
        raise TypeError("dipoles must be fit_dipoles output (DIPOLE_DTYPE)")
    if rows.shape != dipoles.shape:
        raise ValueError(f"rows has {rows.shape[0]} entries but dipoles has {dipoles.shape[0]}")
    # A single-lobe dipole (the other lobe undetected: partner -1) keeps its one row.
    paired = dipoles["dipolePartner"] >= 0
    drop = dipoles["isDipole"] & (dipoles["dipoleLobe"] < 0) & paired
    index = np.flatnonzero(~drop)
    merged = rows[index].copy()
    dip = dipoles[index].copy()
    kept = dip["isDipole"] & ((dip["dipoleLobe"] > 0) | (dip["dipolePartner"] < 0))
    names = merged.dtype.names or ()
    updates = {
        "x": "dipoleX",
        "y": "dipoleY",
        "xErr": "dipoleXErr",
        "yErr": "dipoleYErr",
        "psfFlux": "dipoleFluxDiff",
        "psfFluxErr": "dipoleFluxDiffErr",
    }
    for field, source in updates.items():
        if field in names:
            merged[field][kept] = dip[source][kept]
    if "snr" in names:
        merged["snr"][kept] = dip["dipoleSnr"][kept]
    if "isNegative" in names:
        merged["isNegative"][kept] = False
    if "bboxSize" in names:
        partner = dipoles["dipolePartner"][index[kept]]
        partner_rows = rows[np.where(partner >= 0, partner, index[kept])]
        length = dip["dipoleLength"][kept]
        length = np.where(np.isfinite(length), length, 0.0)
        grow = 2 * np.ceil(0.5 * length).astype(np.int64)
        size = np.maximum(merged["bboxSize"][kept], partner_rows["bboxSize"]) + grow
        merged["bboxSize"][kept] = size.astype(merged["bboxSize"].dtype)
    # Partner indices into the merged order.
    new_of_old = np.full(rows.shape[0], -1, dtype=np.int64)
    new_of_old[index] = np.arange(index.size)
    old_partner = dip["dipolePartner"]
    dip["dipolePartner"] = np.where(old_partner >= 0, new_of_old[np.maximum(old_partner, 0)], -1)
    dip["dipolePartner"][kept] = -1
    return merged, dip, index
