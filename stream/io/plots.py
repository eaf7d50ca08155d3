"""Debug plots of one subtraction (the seed's runDebug), written as PNG files.

:func:`write_debug_plots` draws, for one exposure:

``<prefix>-panels.png``
    science, warped template, difference and score, with the diaSources circled
    (positive: green circles, negative: magenta squares), zscale stretch, colorbars in nJy/sigma.
``<prefix>-cutouts.png``
    the alert cutouts (difference / science / template) of up to 20 diaSources, highest |S/N|
    first, decoded from the alerts' FITS bytes, i.e. exactly what a broker receives.
``<prefix>-score_hist.png``
    the histogram of S_corr on valid pixels against a unit Gaussian (log y), with the robust
    (MAD) width and the count beyond the detection threshold, observed and expected.
``<prefix>-psfs.png``
    science, template and difference PSFs at the centre and near the four corners, with FWHM
    and ellipticity and the half-maximum contour.
``<prefix>-kernels.png``
    only for Alard-Lupton results (``result.al_info.kernel_at(x, y)``): the matching kernels.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas, never pyplot: no global
state, no display, safe in a worker thread.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.visualization import ZScaleInterval
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from diffstream.jitcore.constants import FWHM_PER_SIGMA
from diffstream.jitcore.masks import UNUSABLE_PLANES, bits
from diffstream.jitcore.psf import psf_moments
from diffstream.jitcore.robust import mad_sigma

__all__ = ["PLOT_KINDS", "write_debug_plots", "plot_prefix", "decode_cutout"]

PLOT_KINDS = ("panels", "cutouts", "score_hist", "psfs")  # + "kernels" for AL results
# DS9-like marker colours: green/magenta stay visible on grey images and on the red/blue
# score map alike, and differ in lightness for colour-blind readers; the marker shapes
# (circle / square) carry the sign as well.
POS_COLOUR = "#00e040"
NEG_COLOUR = "#ff30ff"
BAD_COLOUR = "#c8b400"  # pixels without a valid value (masked, off the template)
_MAX_DISPLAY_PX = 2048  # larger images are block-averaged before drawing


# -- small helpers --------------------------------------------------------------------------
def plot_prefix(science: Any) -> str:
    """File-name prefix of one exposure: ``visit<V>-det<D>``, else ``exp<E>``, else ``exposure``."""
    visit = getattr(science, "visit", None)
    det = getattr(science, "detector", None)
    if visit is not None:
        return f"visit{int(visit)}-det{int(det or 0)}"
    exp = getattr(science, "exposure_id", None)
    return f"exp{int(exp)}" if exp is not None else "exposure"


def _title_ident(science: Any) -> str:
    parts = []
    for label, attr in (("visit", "visit"), ("detector", "detector"), ("exposure", "exposure_id")):
        value = getattr(science, attr, None)
        if value is not None:
            parts.append(f"{label} {value}")
    band = getattr(science, "band", None)
    if band:
        parts.append(f"band {band}")
    return "  ".join(parts) or "exposure"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    # Temporary name + rename: a reader never sees a half-written PNG.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
    return path


def _zscale(a: np.ndarray) -> tuple[float, float]:
    finite = a[np.isfinite(a)]
    if finite.size < 5:
        return -1.0, 1.0
    lo, hi = ZScaleInterval().get_limits(finite)
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
        if not hi > lo:
            lo, hi = lo - 1.0, hi + 1.0
    return float(lo), float(hi)


def _symmetric(a: np.ndarray) -> tuple[float, float]:
    lo, hi = _zscale(a)
    lim = max(abs(lo), abs(hi))
    return -lim, lim


def _display(a: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Block-average big images for display; the extent keeps pixel coordinates (centres at
    integers, LSST/astropy origin 0) so that markers are placed in image pixels."""
    ny, nx = a.shape
    extent = (-0.5, nx - 0.5, -0.5, ny - 0.5)
    k = math.ceil(max(ny, nx) / _MAX_DISPLAY_PX)
    if k <= 1:
        return a, extent
    py, px = (-ny) % k, (-nx) % k
    padded = np.pad(a.astype(np.float32), ((0, py), (0, px)), constant_values=np.nan)
    blocks = padded.reshape((ny + py) // k, k, (nx + px) // k, k)
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        small = np.nanmean(blocks, axis=(1, 3))
    return small, (-0.5, nx + px - 0.5, -0.5, ny + py - 0.5)


class _quiet_nanmean:  # noqa: N801 - used as a context manager like np.errstate
    def __enter__(self) -> None:
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def _cmap(name: str) -> colors.Colormap:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad=BAD_COLOUR)


def decode_cutout(data: bytes | None) -> np.ndarray | None:
    """The image plane of an alert cutout (FITS bytes), or None when absent or unreadable."""
    if not data:
        return None
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            image = hdul[0].data
            return None if image is None else np.asarray(image, dtype=np.float64)
    except (OSError, ValueError, TypeError):
        return None


def _science_njy(result: Any) -> tuple[np.ndarray, str]:
    sci = result.science
    if sci.photo_calib is None:
        return np.asarray(sci.image, dtype=np.float32), "counts"
    return (np.asarray(sci.image, dtype=np.float32) * np.float32(sci.photo_calib)), "nJy"


def _config_value(result: Any, key: str, default: Any) -> Any:
    """A science setting of the run, from the task metadata (``default`` when absent)."""
    try:
        meta = result.metadata
        return meta.get("config", step=meta.name)[key]
    except (AttributeError, KeyError, TypeError):
        return default


def _threshold(result: Any) -> float:
    return float(_config_value(result, "detection_threshold", 5.0))


def _method(result: Any) -> str:
    return str(_config_value(result, "method", "zogy"))


def _sources_xy(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = result.dia_sources
    x = np.array([float(s["x"]) for s in src])
    y = np.array([float(s["y"]) for s in src])
    neg = np.array([bool(s.get("isNegative")) for s in src], dtype=bool)
    return x, y, neg


# -- (a) image panels -----------------------------------------------------------------------
def _image_panel(fig, ax, image, *, title, unit, cmap, limits, x, y, neg) -> None:
    shown, extent = _display(image)
    im = ax.imshow(
        shown, origin="lower", extent=extent, cmap=_cmap(cmap), vmin=limits[0],
        vmax=limits[1], interpolation="antialiased",
    )  # fmt: skip
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.01)
    cb.set_label(unit)
    if x.size:
        pos = ~neg
        ax.scatter(
            x[pos], y[pos], s=110, marker="o", facecolors="none", edgecolors=POS_COLOUR,
            linewidths=1.3, label=f"positive ({int(pos.sum())})",
        )  # fmt: skip
        ax.scatter(
            x[neg], y[neg], s=110, marker="s", facecolors="none", edgecolors=NEG_COLOUR,
            linewidths=1.3, label=f"negative ({int(neg.sum())})",
        )  # fmt: skip
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def plot_panels(result: Any, path: Path, *, dpi: int = 90) -> Path:
    z = result.zogy
    sci, unit = _science_njy(result)
    # The template is background-subtracted, the file's science image may not be: remove its
    # median so that the two share one stretch (a sky level would otherwise flatten both).
    finite = np.isfinite(sci)
    sky = float(np.median(sci[finite])) if finite.any() else 0.0
    sci = sci - np.float32(sky)
    valid = np.asarray(z.valid, dtype=bool)
    diff = np.where(valid, z.difference, np.nan)
    score = np.where(valid, z.score, np.nan)
    template = np.where(np.isfinite(result.template_variance), result.template_image, np.nan)
    thr = _threshold(result)
    x, y, neg = _sources_xy(result)
    ny, nx = sci.shape
    aspect = ny / nx
    fig = _new_figure(13.0, 1.4 + 2 * 5.4 * aspect)
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    # Science and template share one stretch so that their brightness compares directly.
    s_lo, s_hi = _zscale(sci)
    t_lo, t_hi = _zscale(template)
    both = (min(s_lo, t_lo), max(s_hi, t_hi))
    common = dict(x=x, y=y, neg=neg)
    _image_panel(
        fig, axes[0, 0], sci, title=f"science (calibrated, median {sky:.3g} {unit} subtracted)",
        unit=f"flux per pixel [{unit}]", cmap="gray", limits=both, **common,
    )  # fmt: skip
    _image_panel(
        fig, axes[0, 1], template, title="template (warped to science grid, background subtracted)",
        unit="flux per pixel [nJy]", cmap="gray", limits=both, **common,
    )  # fmt: skip
    _image_panel(
        fig, axes[1, 0], diff, title=f"difference D ({_method(result)})",
        unit="flux per pixel [nJy]", cmap="gray", limits=_symmetric(diff), **common,
    )  # fmt: skip
    _image_panel(
        fig, axes[1, 1], score, title=f"score S_corr (detection at |S_corr| >= {thr:g} sigma)",
        unit="S_corr [sigma]", cmap="RdBu_r", limits=(-thr, thr), **common,
    )  # fmt: skip
    n_pos, n_neg = int((~neg).sum()), int(neg.sum())
    fig.suptitle(
        f"{_title_ident(result.science)}:  {n_pos} positive, {n_neg} negative diaSources",
        fontsize=13,
    )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(Patch(facecolor=BAD_COLOUR, edgecolor="none"))
    labels.append("no valid data (masked, dilated by the kernel)")
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=10, frameon=False)
    return _save(fig, path, dpi)


# -- (b) cutout mosaic ----------------------------------------------------------------------
def plot_cutouts(result: Any, path: Path, *, max_sources: int = 20, dpi: int = 90) -> Path:
    def strength(alert: dict[str, Any]) -> float:
        return abs(float(alert["diaSource"].get("snr") or 0.0))

    alerts = sorted(result.alerts, key=strength, reverse=True)[:max_sources]
    n = len(alerts)
    if n == 0:
        fig = _new_figure(6.0, 2.0)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, f"{_title_ident(result.science)}\nno diaSources: no cutouts",
                ha="center", va="center", fontsize=12)  # fmt: skip
        return _save(fig, path, dpi)
    groups = 1 if n <= 5 else 2
    rows = math.ceil(n / groups)
    fig = _new_figure(4.2 * groups + 0.6, 1.45 * rows + 0.9)
    axes = np.atleast_2d(fig.subplots(rows, 3 * groups))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for i, alert in enumerate(alerts):
        src = alert["diaSource"]
        row, g = i % rows, i // rows
        stamps = [decode_cutout(alert.get(k)) for k in
                  ("cutoutDifference", "cutoutScience", "cutoutTemplate")]  # fmt: skip
        present = [s for s in stamps[1:] if s is not None]
        st_lim = _zscale(np.concatenate([s.ravel() for s in present])) if present else (0, 1)
        neg = bool(src.get("isNegative"))
        colour = NEG_COLOUR if neg else POS_COLOUR
        for j, stamp in enumerate(stamps):
            ax = axes[row, 3 * g + j]
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colour if j == 0 else "0.6")
                spine.set_linewidth(2.0 if j == 0 else 0.8)
            if stamp is None:
                ax.text(0.5, 0.5, "no cutout", ha="center", va="center", fontsize=8)
                continue
            limits = _symmetric(stamp) if j == 0 else st_lim
            ax.imshow(stamp, origin="lower", cmap=_cmap("gray"), vmin=limits[0],
                      vmax=limits[1], interpolation="nearest")  # fmt: skip
        snr = float(src.get("snr") or 0.0)
        sign = "negative" if neg else "positive"
        axes[row, 3 * g].set_ylabel(
            f"id ...{int(src['diaSourceId']) % 10**6:06d}\nS/N {snr:+.1f} {sign}",
            fontsize=8, color="black", rotation=0, ha="right", va="center", labelpad=4,
        )  # fmt: skip
    for g in range(groups):
        for j, name in enumerate(("difference", "science", "template")):
            axes[0, 3 * g + j].set_title(name, fontsize=9)
    size = stamps[0].shape[0] if stamps[0] is not None else "?"
    fig.suptitle(
        f"{_title_ident(result.science)}: alert cutouts ({size} px, {n} of "
        f"{len(result.alerts)} diaSources by |S/N|)\n"
        f"difference: symmetric zscale; science and template: one zscale per source",
        fontsize=10,
    )
    return _save(fig, path, dpi)


# -- (c) S_corr histogram -------------------------------------------------------------------
def _normal_pdf(x: np.ndarray, mu: float = 0.0, sigma: float = 1.0) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def plot_score_hist(result: Any, path: Path, *, dpi: int = 90) -> Path:
    z = result.zogy
    valid = np.asarray(z.valid, dtype=bool) & np.isfinite(z.score)
    values = np.asarray(z.score, dtype=np.float64)[valid]
    thr = _threshold(result)
    fig = _new_figure(8.0, 5.2)
    ax = fig.add_subplot()
    ax.set_title(f"{_title_ident(result.science)}: S_corr of valid pixels", fontsize=11)
    ax.set_xlabel("S_corr [sigma]")
    ax.set_ylabel("probability density [1/sigma]")
    if values.size < 10:
        ax.text(0.5, 0.5, f"only {values.size} valid pixels", transform=ax.transAxes,
                ha="center", va="center")  # fmt: skip
        return _save(fig, path, dpi)
    lim = max(8.0, thr + 3.0)
    edges = np.linspace(-lim, lim, int(20 * lim) + 1)
    counts, _ = np.histogram(np.clip(values, -lim, lim), bins=edges)
    width = edges[1] - edges[0]
    density = counts / (values.size * width)
    ax.stairs(density, edges, color="black", linewidth=1.2, label=f"S_corr ({values.size} px)")
    med = float(np.median(values))
    robust = mad_sigma(values)
    grid = np.linspace(-lim, lim, 600)
    ax.plot(grid, _normal_pdf(grid), color="tab:blue", lw=1.5, label="unit Gaussian N(0, 1)")
    if robust > 0:
        ax.plot(grid, _normal_pdf(grid, med, robust), color="tab:orange", lw=1.2, ls="--",
                label=f"N({med:+.3f}, {robust:.3f}) robust fit")  # fmt: skip
    for t in (-thr, thr):
        ax.axvline(t, color="tab:red", lw=1.0, ls=":")
    beyond = int((np.abs(values) >= thr).sum())
    expected = values.size * math.erfc(thr / math.sqrt(2.0))
    ax.set_yscale("log")
    ax.set_ylim(0.3 / (values.size * width), 1.0)
    ax.set_xlim(-lim, lim)
    ax.legend(loc="upper right", fontsize=9)
    text = (
        f"median {med:+.3f}, robust sigma (1.4826 MAD) {robust:.3f}\n"
        f"std {values.std():.3f}; valid {valid.mean():.1%} of the image\n"
        f"|S_corr| >= {thr:g}: {beyond} px (N(0,1) expects {expected:.2g})\n"
        f"values beyond +-{lim:g} are counted in the end bins"
    )
    ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})  # fmt: skip
    return _save(fig, path, dpi)


# -- (d) PSFs and (e) kernels ---------------------------------------------------------------
def _positions(shape: tuple[int, int]) -> list[tuple[str, float, float]]:
    """The centre and four points 1/8 of the way in from the corners (x, y in pixels)."""
    ny, nx = shape
    x0, x1 = (nx - 1) / 8.0, (nx - 1) * 7.0 / 8.0
    y0, y1 = (ny - 1) / 8.0, (ny - 1) * 7.0 / 8.0
    return [
        ("centre", (nx - 1) / 2.0, (ny - 1) / 2.0),
        ("lower left", x0, y0),
        ("lower right", x1, y0),
        ("upper left", x0, y1),
        ("upper right", x1, y1),
    ]


def _psf_models(result: Any) -> tuple[Any, str, Any, str]:
    """Science and template PSF models: the pipeline's when the result carries them,
    else re-measured from the result's images the way the pipeline does (labelled so)."""
    from diffstream.jitcore.psfmeasure import measure_psf

    sci_psf = getattr(result, "psf_science", None)
    tmpl_psf = getattr(result, "psf_template", None)
    sci_note = tmpl_note = ""
    if sci_psf is None:
        sci = result.science
        image, _ = _science_njy(result)
        c = float(sci.photo_calib or 1.0)
        bad = (sci.mask & bits(sci.mask_planes, list(UNUSABLE_PLANES))) != 0
        try:
            sci_psf = measure_psf(
                image, sci.variance * c * c, bad.astype(np.int32), bad_bits=1, degree=1
            )
            sci_note = " (re-measured for this plot)"
        except ValueError:
            sci_psf, sci_note = sci.psf, " (from the file)"
    if tmpl_psf is None:
        bad = ~np.isfinite(result.template_variance)
        try:
            tmpl_psf = measure_psf(
                result.template_image, np.where(bad, 0, result.template_variance),
                bad.astype(np.int32), bad_bits=1, degree=1,
            )  # fmt: skip
            tmpl_note = " (re-measured for this plot)"
        except ValueError:
            tmpl_psf = None
    return sci_psf, sci_note, tmpl_psf, tmpl_note


def _stamp_panel(ax, stamp: np.ndarray | None, norm, *, half: int, annotate: bool) -> Any:
    # Stamps smaller than the row's largest sit on a dark background, not white, so that
    # the white labels stay readable and the stamp edge is not mistaken for signal.
    ax.set_facecolor("0.12")
    ax.set_xlim(-half - 0.5, half + 0.5)
    ax.set_ylim(-half - 0.5, half + 0.5)
    if stamp is None:
        ax.text(0.5, 0.5, "not available", transform=ax.transAxes, ha="center", va="center")
        return None
    h = stamp.shape[0] // 2
    ext = (-h - 0.5, h + 0.5, -h - 0.5, h + 0.5)
    im = ax.imshow(stamp, origin="lower", extent=ext, norm=norm, cmap="magma",
                   interpolation="nearest")  # fmt: skip
    if annotate:
        peak = float(stamp.max())
        coords = np.arange(-h, h + 1)
        ax.contour(coords, coords, stamp, levels=[0.5 * peak], colors="cyan", linewidths=0.8)
        ixx, iyy, ixy = psf_moments(stamp)
        fwhm = FWHM_PER_SIGMA * math.sqrt(max(0.5 * (ixx + iyy), 0.0))
        e = math.hypot(ixx - iyy, 2 * ixy) / (ixx + iyy) if ixx + iyy > 0 else 0.0
        ax.text(0.04, 0.96, f"FWHM {fwhm:.2f} px\ne {e:.3f}", transform=ax.transAxes,
                va="top", ha="left", color="white", fontsize=8)  # fmt: skip
    return im


def plot_psfs(result: Any, path: Path, *, dpi: int = 90) -> Path:
    z = result.zogy
    shape = result.science.shape
    sci_psf, sci_note, tmpl_psf, tmpl_note = _psf_models(result)
    pos = _positions(shape)
    rows: list[tuple[str, list[np.ndarray | None]]] = [
        (f"science{sci_note}", [sci_psf.at(x, y) if sci_psf is not None else None
                                for _, x, y in pos]),
        (f"template{tmpl_note}", [tmpl_psf.at(x, y) if tmpl_psf is not None else None
                                  for _, x, y in pos]),
        (f"difference P_D ({_method(result)})", [np.asarray(z.tile_at(x, y).psf_d, dtype=np.float64)
                                   for _, x, y in pos]),
    ]  # fmt: skip
    stamps = [s for _, row in rows for s in row if s is not None]
    half = max(s.shape[0] // 2 for s in stamps)
    fig = _new_figure(2.6 * len(pos) + 1.2, 2.7 * len(rows) + 0.8)
    axes = fig.subplots(len(rows), len(pos), squeeze=False)
    for r, (label, row) in enumerate(rows):
        peak = max((float(s.max()) for s in row if s is not None), default=1.0)
        # asinh stretch: linear core, logarithmic wings, so that both the FWHM and the
        # wings (where a PSF mismatch shows in the difference) are visible.
        norm = colors.AsinhNorm(linear_width=0.01 * peak, vmin=-0.01 * peak, vmax=peak)
        im = None
        for c, stamp in enumerate(row):
            ax = axes[r, c]
            im = _stamp_panel(ax, stamp, norm, half=half, annotate=True) or im
            if r == 0:
                ax.set_title(f"{pos[c][0]} ({pos[c][1]:.0f}, {pos[c][2]:.0f})", fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("dx [px]")
            if c == 0:
                ax.set_ylabel(f"{label}\ndy [px]", fontsize=9)
        if im is not None:
            cb = fig.colorbar(im, ax=list(axes[r]), shrink=0.9, pad=0.01)
            # Explicit ticks: the asinh axis otherwise crowds labels around zero.
            ticks = [t for t in (0.0, 1e-3, 1e-2, 1e-1, 1.0) if t <= peak]
            cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
            cb.set_label("fraction of flux per px", fontsize=8)
    fig.suptitle(
        f"{_title_ident(result.science)}: PSFs (unit sum; asinh stretch; cyan: half maximum)",
        fontsize=11,
    )
    return _save(fig, path, dpi)


def plot_kernels(result: Any, path: Path, *, dpi: int = 90) -> Path | None:
    """AL matching kernels at the PSF positions; None when ``result`` has no ``al_info``."""
    info = getattr(result, "al_info", None)
    if info is None or not hasattr(info, "kernel_at"):
        return None
    pos = _positions(result.science.shape)
    kernels = [np.asarray(info.kernel_at(x, y), dtype=np.float64) for _, x, y in pos]
    lim = max(float(np.abs(k).max()) for k in kernels) or 1.0
    half = max(k.shape[0] // 2 for k in kernels)
    fig = _new_figure(2.9 * len(pos) + 1.5, 3.9)
    axes = fig.subplots(1, len(pos), squeeze=False, sharex=True, sharey=True)[0]
    norm = colors.Normalize(vmin=-lim, vmax=lim)
    im = None
    for ax, (name, x, y), k in zip(axes, pos, kernels, strict=True):
        h = k.shape[0] // 2
        im = ax.imshow(k, origin="lower", extent=(-h - 0.5, h + 0.5, -h - 0.5, h + 0.5),
                       norm=norm, cmap="RdBu_r", interpolation="nearest")  # fmt: skip
        ax.set_xlim(-half - 0.5, half + 0.5)
        ax.set_ylim(-half - 0.5, half + 0.5)
        ax.set_title(f"{name} ({x:.0f}, {y:.0f})", fontsize=9)
        ax.set_xlabel("dx [px]")
        ax.text(0.04, 0.96, f"sum {k.sum():.4f}", transform=ax.transAxes, va="top",
                fontsize=8)  # fmt: skip
    axes[0].set_ylabel("dy [px]")
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.9, pad=0.01).set_label("kernel value")
    # diffstream.jitcore.alardlupton.ALInfo says which image was convolved (ip_diffim's modes).
    direction = str(getattr(info, "direction", "convolveTemplate"))
    what = (
        "science convolved with K matches the template"
        if direction == "convolveScience"
        else "template convolved with K matches the science"
    )
    extra = []
    if getattr(info, "n_stars_used", None) is not None:
        extra.append(f"{info.n_stars_used} stars")
    if getattr(info, "residual_rms", None) is not None:
        extra.append(f"residual rms {float(info.residual_rms):.3g}")
    fig.suptitle(
        f"{_title_ident(result.science)}: Alard-Lupton matching kernels ({direction})\n"
        f"{what}; sum = photometric scale" + ("; " + ", ".join(extra) if extra else ""),
        fontsize=10,
    )
    return _save(fig, path, dpi)


# -- entry point ----------------------------------------------------------------------------
def write_debug_plots(
    result: Any,
    outdir: str | Path,
    *,
    prefix: str | None = None,
    max_cutouts: int = 20,
    dpi: int = 90,
    kinds: Sequence[str] | None = None,
) -> list[Path]:
    """Write the debug PNGs of one :class:`stream.pipeline.subtract.SubtractResult` into ``outdir``.

    File names are ``<prefix>-<kind>.png`` with ``prefix`` from :func:`plot_prefix`
    (``visit<V>-det<D>``) and kind in :data:`PLOT_KINDS` (plus ``kernels`` for AL results).
    ``kinds`` selects a subset.  Returns the paths written, in that order.
    """
    wanted = tuple(PLOT_KINDS) + ("kernels",) if kinds is None else tuple(kinds)
    unknown = sorted(set(wanted) - set(PLOT_KINDS) - {"kernels"})
    if unknown:
        raise ValueError(f"kinds must be among {list(PLOT_KINDS) + ['kernels']}, got {unknown}")
    if max_cutouts < 1:
        raise ValueError(f"max_cutouts must be >= 1, got {max_cutouts}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    stem = prefix if prefix is not None else plot_prefix(result.science)
    paths: list[Path] = []
    for kind in wanted:
        path = out / f"{stem}-{kind}.png"
        if kind == "panels":
            paths.append(plot_panels(result, path, dpi=dpi))
        elif kind == "cutouts":
            paths.append(plot_cutouts(result, path, max_sources=max_cutouts, dpi=dpi))
        elif kind == "score_hist":
            paths.append(plot_score_hist(result, path, dpi=dpi))
        elif kind == "psfs":
            paths.append(plot_psfs(result, path, dpi=dpi))
        else:
            written = plot_kernels(result, path, dpi=dpi)
            if written is not None:
                paths.append(written)
    return paths
