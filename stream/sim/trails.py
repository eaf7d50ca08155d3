"""Fast movers for the simulator: trailed sources on the science exposure only.

A source moving uniformly during the exposure is the PSF convolved with a line segment.  It is
rendered here as the average of point sources (the simulator's own pixel-integrated PSF,
Gaussian or Moffat, through :func:`diffstream.stream.sim.render.add_point_sources`) spaced
at most ``0.2`` PSF sigma along the segment (midpoint rule): independent of the pipeline's
trail model (diffstream.jitcore._kernels.trails, an analytic Gaussian x erf form), so the
science test compares two different computations.

Truth S/N (``snr_expected``): ZOGY's optimal S/N for the trail (render.zogy_flux_variance
with the trailed science and template PSFs: the segment's transform factors out of
ZOGY's F_S, so this is F_S of the segment-convolved PSFs).  Ignored: the source's own photon
noise, and the template's 1-2 degree rotation (the template trail stamp uses the science
angle).
"""

from __future__ import annotations

import math

import numpy as np

from diffstream.stream.sim import render

__all__ = ["TRAIL_TRUTH_DTYPE", "add_streak", "add_trails", "draw_trails"]

TRAIL_TRUTH_DTYPE = np.dtype(
    [("id", "i8"), ("x", "f8"), ("y", "f8"), ("ra", "f8"), ("dec", "f8")]
    + [("length_px", "f8"), ("angle_deg", "f8")]  # angle: CCW from +x in [0, 180)
    + [("flux_njy", "f8"), ("sigma_flux_njy", "f8"), ("snr_expected", "f8")]
)

STEP_SIGMA = 0.2  # sub-point spacing along the segment, in PSF sigmas


def _points(x: float, y: float, length: float, theta: float, sigma: float):
    n = max(1, math.ceil(length / (STEP_SIGMA * sigma)))
    t = ((np.arange(n) + 0.5) / n - 0.5) * length
    return x + t * math.cos(theta), y + t * math.sin(theta)


def _segment_stamp(frame: render.Frame, x: float, y: float, length: float, theta: float):
    sigma = float(frame.sigma_map(x, y))
    half = frame.profile.half_size(sigma) + math.ceil(0.5 * length)
    stamp = np.zeros((2 * half + 1, 2 * half + 1))
    xs, ys = _points(0.0, 0.0, length, theta, sigma)
    render.add_point_sources(stamp, xs + half, ys + half, np.full(xs.size, 1.0 / xs.size),
                             np.full(xs.size, sigma), profile=frame.profile)  # fmt: skip
    return stamp / stamp.sum()


def draw_trails(
    rng: np.random.Generator,
    sci: render.Frame,
    tmp: render.Frame,
    n: int,
    *,
    length_px: tuple[float, float],
    snr: tuple[float, float],
    avoid_xy: np.ndarray,
    min_sep: float,
    margin: float,
) -> np.ndarray:
    """Truth of ``n`` trails: length uniform in ``length_px``, angle uniform, S/N
    log-uniform in ``snr``; each keeps ``margin`` + its half-length from the edges and
    ``min_sep`` + its half-length from ``avoid_xy`` and the other trails."""
    ny, nx = sci.shape
    out = np.zeros(n, dtype=TRAIL_TRUTH_DTYPE)
    placed = np.asarray(avoid_xy, dtype=np.float64).reshape(-1, 2)
    reach = np.zeros(len(placed))
    k = 0
    for _ in range(500 * max(n, 1)):
        if k == n:
            break
        length = float(rng.uniform(*length_px))
        theta = float(rng.uniform(0.0, math.pi))
        half = 0.5 * length
        x = float(rng.uniform(margin + half, nx - 1 - margin - half))
        y = float(rng.uniform(margin + half, ny - 1 - margin - half))
        if placed.size and np.any(np.hypot(placed[:, 0] - x, placed[:, 1] - y)
                                  < min_sep + half + reach):  # fmt: skip
            continue
        out[k]["x"], out[k]["y"] = x, y
        out[k]["length_px"], out[k]["angle_deg"] = length, math.degrees(theta)
        placed = np.vstack([placed, [x, y]])
        reach = np.append(reach, half)
        k += 1
    if k < n:
        raise ValueError(f"could place only {k} of {n} trails in a {nx}x{ny} image")
    out["id"] = np.arange(1, n + 1)
    sky = sci.wcs.all_pix2world(np.column_stack([out["x"], out["y"]]), 0)
    out["ra"], out["dec"] = sky[:, 0], sky[:, 1]
    lo, hi = math.log(snr[0]), math.log(snr[1])
    target = np.exp(rng.uniform(lo, hi, n))
    for i, row in enumerate(out):
        theta = math.radians(row["angle_deg"])
        tn = _segment_stamp(sci, row["x"], row["y"], row["length_px"], theta)
        xt, yt = tmp.wcs.all_world2pix([[row["ra"], row["dec"]]], 0)[0]
        tr = _segment_stamp(tmp, xt, yt, row["length_px"], theta)
        size = max(tn.shape[0], tr.shape[0])
        tn, tr = (np.pad(s, (size - s.shape[0]) // 2) for s in (tn, tr))
        bg_n = float(sci.background_sigma_njy(row["x"], row["y"]))
        bg_r = float(tmp.background_sigma_njy(xt, yt))
        sigma_f = math.sqrt(render.zogy_flux_variance(tn, tr, bg_n, bg_r))
        out[i]["sigma_flux_njy"] = sigma_f
        out[i]["flux_njy"] = target[i] * sigma_f
        out[i]["snr_expected"] = target[i]
    return out


def add_trails(model_e: np.ndarray, sci: render.Frame, truth: np.ndarray) -> None:
    """Add the trails of ``truth`` to the science model (electrons) in place."""
    for row in truth:
        sigma = float(sci.sigma_map(row["x"], row["y"]))
        xs, ys = _points(row["x"], row["y"], row["length_px"], math.radians(row["angle_deg"]),
                         sigma)  # fmt: skip
        each = float(sci.electrons(row["flux_njy"])) / xs.size
        render.add_point_sources(model_e, xs, ys, np.full(xs.size, each),
                                 sci.sigma_map(xs, ys), profile=sci.profile)  # fmt: skip


def add_streak(
    model_e: np.ndarray, sci: render.Frame, ends: tuple[float, float, float, float],
    peak_snr: float,
) -> None:  # fmt: skip
    """A satellite streak from (x0, y0) to (x1, y1) (science pixels, may leave the image):
    a line of constant brightness whose ridge is ``peak_snr`` times the background noise
    per pixel (at the image centre; line density F_l = peak_snr sigma_bg sqrt(2 pi) s)."""
    x0, y0, x1, y1 = (float(v) for v in ends)
    ny, nx = sci.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    sigma = float(sci.sigma_map(cx, cy))
    length = math.hypot(x1 - x0, y1 - y0)
    xs, ys = _points(0.5 * (x0 + x1), 0.5 * (y0 + y1), length, math.atan2(y1 - y0, x1 - x0),
                     sigma)  # fmt: skip
    per_px = peak_snr * float(sci.background_sigma_njy(cx, cy)) * math.sqrt(2 * math.pi) * sigma
    each = float(sci.electrons(per_px)) * length / xs.size
    render.add_point_sources(model_e, xs, ys, np.full(xs.size, each), sci.sigma_map(xs, ys),
                             profile=sci.profile)  # fmt: skip
