"""Long linear features (satellite streaks) in a detection mask: a Hough search, checked.

A simple, honest stand-in for LSST's MaskStreaksTask (a Kernel-Hough search on the
difference image's detection mask).  Steps, on the boolean ``detected`` image (the pixels of
|score| above the detection threshold, both signs):

1. Hough transform of the set pixels (angles every ``theta_step_deg``, rho bins of
   ``rho_bin`` px; the Numba accumulator in diffstream.jitcore._kernels.streaks).
2. Candidates in decreasing order of votes, while a bin holds at least ``min_length`` votes
   (a streak of length L and width >= 1 px gives >= L votes in its bin).  Each candidate's
   band (pixels within ``rho_bin`` + 1 px of the line) is projected on the line; the run
   along the line whose gaps are at most ``max_gap`` px must be at least ``min_length`` long
   and at least ``min_fill`` covered, and the band at least ``CONTRAST`` (4) times denser
   than the bands beside it.  That is what tells a streak from a row of point sources
   that a line happens to cross in a crowded field (short runs, large gaps, no contrast).
3. The line is refined by a principal-axis fit of the run's pixels, its band selected again
   along the refined line (a long streak leaves the coarse line's band by a pixel or two at
   its ends), and the run measured again.  Width: twice the 95th percentile of the pixels'
   distance from the line, plus 2 px.
4. The streak's pixels (within half the width + 1 px of the segment) are removed and the
   search repeats, up to ``max_streaks``.

:func:`streak_mask` paints the found segments into a boolean image.  Point sources never
make a streak unless they are lined up over ``min_length`` px with gaps under ``max_gap``;
tests/unit/test_streaks.py checks a crowded random field.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import numpy as np

from diffstream.jitcore._kernels import streaks as _k
from diffstream.jitcore.labels import threshold_pixels

__all__ = ["STREAK_DTYPE", "find_streaks", "find_streaks_above", "streak_mask"]

STREAK_DTYPE = np.dtype(
    [
        ("x0", np.float64),  # segment end points, pixels
        ("y0", np.float64),
        ("x1", np.float64),
        ("y1", np.float64),
        ("length", np.float64),  # px
        ("width", np.float64),  # px, the masked band's full width
        ("angle", np.float64),  # degrees CCW from +x in [0, 180)
        ("votes", np.int64),  # pixels of the detection mask in the band and run
    ]
)


CONTRAST = 4.0  # band density / flanking density a streak must reach


def _check(name: str, value: object, *, low: float, integer: bool = False) -> float:
    kind = "int" if integer else "number"
    ok = isinstance(value, numbers.Integral if integer else numbers.Real)
    if not ok or isinstance(value, bool):
        raise ValueError(f"{name} must be a {kind} > {low}, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and number > low):
        raise ValueError(f"{name} must be a finite {kind} > {low}, got {value!r}")
    return number


def _run(t: np.ndarray, max_gap: float) -> tuple[float, float, float]:
    """(start, end, covered px) of the longest run of positions ``t`` with gaps <= max_gap."""
    cells = np.unique(np.floor(t).astype(np.int64))
    if cells.size == 0:
        return 0.0, 0.0, 0.0
    breaks = np.flatnonzero(np.diff(cells) > max_gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [cells.size - 1]])
    lengths = cells[ends] - cells[starts] + 1
    k = int(np.argmax(lengths))
    return float(cells[starts[k]]), float(cells[ends[k]] + 1), float(ends[k] - starts[k] + 1)


def _band(xs, ys, x0, y0, c, s, half):
    """Along-line position t and perpendicular distance of the pixels within ``half`` px."""
    t = (xs - x0) * c + (ys - y0) * s
    d = -(xs - x0) * s + (ys - y0) * c
    keep = np.abs(d) <= half
    return keep, t, d


def find_streaks(
    detected: np.ndarray,
    *,
    min_length: float = 100.0,
    theta_step_deg: float = 0.25,
    rho_bin: float = 2.0,
    max_gap: float = 8.0,
    min_fill: float = 0.6,
    max_streaks: int = 5,
    max_candidates: int = 20,
) -> np.ndarray:
    """Streaks in the boolean image ``detected`` (2-D): a :data:`STREAK_DTYPE` array."""
    if not isinstance(detected, np.ndarray) or detected.ndim != 2 or detected.dtype != np.bool_:
        got = getattr(detected, "dtype", type(detected).__name__)
        raise TypeError(f"detected must be a 2-D bool ndarray, got {got}")
    ys, xs = np.nonzero(detected)
    return _search(xs.astype(np.int64), ys.astype(np.int64), detected.shape, min_length=min_length,
                   theta_step_deg=theta_step_deg, rho_bin=rho_bin, max_gap=max_gap,
                   min_fill=min_fill, max_streaks=max_streaks,
                   max_candidates=max_candidates)  # fmt: skip


# find_streaks' keyword defaults, the one statement of them (find_streaks_above's too).
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(find_streaks).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


def find_streaks_above(
    values: np.ndarray, valid: np.ndarray, threshold: float, **options: Any
) -> np.ndarray:
    """:func:`find_streaks` on the pixels of ``valid & isfinite(values) & (float32(|values|) >
    threshold)`` (``values`` float32/float64, ``valid`` bool, one 2-D shape), i.e. the
    detection footprints' pixels (jitcore.labels.threshold_pixels), without a boolean image;
    ``options`` are find_streaks' keywords.  Same result as find_streaks on that mask
    (tests/unit/test_streaks.py)."""
    ok = isinstance(values, np.ndarray) and values.dtype in (np.float32, np.float64)
    if not ok or values.ndim != 2:
        got = getattr(values, "dtype", type(values).__name__)
        raise TypeError(f"values must be a 2-D float32 or float64 ndarray, got {got}")
    if not isinstance(valid, np.ndarray) or valid.dtype != np.bool_ or valid.shape != values.shape:
        got = getattr(valid, "shape", type(valid).__name__)
        raise TypeError(f"valid must be a bool ndarray of shape {values.shape}, got {got}")
    thr = _check("threshold", threshold, low=0.0)
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))
    xs, ys = threshold_pixels(values, np.ascontiguousarray(valid), thr)
    return _search(xs, ys, values.shape, **{**_DEFAULTS, **options})


def _search(
    xs: np.ndarray,
    ys: np.ndarray,
    shape: tuple[int, ...],
    *,
    min_length: float,
    theta_step_deg: float,
    rho_bin: float,
    max_gap: float,
    min_fill: float,
    max_streaks: int,
    max_candidates: int,
) -> np.ndarray:
    """The search (module docstring) over the set pixels (xs, ys) (int64) of an image of
    ``shape``; the options' defaults are find_streaks' (_DEFAULTS)."""
    min_length = _check("min_length", min_length, low=0.0)
    theta_step = math.radians(_check("theta_step_deg", theta_step_deg, low=0.0))
    rho_bin = _check("rho_bin", rho_bin, low=0.0)
    max_gap = _check("max_gap", max_gap, low=-1.0)
    min_fill = _check("min_fill", min_fill, low=0.0)
    max_streaks = int(_check("max_streaks", max_streaks, low=0, integer=True))
    max_candidates = int(_check("max_candidates", max_candidates, low=0, integer=True))
    ny, nx = shape
    theta = np.arange(0.0, math.pi, theta_step)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    diag = math.hypot(nx, ny)
    rho_min = -diag
    nb = int(math.ceil(2 * diag / rho_bin)) + 1
    found: list[tuple] = []
    acc = np.empty((theta.size, nb), dtype=np.int32)
    while len(found) < max_streaks and xs.size >= min_length:
        acc[:] = 0
        _k.hough_accumulate(xs, ys, cos_t, sin_t, rho_min, rho_bin, acc)
        hit = None
        for _ in range(max_candidates):
            k, b = np.unravel_index(int(np.argmax(acc)), acc.shape)
            if acc[k, b] < min_length:
                break
            # Non-maximum suppression: the neighbours of a rejected peak are the same line.
            acc[max(k - 8, 0) : k + 9, max(b - 3, 0) : b + 4] = 0
            hit = _confirm(xs, ys, theta[k], rho_min + (b + 0.5) * rho_bin, rho_bin, max_gap,
                           min_length, min_fill)  # fmt: skip
            if hit is not None:
                break
        if hit is None:
            break
        row, gone = hit
        found.append(row)
        xs, ys = xs[~gone], ys[~gone]
    out = np.zeros(len(found), dtype=STREAK_DTYPE)
    for i, row in enumerate(found):
        out[i] = row
    return out


def _confirm(xs, ys, theta, rho, rho_bin, max_gap, min_length, min_fill):
    """The streak on the Hough line (theta, rho), refined, or None (see the module doc)."""
    c, s = math.cos(theta), math.sin(theta)
    x0, y0 = rho * c, rho * s  # the foot of the normal: a point of the line
    keep, t, _ = _band(xs, ys, x0, y0, -s, c, rho_bin + 1.0)
    lo, hi, covered = _run(t[keep], max_gap)
    if hi - lo < min_length:
        return None
    sel = keep & (t >= lo) & (t < hi)
    px, py = xs[sel].astype(np.float64), ys[sel].astype(np.float64)
    mx, my = px.mean(), py.mean()
    cov = np.cov(np.vstack([px - mx, py - my]))
    w, v = np.linalg.eigh(cov)
    ux, uy = v[:, int(np.argmax(w))]
    # Refined band: within 3 px + the coarse band's spread of the principal axis.
    _, _, d0 = _band(px, py, mx, my, ux, uy, np.inf)
    half = float(np.percentile(np.abs(d0), 95)) + 1.0
    keep, t, d = _band(xs, ys, mx, my, ux, uy, half + 1.0)
    lo, hi, covered = _run(t[keep], max_gap)
    length = hi - lo
    if length < min_length or covered < min_fill * length:
        return None
    sel = keep & (t >= lo) & (t < hi)
    width = 2.0 * float(np.percentile(np.abs(d[sel]), 95)) + 2.0
    # Contrast: the band must be much denser than the bands beside it (width to 3 widths
    # away on each side, the same stretch of line), or it is a crowded field's chance
    # alignment, not a feature (tests/unit/test_streaks.py, 12% of pixels set).
    along = (t >= lo) & (t < hi)
    in_band = float((along & (np.abs(d) <= 0.5 * width)).sum()) / (width * length)
    side = along & (np.abs(d) > width) & (np.abs(d) <= 3.0 * width)
    beside = float(side.sum()) / (4.0 * width * length)
    if in_band < CONTRAST * beside:
        return None
    ends = [(mx + ux * a, my + uy * a) for a in (lo, hi)]
    angle = math.degrees(math.atan2(uy, ux)) % 180.0
    gone = (np.abs(d) <= 0.5 * width + 1.0) & (t >= lo - width) & (t < hi + width)
    row = (ends[0][0], ends[0][1], ends[1][0], ends[1][1], length, width, angle, int(sel.sum()))
    return row, gone


def streak_mask(shape: tuple[int, int], streaks: np.ndarray) -> np.ndarray:
    """Boolean image of ``shape``: the pixels within half a streak's width (+ 1 px) of its
    segment, for every row of ``streaks`` (find_streaks output)."""
    ny, nx = shape
    out = np.zeros((ny, nx), dtype=bool)
    for st in streaks:
        half = 0.5 * float(st["width"]) + 1.0
        xa, ya, xb, yb = (float(st[k]) for k in ("x0", "y0", "x1", "y1"))
        i0 = max(int(math.floor(min(xa, xb) - half)), 0)
        i1 = min(int(math.ceil(max(xa, xb) + half)) + 1, nx)
        j0 = max(int(math.floor(min(ya, yb) - half)), 0)
        j1 = min(int(math.ceil(max(ya, yb) + half)) + 1, ny)
        if i0 >= i1 or j0 >= j1:
            continue
        yy, xx = np.mgrid[j0:j1, i0:i1].astype(np.float64)
        dx, dy = xb - xa, yb - ya
        seg2 = dx * dx + dy * dy
        u = np.clip(((xx - xa) * dx + (yy - ya) * dy) / seg2, 0.0, 1.0) if seg2 > 0 else 0.0
        dist = np.hypot(xx - (xa + u * dx), yy - (ya + u * dy))
        out[j0:j1, i0:i1] |= dist <= half
    return out
