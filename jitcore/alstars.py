"""Kernel-candidate stars for Alard-Lupton PSF matching (ip_diffim's kernel sources).

A candidate is a science detection with aperture S/N in ``snr_range`` (default 10-500, LSST's
kernel-source cut: faint stars add noise to the fit, the brightest are the likeliest to be
non-linear), with aperture S/N >= ``template_snr`` at the same place in the template (which
drops new transients and cosmic rays before the fit ever sees them), no brighter science
detection inside its stamp (isolated), and every pixel of its stamp and of the template
cutout the kernel reaches usable (so unsaturated: saturated pixels are among the unusable
ones).  At most ``per_cell`` of the highest-S/N candidates are kept in each ``cell`` x
``cell`` pixel cell, so that the spatial fit is not dominated by one crowded corner
(ip_diffim: 128 px cells, 5 stars), and at most ``max_stars`` in all.

The science detections are this module's own sep pass (3 sigma, 3x3 filter, deblended) or a
catalogue the caller already made (``detections``: the pipeline passes the PSF step's
diffstream.jitcore.sources.find_stars catalogue, 5 sigma, unfiltered, not deblended), which
serves when the stars chosen from it reach ``max_stars``.  The own pass was 0.5 s of a 4k AL
run, all of selectStars, holding the GIL (issue 17).  With the cap reached, the chosen are
the brightest of their cells, the stars a 5 sigma catalogue is least likely to miss; below
it, every star of S/N >= 10 counts, and the catalogue misses faint stars of broad PSFs (peak
pixel < 5 sigma): on the DECam cutouts it lost a S/N 17.5 star at FWHM 7.3 px, one of the
four kernel stars, and the clean detections of 18c-04e went 7 -> 13
(benchmarks/real_data_report.py).  What else differs with the catalogue: a star with a
brighter neighbour inside its 5 sigma isophote is one source at their barycentre instead of
two (kept or cut by the same S/N cuts; the kernel fit's rejection, jitcore.alardlupton,
takes out stamps that do not fit), and barycentres of another isophote round to other
pixels: on the 4k benchmark pair 910 of the 1000 chosen stamps are centred on the same pixel
and 994 within 1 px, and the 1249 diaSources are the same (positions within 0.003 px,
psfFlux within 0.005 sigma).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import sep
from scipy.spatial import cKDTree

from diffstream.jitcore._kernels.planes import sep_planes
from diffstream.jitcore.planes import native_float
from diffstream.jitcore.sources import extract

__all__ = ["KernelStars", "select_kernel_stars"]


@dataclass
class KernelStars:
    x: np.ndarray  # int64 pixel columns of the stamp centres
    y: np.ndarray  # int64 pixel rows
    snr: np.ndarray  # aperture S/N in the science image
    n_detected: int  # science detections before the cuts
    # Where the candidates came from: "catalogue" (the caller's ``detections``) or
    # "detection" (this module's own pass).
    source: str = "detection"


def _detect(image: np.ndarray, variance: np.ndarray, bad: np.ndarray, thresh: float) -> np.ndarray:
    # float32, not float64: sep converts every plane to float32 internally, so the catalogue
    # is the same, and the 4k copies cost half (0.8 s of a 4k AL run went here, issue 17).
    # One fused pass (_kernels.planes.sep_planes) for the six NumPy passes of
    # np.where(bad, 0, image) and sqrt(variance) with 1e30 where unusable (~40 ms at 4k).
    data = np.empty(image.shape, np.float32)
    err = np.empty(image.shape, np.float32)
    sep_planes(native_float(image), np.ascontiguousarray(bad), native_float(variance), data, err)
    # sep's default filter and deblending (32 levels, 0.005): close pairs come apart, so
    # the isolation cut below sees both members.
    return extract(data, thresh, err=err, mask=bad, minarea=5, deblend=True)


def _c(a: np.ndarray) -> np.ndarray:
    """C-contiguous native float32/float64 as sep wants it (a copy only when needed)."""
    dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("="))


def _unusable(bad: np.ndarray, image: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """``bad`` plus every pixel whose image or variance is not finite (as uint8 for sep)."""
    m = np.asarray(bad, dtype=bool) | ~np.isfinite(image) | ~np.isfinite(variance)
    return m.view(np.uint8)


def _box_has_bad(bad: np.ndarray, x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """True where the (2 half + 1)^2 box centred on (x, y) holds a bad pixel.

    One box per candidate (a few thousand boxes of ~6000 pixels): a summed-area table of the
    whole 4k mask cost 0.3-0.4 s and 128 MB for the same answer (issue 17).
    """
    return np.array(
        [bool(bad[yy - half : yy + half + 1, xx - half : xx + half + 1].any())
         for xx, yy in zip(x.tolist(), y.tolist(), strict=True)],
        dtype=bool,
    )  # fmt: skip


def select_kernel_stars(
    science: np.ndarray,
    science_variance: np.ndarray,
    template: np.ndarray,
    template_variance: np.ndarray,
    bad: np.ndarray,
    *,
    fwhm: float,
    stamp_half: int,
    margin: int,
    snr_range: tuple[float, float] = (10.0, 500.0),
    cell: int = 128,
    per_cell: int = 5,
    max_stars: int = 1000,
    detect_threshold: float = 3.0,
    template_snr: float = 5.0,
    detections: np.ndarray | None = None,
) -> KernelStars:
    """Stamp centres for the kernel fit (see the module docstring for the cuts).

    ``stamp_half``: half-size of the fitted stamp; ``margin``: extra pixels the template
    cutout needs around it (the kernel half-size).  ``fwhm`` (px) sets the S/N aperture
    (radius 1 FWHM).  Images must be background-subtracted; ``bad`` marks unusable pixels.
    ``detections``: the science's sources as a structured array with fields ``x``, ``y``
    (pixel, 0-based) and ``flux`` (for the isolation cut), used instead of a detection pass
    at ``detect_threshold`` when the stars chosen from them reach ``max_stars`` (module
    docstring); the result's ``source`` says which served.
    """
    choose = partial(
        _choose, science, science_variance, template, template_variance, bad, fwhm=fwhm,
        stamp_half=stamp_half, margin=margin, snr_range=snr_range, cell=cell,
        per_cell=per_cell, max_stars=max_stars, template_snr=template_snr,
    )  # fmt: skip
    if detections is not None:
        # The catalogue serves when the max_stars cap binds: the brightest stars fill it,
        # and a 5 sigma catalogue misses faint ones only (module docstring).
        got = choose(np.asarray(detections))
        if len(got.x) >= max_stars:
            got.source = "catalogue"
            return got
    return choose(_detect(science, science_variance, bad, detect_threshold))


def _choose(
    science: np.ndarray,
    science_variance: np.ndarray,
    template: np.ndarray,
    template_variance: np.ndarray,
    bad: np.ndarray,
    cat: np.ndarray,
    *,
    fwhm: float,
    stamp_half: int,
    margin: int,
    snr_range: tuple[float, float],
    cell: int,
    per_cell: int,
    max_stars: int,
    template_snr: float,
) -> KernelStars:
    """The cuts of :func:`select_kernel_stars` applied to the detections ``cat``."""
    ny, nx = science.shape
    empty = KernelStars(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), 0)
    names = cat.dtype.names or ()
    missing = [f for f in ("x", "y", "flux") if f not in names]
    if missing:
        raise ValueError(f"detections lack the fields {missing}")
    # Contiguous float64 columns (a catalogue row's fields are strided views).
    sci = {f: np.ascontiguousarray(cat[f], dtype=np.float64) for f in ("x", "y", "flux")}
    n_det = len(sci["x"])
    if not all(np.isfinite(v).all() for v in sci.values()):
        raise ValueError("detections must have finite x, y and flux")
    if n_det == 0:
        return empty
    # sep never reads masked pixels, so the planes go in as they are (no full-frame copies);
    # the mask covers every non-finite value.
    unusable = _unusable(bad, science, science_variance)
    flux, ferr, flag = sep.sum_circle(_c(science), sci["x"], sci["y"], max(fwhm, 1.5),
                                      var=_c(science_variance), mask=unusable)  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(ferr > 0, flux / ferr, 0.0)
    xi = np.floor(sci["x"] + 0.5).astype(np.int64)
    yi = np.floor(sci["y"] + 0.5).astype(np.int64)
    reach = stamp_half + margin
    ok = (flag == 0) & (snr >= snr_range[0]) & (snr <= snr_range[1])
    ok &= (xi >= reach) & (xi < nx - reach) & (yi >= reach) & (yi < ny - reach)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return KernelStars(empty.x, empty.y, empty.snr, n_det)
    idx = idx[~_box_has_bad(bad, xi[idx], yi[idx], reach)]
    if len(idx):
        # The template has the star too (aperture S/N at the science position): a cheap
        # stand-in for a second detection pass, which cost as much as the first.
        t_unusable = _unusable(bad, template, template_variance)
        tf, tfe, tflag = sep.sum_circle(_c(template), sci["x"][idx], sci["y"][idx],
                                        max(fwhm, 1.5), var=_c(template_variance),
                                        mask=t_unusable)  # fmt: skip
        with np.errstate(divide="ignore", invalid="ignore"):
            idx = idx[(tflag == 0) & (tfe > 0) & (tf >= template_snr * tfe)]
    # Isolation: no brighter detection within the stamp's circumradius.
    keep = np.ones(len(idx), dtype=bool)
    if len(idx):
        tree = cKDTree(np.column_stack([sci["x"], sci["y"]]))
        near = tree.query_ball_point(
            np.column_stack([sci["x"][idx], sci["y"][idx]]), np.sqrt(2.0) * stamp_half
        )
        for k, members in enumerate(near):
            keep[k] = not any(sci["flux"][m] > sci["flux"][idx[k]] for m in members)
    idx = idx[keep]
    # The brightest (within the S/N range) per cell.
    order = idx[np.argsort(-snr[idx], kind="stable")]
    cells = (yi[order] // cell) * (nx // cell + 1) + xi[order] // cell
    taken: dict[int, int] = {}
    chosen = []
    for i, c in zip(order, cells, strict=True):
        if taken.get(int(c), 0) < per_cell:
            taken[int(c)] = taken.get(int(c), 0) + 1
            chosen.append(i)
    # Then the max_stars highest-S/N of those (LSST's maxKernelSources): beyond ~1000 stars
    # the fit gains nothing and the stamps dominate the cost.
    chosen_arr = np.array(chosen[:max_stars], dtype=np.int64)
    return KernelStars(xi[chosen_arr], yi[chosen_arr], snr[chosen_arr], n_det)
