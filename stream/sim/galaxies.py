"""Host galaxies (Sersic profiles) under some of the simulator's transients (issue 12).

A transient on a galaxy is the common case in a real survey and the hard one for a
subtraction: the galaxy must cancel to within the noise while the transient must not, and
its light adds photon noise under the transient.  Each host is a Sersic profile
I(r) ~ exp(-b_n ((r / r_e)^(1/n) - 1)) (n 0.5-4, r_e 2-6 px, axis ratio 0.4-1), sampled on a
3 x 3 sub-pixel grid, convolved with the image's true PSF at the host (stream.sim.psf via
the frame), rendered in each image with its own orientation on the sky.  The transient
sits within one r_e of the host's centre.  The truth S/N of a hosted transient counts the
host's light at the transient as extra background (:func:`rescore`), so the S/N bins stay
honest.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaincinv

from diffstream.stream.sim import render

__all__ = ["GALAXY_DTYPE", "add_galaxies", "place_hosts", "rescore", "sersic_stamp"]

GALAXY_DTYPE = np.dtype(
    [(name, "f8") for name in ("x", "y", "x_template", "y_template", "flux_njy", "n", "r_e",
                               "q", "theta", "theta_template")]
    + [("truth_index", "i8")]
)  # fmt: skip
_OVERSAMPLE = 3
_MAX_HALF = 40  # px; an n = 4 profile is cut at 40 px (its light beyond is dropped)


def sersic_stamp(
    n: float, r_e: float, q: float, theta: float, size: int, *, dx: float = 0.0, dy: float = 0.0
) -> np.ndarray:
    """Unit-sum pixel-averaged Sersic profile (index n, half-light radius r_e px along the
    major axis, axis ratio q, major axis at ``theta`` rad from +x), centred at (dx, dy)."""
    if not (0.3 <= n <= 8.0 and r_e > 0 and 0.05 <= q <= 1.0):
        raise ValueError(f"Sersic parameters out of range: n={n}, r_e={r_e}, q={q}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"stamp size must be odd and >= 1, got {size}")
    half = size // 2
    b = float(gammaincinv(2.0 * n, 0.5))
    sub = (np.arange(_OVERSAMPLE) + 0.5) / _OVERSAMPLE - 0.5
    u = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()
    yy, xx = np.meshgrid(u - dy, u - dx, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    major = xx * c + yy * s
    minor = -xx * s + yy * c
    r = np.sqrt(major**2 + (minor / q) ** 2)
    fine = np.exp(-b * ((r / r_e) ** (1.0 / n) - 1.0))
    stamp = fine.reshape(size, _OVERSAMPLE, size, _OVERSAMPLE).mean(axis=(1, 3))
    return stamp / stamp.sum()


def place_hosts(rng: np.random.Generator, truth: np.ndarray, sci, tmp, n_hosts: int) -> np.ndarray:
    """Hosts (GALAXY_DTYPE) for the first ``n_hosts`` transients of ``truth``.

    Host total S/N in the science image is log-uniform in 20-200 (bright enough that a
    poor cancellation shows), the transient within one r_e of the centre.
    """
    idx = np.flatnonzero(truth["kind"] == "transient")[:n_hosts]
    if len(idx) < n_hosts:
        raise ValueError(f"n_hosted {n_hosts} exceeds the {len(idx)} transients")
    gals = np.zeros(len(idx), dtype=GALAXY_DTYPE)
    for k, i in enumerate(idx):
        n = float(rng.uniform(0.5, 4.0))
        r_e = float(rng.uniform(2.0, 6.0))
        q = float(rng.uniform(0.4, 1.0))
        theta = float(rng.uniform(0, math.pi))
        rad, phi = r_e * math.sqrt(float(rng.random())), float(rng.uniform(0, 2 * math.pi))
        x = float(truth["x"][i]) - rad * math.cos(phi)
        y = float(truth["y"][i]) - rad * math.sin(phi)
        # Position and orientation in the template through the two WCSs.
        pts = np.array([[x, y], [x + math.cos(theta), y + math.sin(theta)]])
        pt = tmp.wcs.all_world2pix(sci.wcs.all_pix2world(pts, 0), 0)
        bg = float(sci.background_sigma_njy(x, y))
        area = 4 * math.pi * (r_e**2 + float(sci.sigma_map(x, y)) ** 2)
        snr = math.exp(rng.uniform(math.log(20.0), math.log(200.0)))
        gals[k] = (x, y, pt[0, 0], pt[0, 1], snr * bg * math.sqrt(area), n, r_e, q, theta,
                   math.atan2(pt[1, 1] - pt[0, 1], pt[1, 0] - pt[0, 0]), i)  # fmt: skip
    return gals


def add_galaxies(
    model_e: np.ndarray, frame, gals: np.ndarray, xk: str, yk: str, thk: str,
    *, ellipticity: float = 0.0,
) -> np.ndarray:  # fmt: skip
    """Add the PSF-convolved hosts to ``model_e`` (electrons) in place; returns the hosts'
    own image (electrons) for :func:`rescore`."""
    # Here, not at import: scipy.signal brings scipy.stats, .interpolate and .optimize, ~0.4 s
    # (1.2 s on a busy host) that every worker start-up paid through the warm-up's simulated
    # pair, which has no hosts (issue 17).
    from scipy.signal import fftconvolve

    ny, nx = model_e.shape
    own = np.zeros_like(model_e)
    for g in gals:
        x, y = float(g[xk]), float(g[yk])
        half = min(_MAX_HALF, int(math.ceil(8 * g["r_e"])) + 6)
        size = 2 * half + 1
        ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        x0, y0 = ix - half, iy - half
        if x0 + size <= 0 or y0 + size <= 0 or x0 >= nx or y0 >= ny:
            continue
        body = sersic_stamp(g["n"], g["r_e"], g["q"], g[thk], size, dx=x - ix, dy=y - iy)
        psf = frame.psf_stamp(x, y, frame.stamp_size(float(frame.sigma_map(x, y)),
                                                     ellipticity=ellipticity),
                              ellipticity=ellipticity)  # fmt: skip
        stamp = fftconvolve(body, psf, mode="same")
        stamp *= float(frame.electrons(g["flux_njy"])) / stamp.sum()
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1, sy1 = size - max(0, x0 + size - nx), size - max(0, y0 + size - ny)
        own[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += stamp[sy0:sy1, sx0:sx1]
    model_e += own
    return own


def rescore(truth: np.ndarray, gals: np.ndarray, sci, tmp, host_sci_e, host_tmp_e,
            *, ellipticity: float = 0.0) -> None:  # fmt: skip
    """Redo ``sigma_flux_njy``/``snr_expected`` of hosted rows with the host's light at the
    transient (both images) as extra background; ``flux_diff_njy`` is kept."""
    for g in gals:
        i = int(g["truth_index"])
        x, y = float(truth["x"][i]), float(truth["y"][i])
        xt, yt = float(truth["x_template"][i]), float(truth["y_template"][i])
        extra = []
        for img, px, py in ((host_sci_e, x, y), (host_tmp_e, xt, yt)):
            iy = min(max(int(round(py)), 0), img.shape[0] - 1)
            ix = min(max(int(round(px)), 0), img.shape[1] - 1)
            extra.append(float(img[iy, ix]))
        a, bn, br = render.flux_noise_terms(sci, tmp, x, y, xt, yt, ellipticity=ellipticity,
                                            extra_e=(extra[0], extra[1]))  # fmt: skip
        f_sci = float(truth["flux_science_njy"][i])
        f_tmp = float(truth["flux_template_njy"][i])
        sigma_f = math.sqrt(a + bn * f_sci + br * f_tmp)
        truth["sigma_flux_njy"][i] = sigma_f
        truth["snr_expected"][i] = abs(float(truth["flux_diff_njy"][i])) / sigma_f
        truth["host_flux_njy"][i] = g["flux_njy"]
