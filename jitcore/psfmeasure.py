"""Measure a (spatially varying) PSF model from the stars in an image (PSFEx-like).

Steps: background (sep mesh, second pass with sources masked) -> detection (sep) -> star
selection (bright, unsaturated, clean stamp, isolated, point-like) -> sub-pixel
registration (windowed centroid, spline shift onto the pixel grid) -> unit-sum
normalisation -> per-pixel fit of a polynomial in (u, v) with star- and pixel-level sigma
clipping (degree 0: per-pixel median stack).  The result is a :class:`jitcore.psf.PsfModel`
with the basis layout documented there.

Choices, with the alternative rejected:

* Registration uses quintic B-spline interpolation (scipy.ndimage.shift, order 5).  A
  Fourier shift was rejected because a star cutout is not periodic and the wrap-around
  discontinuity rings into the wings, where second moments are most sensitive; Lanczos-3
  was rejected because it smooths the core (0.7% of the peak for sigma = 1.7 px against
  0.02% for the quintic spline, which also preserves moments up to third order;
  test_subpixel_shift_recentres_a_star).
* Stars are weighted by S/N^2 per star (capped at 10x the median), not per pixel by the
  variance plane: the variance of a plain file is estimated *from the image*, so per-pixel
  inverse-variance weights would favour pixels that fluctuated low and bias the core.
  The variance plane is still used to decide which pixels to clip.
* The size used for rejecting non-stars is sep's half-light radius, robust to the isophotal
  truncation that makes sep's ``a``/``b`` depend on S/N.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, shift, spline_filter1d
from scipy.spatial import cKDTree

from diffstream.jitcore._kernels.bspline import quintic_shift_stack
from diffstream.jitcore._kernels.planes import star_bad
from diffstream.jitcore.background import estimate_background
from diffstream.jitcore.constants import FWHM_PER_SIGMA, GAUSS_RHALF_PER_SIGMA
from diffstream.jitcore.photometry import APER_TRUNC, flux_radius, sum_circle, winpos
from diffstream.jitcore.psf import PsfModel, psf_moments
from diffstream.jitcore.psfmodes import fit_mode_model
from diffstream.jitcore.robust import mad_sigma
from diffstream.jitcore.sources import extract

__all__ = [
    "measure_psf",
    "stamp_size_for_sigma",
    "stars_needed",
    "subpixel_shift",
    "subpixel_shift_stack",
]

# Cutout margin beyond the stamp: the spline prefilter's edge effect decays by ~0.43/px.
_PAD = 6
# sep object flags: 1 = merged (deblended), 2 = truncated at the image edge or a mask.
_SEP_BAD_FLAGS = 0x1 | 0x2
_MIN_SIZE, _MAX_SIZE = 11, 41


def stars_needed(degree: int) -> int:
    """Stars needed to fit a degree-``degree`` model: 3 per polynomial term."""
    return 3 * (degree + 1) * (degree + 2) // 2


def stamp_size_for_sigma(sigma: float, sigmas: float = 4.0) -> int:
    """Odd stamp size 2*ceil(``sigmas`` sigma)+1 clamped to [11, 41] (4: the core and near
    wings)."""
    size = 2 * int(np.ceil(sigmas * sigma)) + 1
    return int(min(max(size, _MIN_SIZE), _MAX_SIZE))


def subpixel_shift(stamp: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Resample so that the point at (centre + dx, centre + dy) lands on the centre pixel.

    Quintic spline; edges repeat the nearest pixel, so callers pad by a few pixels and crop.
    """
    return shift(np.asarray(stamp, dtype=np.float64), (-dy, -dx), order=5, mode="nearest")


# scipy.ndimage's pre-padding for mode="nearest" (_prepad_for_spline_filter).
_SPLINE_PREPAD = 12


def subpixel_shift_stack(
    stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, crop: int = 0
) -> np.ndarray:
    """:func:`subpixel_shift` of every stamp of a (n, m, m) stack, cropped by ``crop`` on
    each side: ``out[k] = subpixel_shift(stamps[k], dx[k], dy[k])[crop:m-crop, crop:m-crop]``
    to rounding (tests/unit/test_psfmeasure.py).

    The same steps as scipy.ndimage.shift (edge pre-padding by 12, the quintic prefilter of
    spline_filter1d along each axis, the interpolation of zoom_shift), but the prefilter runs
    once over the stack and the interpolation in one Numba pass without the GIL: 200 stars
    cost 400 shift calls, ~2,000 Python-level array operations, each holding the GIL,
    per image (issue 17).  |dx|, |dy| <= 1 (a re-centring, never a move).
    """
    st = np.asarray(stamps, dtype=np.float64)
    if st.ndim != 3 or st.shape[1] != st.shape[2]:
        raise ValueError(f"stamps must be a (n, m, m) stack, got shape {st.shape}")
    m = st.shape[1]
    if not 0 <= crop < (m + 1) // 2:
        raise ValueError(f"crop must be in [0, {(m + 1) // 2}), got {crop}")
    sx = np.ascontiguousarray(dx, dtype=np.float64).ravel()
    sy = np.ascontiguousarray(dy, dtype=np.float64).ravel()
    if sx.shape != (st.shape[0],) or sy.shape != (st.shape[0],):
        raise ValueError(f"dx and dy need one value per stamp ({st.shape[0]})")
    if not (np.abs(sx) <= 1.0).all() or not (np.abs(sy) <= 1.0).all():
        raise ValueError("|dx| and |dy| must be <= 1 (and finite)")
    npad = _SPLINE_PREPAD
    coef = np.pad(st, ((0, 0), (npad, npad), (npad, npad)), mode="edge")
    for axis in (1, 2):  # each line filtered alone: bit for bit the 2-D filter's lines
        spline_filter1d(coef, 5, axis=axis, output=coef, mode="nearest")
    out = np.empty((st.shape[0], m - 2 * crop, m - 2 * crop))
    quintic_shift_stack(coef, sy, sx, npad, crop, m - crop, np.empty(6), np.empty(6), out)
    return out


def _terms(x: np.ndarray, y: np.ndarray, degree: int, shape: tuple[int, int]) -> np.ndarray:
    """Polynomial terms per star, in PsfModel.terms order (1, u, v, u^2, u v, v^2, ...)."""
    ny, nx = shape
    u = 2.0 * x / max(nx - 1, 1) - 1.0
    v = 2.0 * y / max(ny - 1, 1) - 1.0
    cols = [u ** (total - j) * v**j for total in range(degree + 1) for j in range(total + 1)]
    return np.stack(cols, axis=1)


def measure_psf(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    bad_bits: int,
    saturation: float | None = None,
    size: int | None = None,
    size_sigmas: float = 4.0,
    degree: int = 1,
    min_stars: int = 3,
    max_stars: int = 200,
    snr_min: float = 50.0,
    snr_floor: float = 20.0,
    detect_thresh: float = 5.0,
    clip_sigma: float = 4.0,
    background_box: int = 128,
    subtract_background: bool = True,
    sources: np.ndarray | None = None,
) -> PsfModel:
    """Measure a PSF model from the image's stars.

    ``image`` and ``variance`` are in the same units (any); ``mask`` is an integer plane
    array and ``bad_bits`` the OR of the planes that disqualify a star's stamp (e.g. SAT,
    BAD, CR, NO_DATA, EDGE).  ``saturation`` (image units, raw, background included)
    rejects stars peaking at >= 0.8 of it.  ``size`` forces the odd stamp size; by default
    it is 2*ceil(``size_sigmas`` sigma)+1 from the measured width, clamped to [11, 41].
    ``degree`` is the requested polynomial degree in (u, v) (0..3), lowered automatically
    while fewer than :func:`stars_needed` stars are available.  Returns a PsfModel with
    ``source="measured"``, ``nstars`` and ``info`` (fwhm in pixels at the image centre,
    residual_rms as a fraction of the centre model's peak, selection counts).  Raises
    ValueError when fewer than
    ``min_stars`` usable stars are found (message gives found and required counts).

    ``sources``, a :func:`diffstream.jitcore.sources.find_stars` catalogue of this image,
    replaces the detection; it
    needs ``subtract_background=False`` (the catalogue was found on the image as given).
    ``mask`` may also be a bool array (True = bad), with ``bad_bits=1``.
    """
    img = np.asarray(image)
    var = np.asarray(variance)
    msk = np.asarray(mask)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if var.shape != img.shape:
        raise ValueError(f"variance shape {var.shape} != image shape {img.shape}")
    if msk.shape != img.shape:
        raise ValueError(f"mask shape {msk.shape} != image shape {img.shape}")
    if not (np.issubdtype(msk.dtype, np.integer) or msk.dtype == np.bool_):
        raise TypeError(f"mask must be an integer or bool array, got dtype {msk.dtype}")
    if sources is not None and subtract_background:
        raise ValueError("sources need subtract_background=False: they were found as given")
    if not 0 <= degree <= 3:
        raise ValueError(f"degree must be in 0..3, got {degree}")
    if min_stars < 1:
        raise ValueError(f"min_stars must be >= 1, got {min_stars}")
    if max_stars < min_stars:
        raise ValueError(f"max_stars must be >= min_stars={min_stars}, got {max_stars}")
    if not 1.0 <= size_sigmas <= 10.0:
        raise ValueError(f"size_sigmas must be in [1, 10], got {size_sigmas}")
    if size is not None and (size < 3 or size % 2 == 0):
        raise ValueError(f"size must be odd and >= 3, got {size}")
    if saturation is not None and not saturation > 0:
        raise ValueError(f"saturation must be > 0, got {saturation}")
    if not snr_min > 0:
        raise ValueError(f"snr_min must be > 0, got {snr_min}")
    if not 0 < snr_floor <= snr_min:
        raise ValueError(f"snr_floor must be in (0, snr_min={snr_min}], got {snr_floor}")
    if not clip_sigma > 0:
        raise ValueError(f"clip_sigma must be > 0, got {clip_sigma}")

    if sources is not None:
        # The pipeline's path: float32 planes, bad pixels already zeroed; sep and the stamp
        # code take float32 as is, and full-frame float64 copies are most of the cost.
        img = np.ascontiguousarray(img, dtype=np.float32)
        var = np.ascontiguousarray(var, dtype=np.float32)
    else:
        img = np.ascontiguousarray(img, dtype=np.float64)
        var = np.ascontiguousarray(var, dtype=np.float64)
    if msk.dtype == np.bool_ and int(bad_bits) & 1:  # True is bit value 1
        # The pipeline's case, fused into one pass (five NumPy passes: ~10 ms at 4k).
        bad = np.empty(img.shape, dtype=bool)
        star_bad(np.ascontiguousarray(msk), img, var, bad)
    else:
        if msk.dtype == np.bool_:
            bad = np.zeros(img.shape, dtype=bool)
        else:
            bad = (msk.astype(np.int64) & int(bad_bits)) != 0
        bad |= ~np.isfinite(img)
        bad |= ~(var >= 0)  # NaN and negative variances
    opts = dict(saturation=saturation, size=size, size_sigmas=size_sigmas, degree=degree,
                min_stars=min_stars, max_stars=max_stars, snr_min=snr_min, snr_floor=snr_floor,
                clip_sigma=clip_sigma)  # fmt: skip
    if sources is not None:
        # sep never reads masked pixels, so the variance plane serves as is (NaN there).
        return _measure_from(img, var, var, bad, sources, img, **opts)

    # Background: a first pass, then again with the detected sources (dilated) masked so
    # that star wings do not lift the sky; second moments are very sensitive to it.
    # A caller whose image is already background-subtracted (the pipeline) skips both
    # background passes: on a 4k x 4k image they are most of this function's time.
    if subtract_background:
        bkg, _ = estimate_background(img, bad, box=background_box)
    else:
        bkg = np.zeros(1)
    det_var = np.where(bad | (var <= 0), np.inf, var)
    unusable = ~np.isfinite(det_var)
    if unusable.all():
        raise ValueError("no pixel has a positive finite variance: cannot detect stars")
    # Masked pixels are ignored by sep; they only need a finite placeholder.  A strided
    # subsample gives the typical variance at a fraction of a full median's cost.
    good_var = det_var[::7, ::7][~unusable[::7, ::7]]
    det_var[unusable] = float(np.median(good_var)) if good_var.size else 1.0
    sub = np.where(bad, 0.0, img - bkg)
    bad_u8 = bad.view(np.uint8)  # sep wants a numeric mask; bool and uint8 share bytes
    objs, seg = extract(sub, detect_thresh, var=det_var, mask=bad_u8, segmentation_map=True)
    objmask = binary_dilation(seg > 0, iterations=3) if subtract_background else None
    if objmask is not None and (bad | objmask).mean() < 0.9:
        bkg, _ = estimate_background(img, bad | objmask, box=background_box)
        sub = np.where(bad, 0.0, img - bkg)
    return _measure_from(sub, var, det_var, bad, objs, img, **opts)


def _measure_from(sub, var, det_var, bad, objs, img, *, saturation, size, size_sigmas, degree,
                  min_stars, max_stars, snr_min, snr_floor, clip_sigma) -> PsfModel:  # fmt: skip
    """Select, register and fit the stars of catalogue ``objs`` on the background-subtracted
    ``sub`` (``det_var``: the variance sep sees; ``img``: raw values for saturation)."""
    ny, nx = sub.shape
    counts: dict[str, int] = {"detected": len(objs)}

    def fail(stage: str, found: int) -> ValueError:
        detail = ", ".join(f"{k}={v}" for k, v in counts.items())
        return ValueError(
            f"found {found} usable PSF stars < required min_stars={min_stars} "
            f"(after {stage}; {detail})"
        )

    if len(objs) < min_stars:
        raise fail("detection", len(objs))

    x = objs["x"].astype(np.float64)
    y = objs["y"].astype(np.float64)
    ab = np.sqrt(np.maximum(objs["a"] * objs["b"], 0.0))
    ok = ((objs["flag"] & _SEP_BAD_FLAGS) == 0) & (ab > 0) & (objs["peak"] > 0)
    # The half-light aperture stops at the image edge: a bright star 22 px from the edge
    # was flagged "truncated" by an 8 ab = 24 px aperture and lost (DEC-OBS04c, (105, 234)).
    edge = np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])
    rmax = np.clip(np.minimum(8.0 * ab, edge - 1.5), 4.0, 60.0)  # sep rounds the box out
    rhalf = np.full(len(objs), np.nan)
    snr = np.zeros(len(objs))
    idx = np.flatnonzero(ok)
    if idx.size:
        # sep's flux_radius and sum_circle (subpix=5), bit for bit, in Numba: sep held the
        # GIL through ~3,700 radii per 4k image, so the two images' halves queued (issue 17).
        rad, rflag = flux_radius(sub, bad, x[idx], y[idx], rmax[idx], 0.5, subpix=5)
        rhalf[idx] = np.where((rflag == 0) & (rad > 0), rad, np.nan)
        rap = np.clip(2.0 * np.nan_to_num(rhalf[idx], nan=1.0), 1.5, 60.0)
        flux, fluxerr, _ = sum_circle(sub, det_var, bad, x[idx], y[idx], rap, subpix=5)
        snr[idx] = np.where(fluxerr > 0, flux / np.where(fluxerr > 0, fluxerr, 1.0), 0.0)
    ok &= np.isfinite(rhalf) & (snr > snr_floor)
    counts["bright"] = int(ok.sum())
    if counts["bright"] < min_stars:
        raise fail("S/N > snr_floor", counts["bright"])

    # Point-like: reject size outliers (galaxies are larger, cosmic rays smaller); two passes
    # of median/MAD so that a minority of non-stars cannot drag the reference size.
    keep = ok.copy()
    for _ in range(2):
        med = float(np.median(rhalf[keep]))
        # The 10% floor: real stars of one cut-out differ by 5-8% in half-light radius (PSF
        # variation and noise at S/N 30-100); 5% dropped two of the four stars of DEC-OBS18d.
        # Galaxies that matter are >= 1.5x (the DECam cut-outs' galaxy: 2.1-2.3x).
        tol = max(3.0 * mad_sigma(rhalf[keep]), 0.10 * med)
        trial = ok & (np.abs(rhalf - med) <= tol)
        if trial.sum() < min_stars:
            break  # keep the previous pass rather than clip below the minimum
        keep = trial
    ok = keep
    counts["point_like"] = int(ok.sum())
    if counts["point_like"] < min_stars:
        raise fail("size clipping", counts["point_like"])
    sigma_guess = float(np.median(rhalf[ok])) / GAUSS_RHALF_PER_SIGMA
    stamp = size if size is not None else stamp_size_for_sigma(sigma_guess, size_sigmas)
    half = stamp // 2
    pad = _PAD

    # Isolated: no other detection (of any brightness) within two stamp radii.
    tree = cKDTree(np.column_stack([x, y]))
    dist, _ = tree.query(np.column_stack([x, y]), k=2)
    ok &= dist[:, 1] > 2.0 * half
    counts["isolated"] = int(ok.sum())

    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    r = half + pad
    ok &= (ix - r >= 0) & (ix + r < nx) & (iy - r >= 0) & (iy + r < ny)
    counts["inside"] = int(ok.sum())

    # Clean, unsaturated stamps, brightest first.
    order = np.flatnonzero(ok)[np.argsort(-snr[ok])]
    chosen = []
    for i in order:
        ys, xs = slice(iy[i] - r, iy[i] + r + 1), slice(ix[i] - r, ix[i] + r + 1)
        if bad[ys, xs].any():
            continue
        if saturation is not None and img[ys, xs].max() >= 0.8 * saturation:
            continue
        chosen.append(int(i))
        if len(chosen) >= max_stars:
            break
    # Stars between snr_floor and snr_min only when the bright ones cannot carry the model
    # asked for: a 256 x 256 DECam cut-out has 4-8 usable stars, half of them at S/N 20-50
    # (tests/unit/test_psfmeasure_real.py), while a 4k x 4k field has hundreds above 50 and
    # the faint ones would only add noise to the median stack.
    n_bright = int(np.count_nonzero(snr[chosen] > snr_min)) if chosen else 0
    if n_bright >= max(min_stars, stars_needed(degree)):
        chosen = chosen[:n_bright]  # brightest first: the bright ones are the prefix
    counts["clean"] = len(chosen)
    if len(chosen) < min_stars:
        raise fail("stamp checks (isolation, edges, mask bits, saturation)", len(chosen))

    stars = _register(sub, var, bad, x, y, chosen, half, pad, sigma_guess)
    counts["registered"] = len(stars["x"])
    if counts["registered"] < min_stars:
        raise fail("registration", counts["registered"])

    w = snr[stars["index"]] ** 2
    w = np.minimum(w, 10.0 * np.median(w))
    # The stack (degree 0) is robust; spatial variation is then fitted as width/ellipticity
    # modes of that stack (jitcore/psfmodes.py explains why not per-pixel polynomials).
    coeffs, _, used_mask, resid_rms = _fit(
        stars, w, 0, (ny, nx), min_stars, clip_sigma, reject_stars=degree == 0
    )
    p0 = coeffs.reshape(stamp, stamp)
    p0 = p0 / p0.sum()
    deg = degree
    while deg > 0 and int(used_mask.sum()) < stars_needed(deg):
        deg -= 1
    if deg == 0:
        basis = p0[None]
    else:
        sel = np.flatnonzero(used_mask)
        basis, _, kept = fit_mode_model(
            stars["data"][sel], stars["nvar"][sel], stars["x"][sel], stars["y"][sel],
            w[sel], p0, degree=deg, shape=(ny, nx),
        )  # fmt: skip
        used_mask = used_mask.copy()
        used_mask[sel[~kept]] = False
        if not _plausible(basis, p0, deg, (ny, nx)):
            # A mode fit driven by too few or too noisy stars can extrapolate to a
            # non-PSF at the corners; the stack is then the honest answer.
            basis, deg = p0[None], 0
    used = int(used_mask.sum())
    model = PsfModel(basis=basis, degree=deg, shape=(ny, nx), source="measured", nstars=used)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    centre = model.at(cx, cy)
    ixx, iyy, ixy = psf_moments(centre)
    counts["used"] = used
    model.info = {
        "fwhm": float(FWHM_PER_SIGMA * np.sqrt(0.5 * (ixx + iyy))),
        "moments_centre": (ixx, iyy, ixy),
        "residual_rms": float(resid_rms / centre.max()),
        "sigma_guess": sigma_guess,
        "size": stamp,
        "degree_requested": degree,
        "counts": counts,
        # Positions of the stars kept by the fit, for QA plots and tests of the selection.
        "star_xy": [
            (float(a), float(b))
            for a, b in zip(stars["x"][used_mask], stars["y"][used_mask], strict=True)
        ],
    }
    return model


def _plausible(basis: np.ndarray, p0: np.ndarray, degree: int, shape) -> bool:
    """Widths at the centre and corners within 30% of the stack's, all moments positive."""
    trial = PsfModel(basis=basis, degree=degree, shape=shape)
    w0 = np.mean(psf_moments(p0)[:2])
    ny, nx = shape
    for x, y in ((0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1), ((nx - 1) / 2, (ny - 1) / 2)):
        ixx, iyy, _ = psf_moments(trial.at(x, y))
        if not (ixx > 0 and iyy > 0 and abs(0.5 * (ixx + iyy) / w0 - 1.0) < 0.69):
            return False
    return True


def _register(sub, var, bad, x, y, chosen, half, pad, sigma_guess) -> dict[str, np.ndarray]:
    """Windowed centroid, then a spline shift of each star onto the stamp centre."""
    sel = np.asarray(chosen, dtype=np.int64)
    ny, nx = sub.shape
    # sep's recommended window: sigma = 2/2.35 * half-light diameter.
    sig = np.full(sel.size, 2.0 / 2.35 * 2.0 * GAUSS_RHALF_PER_SIGMA * sigma_guess)
    xw, yw, wflag = winpos(sub, bad, x[sel], y[sel], sig)
    r = half + pad
    # APER_TRUNC alone is harmless: sep's window reaches 4 sigma, and a star whose
    # window is cut at >= 3.5 sigma by the image edge still centroids to < 0.01 px.
    # Otherwise the centroid did not converge near the detection: not a clean star.
    ok = ((wflag & ~APER_TRUNC) == 0) & (np.hypot(xw - x[sel], yw - y[sel]) <= 1.0)
    cx = np.rint(np.where(ok, xw, 0.0)).astype(np.int64)  # a rejected centroid may be NaN
    cy = np.rint(np.where(ok, yw, 0.0)).astype(np.int64)
    ok &= (cx - r >= 0) & (cx + r < nx) & (cy - r >= 0) & (cy + r < ny)  # whole cut-outs
    keep = np.flatnonzero(ok)
    empty = np.empty((0, (2 * half + 1) ** 2))
    if not keep.size:
        return {"index": sel[:0], "x": xw[:0], "y": yw[:0], "data": empty, "nvar": empty}
    cuts = np.stack([sub[cy[k] - r : cy[k] + r + 1, cx[k] - r : cx[k] + r + 1] for k in keep])
    shifted = subpixel_shift_stack(cuts, xw[keep] - cx[keep], yw[keep] - cy[keep], crop=pad)
    flux = shifted.sum(axis=(1, 2))
    good = flux > 0
    keep, shifted, flux = keep[good], shifted[good], flux[good]
    size = (2 * half + 1) ** 2
    nvar = np.empty((keep.size, size))
    for n, k in enumerate(keep):
        nvar[n] = var[cy[k] - half : cy[k] + half + 1, cx[k] - half : cx[k] + half + 1].ravel()
    f = flux[:, None]
    return {
        "index": sel[keep],
        "x": xw[keep],
        "y": yw[keep],
        "data": shifted.reshape(keep.size, size) / f,
        "nvar": nvar / f**2,
    }


def _solve(data, active, w, terms) -> np.ndarray:
    """Per-pixel weighted least squares: coefficients (nterms, npix)."""
    aw = active * w[:, None]  # (nstars, npix)
    normal = np.einsum("sp,si,sj->pij", aw, terms, terms)
    rhs = np.einsum("sp,si,sp->pi", aw, terms, data)
    # A tiny ridge keeps a pixel solvable if clipping left it with few stars.
    ridge = 1e-12 * np.trace(normal, axis1=1, axis2=2)[:, None, None]
    normal = normal + ridge * np.eye(terms.shape[1])[None]
    return np.linalg.solve(normal, rhs[..., None])[..., 0].T


def _median_stack(data, active) -> np.ndarray:
    masked = np.where(active, data, np.nan)
    med = np.nanmedian(masked, axis=0)
    # A pixel clipped in every star falls back to the plain median.
    return np.where(np.isfinite(med), med, np.median(data, axis=0))[None]


def _fit(stars, w, degree, shape, min_stars, clip_sigma, max_iter=5, reject_stars=True):
    data, nvar = stars["data"], stars["nvar"]
    use = np.ones(len(data), dtype=bool)
    active = np.ones(data.shape, dtype=bool)
    deg = degree
    for iteration in range(max_iter):
        while deg > 0 and use.sum() < stars_needed(deg):
            deg -= 1
        terms = _terms(stars["x"], stars["y"], deg, shape)
        act = active & use[:, None]
        coeffs = _median_stack(data, act) if deg == 0 else _solve(data, act, w, terms)
        model = terms @ coeffs
        resid = data - model
        # Model-error floor (2% of the model): registration and interpolation leave small
        # core residuals that grow with S/N; without it the brightest cores would be clipped.
        sigma = np.sqrt(np.maximum(nvar, 0.0) + (0.02 * model) ** 2)
        sigma = np.where(sigma > 0, sigma, np.inf)
        new_active = np.abs(resid) < clip_sigma * sigma
        chi2 = np.mean(np.where(new_active, (resid / sigma) ** 2, 0.0), axis=1)
        med = float(np.median(chi2[use]))
        thr = max(med + 5.0 * mad_sigma(chi2[use]), 1.5 * med)
        # Without a spatial model, stars far from the mean width look like outliers: the
        # mode fit (psfmodes) does the star-level clipping then.
        new_use = use & (chi2 <= thr) if reject_stars else use
        if new_use.sum() < min_stars:
            new_use = use
        converged = np.array_equal(new_use, use) and np.array_equal(new_active, active)
        if converged or iteration == max_iter - 1:
            break  # coeffs were fitted with exactly (use, active): keep them consistent
        use, active = new_use, new_active
    act = active & use[:, None]
    resid_rms = float(np.sqrt(np.mean(resid[act] ** 2))) if act.any() else float("nan")
    return coeffs, deg, use, resid_rms
