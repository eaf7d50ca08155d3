"""Resampling a template onto the science pixel grid (numerics only; the WCS side is in
diffstream.stream.pipeline.warping).

The science-pixel -> template-pixel map is evaluated on a coarse grid of nodes and
interpolated with a bicubic spline (:func:`map_spline`): evaluating a TAN-SIP pair at
every pixel of a 4k x 4k image takes ~6 s, the nodes plus the fit ~5 ms, and for
TAN/SIP/TPV pairs the spline's error is far below 0.01 px (tests/unit/test_warping_wcs.py).

:func:`warp_image` resamples image, variance and mask at full-frame template positions
(xt, yt) (e.g. :func:`mapping_grid`) with a Lanczos kernel (diffstream.jitcore._kernels.lanczos);
:func:`warp_image_spline` does the same from the :class:`MapSpline`, evaluating the map
row by row inside the kernel, bit for bit the same result without the full-frame arrays.
Both share the output rows among ``workers`` threads.  Conventions, chosen here and
relied on downstream:

* output pixels without data (footprint leaves the template, touches a non-finite pixel or
  one of ``bad_bits``, or the map is non-finite there) have the NO_DATA bit set and **NaN**
  image and variance; the subtraction replaces NaNs and zero-weights NO_DATA;
* ``edge_bit`` (if given) is also set where the footprint is only *partly* off the template,
  so the template's boundary can be told from "no template at all";
* the other mask bits are OR-ed over the footprint (a flagged pixel dilates to the kernel's
  2a x 2a footprint, or less where a coordinate is an exact integer).

Known limit: Lanczos kernels do not reproduce a linear ramp exactly, so a resampled star's
centroid moves by the requested shift minus the kernel's first moment, a function of the
fractional position only: 0 at 0 and 1/2, up to ~0.02 px for order 3 (~0.012 for order 5;
tests/unit/test_warp.py::test_subpixel_shift_preserves_flux_and_moves_centroid).  Under
a rotation this varies across the image; ZOGY's astrometric-noise term absorbs it.

Mask bits are passed as bit *values* (``1 << index``, what :func:`diffstream.jitcore.masks.bits`
returns), not plane indices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffstream.jitcore._kernels.bspline import spline_grid
from diffstream.jitcore._kernels.lanczos import (
    BLOCK_SHIFT,
    lanczos_warp,
    lanczos_warp_spline,
    mask_blocks,
)
from diffstream.jitcore.masks import MASK_DTYPE
from diffstream.jitcore.psf import normalise_psf
from diffstream.jitcore.tiles import run_tiles, split_axis, thread_count

__all__ = [
    "MapSpline",
    "map_spline",
    "mapping_grid",
    "warp_image",
    "warp_image_spline",
    "warp_stamp",
    "local_jacobian",
]

Mapping = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

MIN_ORDER = 2
MAX_ORDER = 5
_INT32_MAX_BIT = 30  # bit 31 is the sign bit of the int32 mask


def _check_single_bit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int bit value, got {type(value).__name__}")
    value = int(value)
    if value <= 0 or value & (value - 1) or value > 1 << _INT32_MAX_BIT:
        rule = f"a single bit value 1 << k with 0 <= k <= {_INT32_MAX_BIT}"
        raise ValueError(f"{name} must be {rule}, got {value}")
    return value


def _check_bits(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int bit mask, got {type(value).__name__}")
    value = int(value)
    if value < 0 or value >= 1 << (_INT32_MAX_BIT + 1):
        raise ValueError(f"{name} must be in [0, 2**31), got {value}")
    return value


def _nodes(n: int, step: int) -> np.ndarray:
    nodes = np.arange(0, n, step, dtype=np.float64)
    if nodes[-1] != n - 1:
        nodes = np.append(nodes, float(n - 1))
    if nodes.size < 4:
        # A cubic spline needs 4 nodes per axis; the axis is short, so spread 4 over it.
        nodes = np.linspace(0.0, n - 1.0, 4)
    return nodes


def _fill_invalid(
    xx: np.ndarray, yy: np.ndarray, gx: np.ndarray, gy: np.ndarray, good: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Replace non-finite nodes by an affine fit of the good ones so the spline stays smooth.

    The filled values are placeholders: the cells touching them are set to NaN afterwards.
    """
    design = np.column_stack([np.ones(int(good.sum())), xx[good], yy[good]])
    full = np.column_stack([np.ones(xx.size), xx.ravel(), yy.ravel()])
    filled = []
    for g in (gx, gy):
        coef, *_ = np.linalg.lstsq(design, g[good], rcond=None)
        out = g.copy()
        out[~good] = (full @ coef).reshape(g.shape)[~good]
        filled.append(out)
    return filled[0], filled[1]


@dataclass(frozen=True, eq=False)
class MapSpline:
    """A science pixel -> template pixel map as a bicubic spline (from :func:`map_spline`).

    ``coef_x``/``coef_y`` are the B-spline coefficients of xt and yt; per science row
    (column) ``row_start``/``row_w`` (``col_start``/``col_w``) give the first of the 4
    non-zero basis functions and their values; ``cell_bad[cell_row[j], cell_col[i]]`` marks
    pixels whose coarse-grid cell touches a node where the mapping was not finite (NaN).
    Images shorter than 4 px on an axis keep the directly evaluated map in ``direct``.
    """

    shape: tuple[int, int]
    coef_x: np.ndarray
    coef_y: np.ndarray
    row_start: np.ndarray
    row_w: np.ndarray
    col_start: np.ndarray
    col_w: np.ndarray
    cell_row: np.ndarray
    cell_col: np.ndarray
    cell_bad: np.ndarray
    direct: tuple[np.ndarray, np.ndarray] | None = None

    def grid(
        self, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(xt, yt) float64 on the window ``rows`` x ``cols`` (half-open; None: all).

        The same numbers as the full grid at those pixels, whatever the window.
        """
        ny, nx = self.shape
        y0, y1 = _window("rows", rows, ny)
        x0, x1 = _window("cols", cols, nx)
        if self.direct is not None:
            xt, yt = self.direct
            return xt[y0:y1, x0:x1].copy(), yt[y0:y1, x0:x1].copy()
        xt = np.empty((y1 - y0, x1 - x0), dtype=np.float64)
        yt = np.empty_like(xt)
        spline_grid(
            self.coef_x, self.coef_y, self.row_start[y0:y1], self.row_w[y0:y1],
            self.col_start[x0:x1], self.col_w[x0:x1], self.cell_row[y0:y1],
            self.cell_col[x0:x1], self.cell_bad, xt, yt,
        )  # fmt: skip
        return xt, yt


def _window(name: str, span: tuple[int, int] | None, n: int) -> tuple[int, int]:
    if span is None:
        return 0, n
    lo, hi = (int(v) for v in span)
    if not 0 <= lo < hi <= n:
        raise ValueError(f"{name} must satisfy 0 <= start < stop <= {n}, got {span!r}")
    return lo, hi


def map_spline(mapping: Mapping, shape: tuple[int, int], *, step: int = 32) -> MapSpline:
    """Fit the bicubic spline of ``mapping`` over a science image of ``shape``.

    ``mapping(x, y) -> (xt, yt)`` is called once, vectorised, on nodes every ``step`` px
    (the last row/column always included); a bicubic interpolating spline (FITPACK,
    RectBivariateSpline with s=0: it passes through the nodes) fills the rest.  Images
    shorter than 4 px on an axis are evaluated directly (one vectorised call).  Where the
    mapping is non-finite at a node (e.g. a sky position a TAN template cannot project)
    the pixels of the cells touching that node map to NaN, which the warp turns into
    NO_DATA.  Nothing full-frame is allocated: :meth:`MapSpline.grid` evaluates the map,
    :func:`warp_image_spline` evaluates it row by row as it warps.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (ny, nx), got {shape!r}")
    ny, nx = (int(s) for s in shape)
    if ny < 1 or nx < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 2:
        raise ValueError(f"step must be >= 2, got {step}")
    if not callable(mapping):
        raise TypeError(f"mapping must be callable, got {type(mapping).__name__}")

    if ny < 4 or nx < 4:
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
        direct = _call(mapping, xx, yy)
        empty = np.zeros((0, 0))
        idx = np.zeros(0, dtype=np.int64)
        return MapSpline(
            (ny, nx), empty, empty, idx, empty, idx, empty, idx, idx,
            np.zeros((0, 0), np.uint8), direct=direct,
        )  # fmt: skip

    xn = _nodes(nx, int(step))
    yn = _nodes(ny, int(step))
    xx, yy = np.meshgrid(xn, yn)
    gx, gy = _call(mapping, xx, yy)
    good = np.isfinite(gx) & np.isfinite(gy)
    if good.sum() < 3:
        # Nothing to fit: every cell is bad, so every pixel maps to NaN.
        good[:] = False
        gx = np.zeros_like(gx)
        gy = np.zeros_like(gy)
    elif not good.all():
        gx, gy = _fill_invalid(xx, yy, gx, gy, good)

    from scipy.interpolate import RectBivariateSpline

    coefs = []
    for values in (gx, gy):
        spline = RectBivariateSpline(yn, xn, values, kx=3, ky=3, s=0)
        ty, tx = spline.get_knots()
        coefs.append(np.ascontiguousarray(spline.get_coeffs().reshape(ty.size - 4, tx.size - 4)))
    # An interpolating fit (s=0) puts its knots by the nodes alone, so xt and yt share
    # them and one basis serves both.
    row_start, row_w = _basis(np.arange(ny, dtype=np.float64), ty)
    col_start, col_w = _basis(np.arange(nx, dtype=np.float64), tx)
    # Pixel p lies in cell c = searchsorted(nodes, p) - 1; a cell is bad if a corner is.
    cell_row = np.clip(np.searchsorted(yn, np.arange(ny), side="right") - 1, 0, yn.size - 2)
    cell_col = np.clip(np.searchsorted(xn, np.arange(nx), side="right") - 1, 0, xn.size - 2)
    bad = ~good
    cell_bad = bad[:-1, :-1] | bad[1:, :-1] | bad[:-1, 1:] | bad[1:, 1:]
    return MapSpline(
        (ny, nx), coefs[0], coefs[1], row_start, row_w, col_start, col_w,
        cell_row.astype(np.int64), cell_col.astype(np.int64),
        np.ascontiguousarray(cell_bad, dtype=np.uint8),
    )  # fmt: skip


def _basis(points: np.ndarray, knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per point: index of its first non-zero cubic B-spline and the 4 non-zero values."""
    from scipy.interpolate import BSpline

    design = BSpline.design_matrix(points, knots, 3).tocsr()
    index = design.indices.reshape(-1, 4) if design.nnz == 4 * points.size else None
    if index is None or np.any(index != index[:, :1] + np.arange(4)):
        # scipy builds the design matrix with exactly k + 1 consecutive entries per row;
        # if that ever changes, this code must learn the new layout.
        msg = "unexpected B-spline design matrix layout (want 4 consecutive entries per row)"
        raise RuntimeError(msg)
    weights = np.ascontiguousarray(design.data.reshape(-1, 4), dtype=np.float64)
    return np.ascontiguousarray(index[:, 0], dtype=np.int64), weights


def mapping_grid(
    mapping: Mapping, shape: tuple[int, int], *, step: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Template pixel coordinates (xt, yt) of every science pixel, float64 arrays of ``shape``.

    The full-frame evaluation of :func:`map_spline` (see there for the nodes, the spline and
    NaN cells).  Where only the warp is needed, :func:`warp_image_spline` with the
    :class:`MapSpline` avoids these two full-frame arrays.
    """
    return map_spline(mapping, shape, step=step).grid()


def _call(mapping: Mapping, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = mapping(x, y)
    try:
        xt, yt = result
    except (TypeError, ValueError) as exc:
        msg = f"mapping must return a pair (xt, yt), got {type(result).__name__}"
        raise TypeError(msg) from exc
    xt = np.asarray(xt, dtype=np.float64)
    yt = np.asarray(yt, dtype=np.float64)
    if xt.shape != x.shape or yt.shape != x.shape:
        got = f"{xt.shape}, {yt.shape}"
        raise ValueError(f"mapping must return arrays of the input shape {x.shape}, got {got}")
    return xt, yt


def _float_pair(image: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    variance = np.asarray(variance)
    for name, arr in (("image", image), ("variance", variance)):
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} must be float32 or float64, got {arr.dtype}")
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    if image.shape != variance.shape:
        raise ValueError(f"variance shape {variance.shape} != image shape {image.shape}")
    # Mixed precision: compute in the wider type rather than silently truncating.
    dtype = np.result_type(image.dtype, variance.dtype)
    return np.ascontiguousarray(image, dtype=dtype), np.ascontiguousarray(variance, dtype=dtype)


def _check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"mask must have an integer dtype, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {shape}")
    if mask.dtype != MASK_DTYPE and mask.size and (mask.min() < 0 or mask.max() > 2**31 - 1):
        raise ValueError(
            f"mask values must fit int32 bit planes, got range [{mask.min()}, {mask.max()}]"
        )
    return np.ascontiguousarray(mask, dtype=MASK_DTYPE)


def _check_order(order: int) -> int:
    if isinstance(order, bool) or not isinstance(order, int | np.integer):
        raise TypeError(f"order must be an int, got {type(order).__name__}")
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise ValueError(f"order must be in [{MIN_ORDER}, {MAX_ORDER}], got {order}")
    return int(order)


# Output rows are split into bands run on a thread pool (the kernels release the GIL), a few
# bands per thread so a thread slowed by another process, or given a cheap all-NO_DATA
# band, does not leave the other idle at the end.  Numba's own parallel layer is not used
# (diffstream.jitcore._jit: the stream runs kernels from Python threads already).  Pixels are
# independent, so the result does not depend on the banding (tests/unit/test_warp.py::
# test_threaded_warp_equals_single_thread).
_BANDS_PER_THREAD = 4
_MIN_BAND_ROWS = 32


def _run_bands(ny: int, workers: int | None, run: Callable[[int, int], None]) -> None:
    """``run(j0, j1)`` over bands of ``range(ny)`` on ``workers`` threads (scipy.fft style)."""
    n_threads = thread_count(workers, max(1, ny // _MIN_BAND_ROWS))
    if n_threads == 1:
        run(0, ny)
        return
    rows = max(_MIN_BAND_ROWS, math.ceil(ny / (_BANDS_PER_THREAD * n_threads)))
    bands = split_axis(ny, rows)
    run_tiles(lambda k: run(*bands[k]), len(bands), n_threads)


def _check_warp_inputs(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    no_data_bit: int,
    edge_bit: int | None,
    bad_bits: int,
    order: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.int32, np.int32, np.int32], int]:
    image, variance = _float_pair(image, variance)
    mask = _check_mask(mask, image.shape)
    no_data = _check_single_bit("no_data_bit", no_data_bit)
    edge = 0 if edge_bit is None else _check_single_bit("edge_bit", edge_bit)
    bad = _check_bits("bad_bits", bad_bits)
    order = _check_order(order)
    return image, variance, mask, (np.int32(no_data), np.int32(edge), np.int32(bad)), order


def _blocks(mask: np.ndarray) -> np.ndarray:
    """Which square blocks of 2**BLOCK_SHIFT template pixels have a mask bit set (once per
    warp, shared by the bands)."""
    ny, nx = mask.shape
    out = np.empty((-(-ny >> BLOCK_SHIFT), -(-nx >> BLOCK_SHIFT)), dtype=np.uint8)
    mask_blocks(mask, np.empty(nx, dtype=mask.dtype), out)
    return out


def _outputs(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.empty(shape, dtype=np.float32),
        np.empty(shape, dtype=np.float32),
        np.empty(shape, dtype=MASK_DTYPE),
    )


def warp_image(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    xt: np.ndarray,
    yt: np.ndarray,
    *,
    no_data_bit: int,
    edge_bit: int | None = None,
    bad_bits: int = 0,
    order: int = 3,
    workers: int | None = -1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos-``order`` resampling of (image, variance, mask) at template positions (xt, yt).

    ``image``/``variance``/``mask`` are the template planes (ny_t, nx_t); ``xt``/``yt`` give,
    for every output (science) pixel, its position in template pixels (0-based, centres at
    integers), e.g. from :func:`mapping_grid`.  Returns (image float32, variance float32,
    mask int32) on the grid of ``xt``; units unchanged (variance in image units squared).

    Variance is propagated as sum(w^2 V) / (sum w)^2 (neighbouring output pixels become
    correlated; that covariance is not returned).  See the module docstring for NO_DATA,
    EDGE and mask rules.  Bits are bit values (``1 << plane``).  ``workers`` threads share
    the rows (scipy.fft convention: -1 all cores, None one thread); the result is the same
    for any value.  :func:`warp_image_spline` does the same from a :class:`MapSpline`
    without full-frame xt/yt.
    """
    image, variance, mask, bits, order = _check_warp_inputs(
        image, variance, mask, no_data_bit, edge_bit, bad_bits, order
    )
    xt = np.asarray(xt)
    yt = np.asarray(yt)
    for name, arr in (("xt", xt), ("yt", yt)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{name} must be a float array, got {arr.dtype}")
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    if xt.shape != yt.shape:
        raise ValueError(f"xt shape {xt.shape} != yt shape {yt.shape}")
    xt = np.ascontiguousarray(xt, dtype=np.float64)
    yt = np.ascontiguousarray(yt, dtype=np.float64)
    out = _outputs(xt.shape)
    blocks = _blocks(mask)

    def run(j0: int, j1: int) -> None:
        lanczos_warp(
            image, variance, mask, blocks, xt[j0:j1], yt[j0:j1], order, *bits,
            *(o[j0:j1] for o in out),
        )  # fmt: skip

    _run_bands(xt.shape[0], workers, run)
    return out


def warp_image_spline(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    spline: MapSpline,
    *,
    no_data_bit: int,
    edge_bit: int | None = None,
    bad_bits: int = 0,
    order: int = 3,
    workers: int | None = -1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`warp_image` at ``spline.grid()``, evaluating the map row by row as it goes.

    Bit for bit the result of ``warp_image(..., *spline.grid(), ...)``, without the two
    float64 full-frame arrays (256 MB at 4k x 4k) or the time to fill them.
    """
    if not isinstance(spline, MapSpline):
        raise TypeError(f"spline must be a MapSpline, got {type(spline).__name__}")
    if spline.direct is not None:
        # Tiny images (< 4 px on an axis) were evaluated directly: nothing to save.
        return warp_image(
            image, variance, mask, *spline.direct, no_data_bit=no_data_bit,
            edge_bit=edge_bit, bad_bits=bad_bits, order=order, workers=workers,
        )  # fmt: skip
    image, variance, mask, bits, order = _check_warp_inputs(
        image, variance, mask, no_data_bit, edge_bit, bad_bits, order
    )
    out = _outputs(spline.shape)
    blocks = _blocks(mask)
    sp = spline

    def run(j0: int, j1: int) -> None:
        lanczos_warp_spline(
            image, variance, mask, blocks, sp.coef_x, sp.coef_y, sp.row_start[j0:j1],
            sp.row_w[j0:j1], sp.col_start, sp.col_w, sp.cell_row[j0:j1], sp.cell_col,
            sp.cell_bad, order, *bits, *(o[j0:j1] for o in out),
        )  # fmt: skip

    _run_bands(spline.shape[0], workers, run)
    return out


def _check_jacobian(jacobian: np.ndarray) -> np.ndarray:
    jac = np.asarray(jacobian, dtype=np.float64)
    if jac.shape != (2, 2):
        raise ValueError(f"jacobian must be 2x2, got shape {jac.shape}")
    if not np.all(np.isfinite(jac)):
        raise ValueError(f"jacobian must be finite, got {jac.tolist()}")
    det = float(np.linalg.det(jac))
    if not abs(det) > 1e-6:
        raise ValueError(f"jacobian must be invertible (|det| > 1e-6), got det={det:g}")
    return jac


def warp_stamp(stamp: np.ndarray, jacobian: np.ndarray, *, order: int = 3) -> np.ndarray:
    """A PSF stamp in template pixels resampled into science pixels (float64, unit sum).

    ``jacobian`` is d(template pix)/d(science pix) as [[dxt/dx, dxt/dy], [dyt/dx, dyt/dy]]
    (:func:`local_jacobian`).  Output pixel offset d from the centre samples the template
    PSF at J d with the same Lanczos kernel as :func:`warp_image`, so the result is the PSF
    a star in the *warped* template actually has.  Same odd size as the input; the stamp is
    zero-padded, so samples falling outside it read zeros (the PSF's wings).
    """
    psf = normalise_psf(stamp)
    jac = _check_jacobian(jacobian)
    order = _check_order(order)
    size = psf.shape[0]
    half = size // 2
    pad = order + 1
    padded = np.pad(psf, pad)
    d = np.arange(size, dtype=np.float64) - half
    dx, dy = np.meshgrid(d, d)
    centre = half + pad
    xt = centre + jac[0, 0] * dx + jac[0, 1] * dy
    yt = centre + jac[1, 0] * dx + jac[1, 1] * dy
    out, _, out_mask = warp_image(
        padded,
        np.zeros_like(padded),
        np.zeros(padded.shape, dtype=MASK_DTYPE),
        xt,
        yt,
        no_data_bit=1,
        order=order,
        workers=None,  # a stamp is a few dozen rows: threads would cost more than they save
    )
    # Off the padded stamp the zero-padded PSF interpolates to exactly zero.
    result = np.where(out_mask & 1, 0.0, out.astype(np.float64))
    total = result.sum()
    if not total > 0:
        raise ValueError(f"warped stamp has non-positive sum {total:g} (jacobian {jac.tolist()})")
    return result / total


def local_jacobian(xt: np.ndarray, yt: np.ndarray, x: float, y: float) -> np.ndarray:
    """2x2 d(template pix)/d(science pix) at science pixel (x, y) from the mapping arrays.

    (x, y) is rounded to the nearest pixel.  Central differences, as
    [[dxt/dx, dxt/dy], [dyt/dx, dyt/dy]]; one-sided on the first/last row or column.
    Raises ValueError if the map is non-finite there.
    """
    xt = np.asarray(xt, dtype=np.float64)
    yt = np.asarray(yt, dtype=np.float64)
    if xt.ndim != 2 or xt.shape != yt.shape:
        raise ValueError(f"xt and yt must be 2-D of the same shape, got {xt.shape}, {yt.shape}")
    ny, nx = xt.shape
    if ny < 2 or nx < 2:
        raise ValueError(f"mapping arrays must be at least 2x2, got {xt.shape}")
    for name, v in (("x", x), ("y", y)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise TypeError(f"{name} must be a real pixel coordinate, got {type(v).__name__}")
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"pixel (x={x}, y={y}) must be finite")
    x, y = int(np.rint(x)), int(np.rint(y))
    if not (0 <= x < nx and 0 <= y < ny):
        raise ValueError(f"pixel (x={x}, y={y}) outside mapping arrays of shape {xt.shape}")
    x0, x1 = max(x - 1, 0), min(x + 1, nx - 1)
    y0, y1 = max(y - 1, 0), min(y + 1, ny - 1)
    jac = np.array(
        [
            [(xt[y, x1] - xt[y, x0]) / (x1 - x0), (xt[y1, x] - xt[y0, x]) / (y1 - y0)],
            [(yt[y, x1] - yt[y, x0]) / (x1 - x0), (yt[y1, x] - yt[y0, x]) / (y1 - y0)],
        ]
    )
    if not np.all(np.isfinite(jac)):
        raise ValueError(f"mapping is not finite around pixel (x={x}, y={y})")
    return jac
