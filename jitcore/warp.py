"""Resampling a template onto the science pixel grid (numerics only; the WCS side is in
stream.warping).

The science-pixel -> template-pixel map is evaluated on a coarse grid of nodes and
interpolated with a bicubic spline (:func:`mapping_grid`): evaluating a TAN-SIP pair at
every pixel of a 4k x 4k image takes ~6 s, the nodes plus spline ~0.3 s, and for
TAN/SIP/TPV pairs the spline's error is far below 0.01 px (tests/unit/test_warping_wcs.py).

:func:`warp_image` then resamples image, variance and mask with a Lanczos kernel
(jitcore._kernels.lanczos).  Conventions, chosen here and relied on downstream:

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

Mask bits are passed as bit *values* (``1 << index``, what :func:`jitcore.masks.bits`
returns), not plane indices.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jitcore._kernels.lanczos import lanczos_warp
from jitcore.masks import MASK_DTYPE
from jitcore.psf import normalise_psf

__all__ = ["mapping_grid", "warp_image", "warp_stamp", "local_jacobian"]

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


def mapping_grid(
    mapping: Mapping, shape: tuple[int, int], *, step: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Template pixel coordinates (xt, yt) of every science pixel, float64 arrays of ``shape``.

    ``mapping(x, y) -> (xt, yt)`` is called once, vectorised, on nodes every ``step`` px
    (the last row/column always included); a bicubic interpolating spline fills the rest.
    Images shorter than 4 px on an axis are evaluated directly (one vectorised call).
    Where the mapping is non-finite at a node (e.g. a sky position a TAN template cannot
    project) the pixels of the cells touching that node come back NaN, which
    :func:`warp_image` turns into NO_DATA.
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
        return _call(mapping, xx, yy)

    xn = _nodes(nx, int(step))
    yn = _nodes(ny, int(step))
    xx, yy = np.meshgrid(xn, yn)
    gx, gy = _call(mapping, xx, yy)
    good = np.isfinite(gx) & np.isfinite(gy)
    if good.sum() < 3:
        nan = np.full((ny, nx), np.nan)
        return nan, nan.copy()
    if not good.all():
        gx, gy = _fill_invalid(xx, yy, gx, gy, good)

    xs = np.arange(nx, dtype=np.float64)
    ys = np.arange(ny, dtype=np.float64)
    xt = _spline_on_grid(yn, xn, gx, ys, xs)
    yt = _spline_on_grid(yn, xn, gy, ys, xs)
    if not good.all():
        # Cells with a bad corner: pixel p lies in cell c = searchsorted(nodes, p) - 1.
        cy = np.clip(np.searchsorted(yn, ys, side="right") - 1, 0, yn.size - 2)
        cx = np.clip(np.searchsorted(xn, xs, side="right") - 1, 0, xn.size - 2)
        bad = ~good
        cell_bad = bad[:-1, :-1] | bad[1:, :-1] | bad[:-1, 1:] | bad[1:, 1:]
        pix_bad = cell_bad[np.ix_(cy, cx)]
        xt[pix_bad] = np.nan
        yt[pix_bad] = np.nan
    return np.ascontiguousarray(xt), np.ascontiguousarray(yt)


def _spline_on_grid(
    yn: np.ndarray, xn: np.ndarray, values: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Bicubic interpolating spline through ``values`` at nodes (yn, xn), on the full grid.

    The spline is fitted by FITPACK (RectBivariateSpline, s=0: it passes through the nodes)
    but evaluated as B_y @ C @ B_x.T with dense B-spline design matrices: the same numbers
    (to 1e-12 px) at half the cost of FITPACK's per-point evaluation for a 4k x 4k grid,
    because the product runs in BLAS.
    """
    from scipy.interpolate import BSpline, RectBivariateSpline

    spline = RectBivariateSpline(yn, xn, values, kx=3, ky=3, s=0)
    ty, tx = spline.get_knots()
    coef = spline.get_coeffs().reshape(ty.size - 4, tx.size - 4)
    by = BSpline.design_matrix(ys, ty, 3).toarray()
    bx = BSpline.design_matrix(xs, tx, 3).toarray()
    return np.ascontiguousarray((by @ coef) @ bx.T)


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos-``order`` resampling of (image, variance, mask) at template positions (xt, yt).

    ``image``/``variance``/``mask`` are the template planes (ny_t, nx_t); ``xt``/``yt`` give,
    for every output (science) pixel, its position in template pixels (0-based, centres at
    integers), e.g. from :func:`mapping_grid`.  Returns (image float32, variance float32,
    mask int32) on the grid of ``xt``; units unchanged (variance in image units squared).

    Variance is propagated as sum(w^2 V) / (sum w)^2 (neighbouring output pixels become
    correlated; that covariance is not returned).  See the module docstring for NO_DATA,
    EDGE and mask rules.  Bits are bit values (``1 << plane``).
    """
    image, variance = _float_pair(image, variance)
    mask = _check_mask(mask, image.shape)
    xt = np.asarray(xt)
    yt = np.asarray(yt)
    for name, arr in (("xt", xt), ("yt", yt)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{name} must be a float array, got {arr.dtype}")
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    if xt.shape != yt.shape:
        raise ValueError(f"xt shape {xt.shape} != yt shape {yt.shape}")
    no_data = _check_single_bit("no_data_bit", no_data_bit)
    edge = 0 if edge_bit is None else _check_single_bit("edge_bit", edge_bit)
    bad = _check_bits("bad_bits", bad_bits)
    order = _check_order(order)

    out_img = np.empty(xt.shape, dtype=np.float32)
    out_var = np.empty(xt.shape, dtype=np.float32)
    out_mask = np.empty(xt.shape, dtype=MASK_DTYPE)
    lanczos_warp(
        image,
        variance,
        mask,
        np.ascontiguousarray(xt, dtype=np.float64),
        np.ascontiguousarray(yt, dtype=np.float64),
        order,
        np.int32(no_data),
        np.int32(edge),
        np.int32(bad),
        out_img,
        out_var,
        out_mask,
    )
    return out_img, out_var, out_mask


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
