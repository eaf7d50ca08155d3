"""The scene and the pixels of the simulator (:mod:`diffstream.stream.sim.simulate` holds the API).

Stars and difference sources are drawn on a :class:`Frame` (one image's geometry, PSF, sky
and detector), point sources are rendered as pixel-integrated Gaussians, then noise, charge
bleeding, cosmic rays and bad columns are applied.  Each piece is testable on its own: flux
conservation of :func:`add_point_sources`, the ideal S/N of :func:`zogy_flux_variance` against
closed forms.  The data model is in :mod:`diffstream.stream.sim.model`, the FITS writers in
:mod:`diffstream.stream.sim.fits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from astropy.wcs import WCS
from scipy.special import erf

from diffstream.jitcore.constants import FWHM_PER_SIGMA
from diffstream.stream.sim.psf import PsfProfile

__all__ = [
    "FWHM_PER_SIGMA",
    "STAR_DTYPE",
    "TRUTH_DTYPE",
    "Frame",
    "LinearSigmaMap",
    "add_bad_columns",
    "add_cosmic_rays",
    "add_point_sources",
    "bleed_columns",
    "difference_sources",
    "draw_stars",
    "flux_noise_terms",
    "linear_map",
    "noisy",
    "read_out",
    "static_model",
    "poisson_psf_factor",
    "sky_map",
    "stamp_size",
    "zogy_flux_variance",
]


_F8 = "f8"
TRUTH_DTYPE = np.dtype(
    [("id", "i8"), ("kind", "U11")]
    + [(name, _F8) for name in ("ra", "dec", "x", "y", "x_template", "y_template")]
    + [(name, _F8) for name in ("flux_diff_njy", "flux_science_njy", "flux_template_njy")]
    + [("sigma_flux_njy", _F8), ("snr_expected", _F8)]
    + [("host_flux_njy", _F8)]  # total flux of the host galaxy (stream.sim.galaxies), or 0
)
STAR_DTYPE = np.dtype(
    [("id", "i8")]
    + [(name, _F8) for name in ("ra", "dec", "x", "y", "x_template", "y_template")]
    + [("flux_njy", _F8), ("snr_science", _F8)]
    + [("saturated", "?"), ("bright", "?"), ("in_science", "?")]
)


@dataclass(frozen=True)
class LinearSigmaMap:
    """Gaussian PSF sigma (px, before pixel integration) varying linearly over an image.

    ``sigma(x, y) = sigma0 * (1 + gradient * (cos(angle) u + sin(angle) v))`` with u, v the
    pixel coordinates scaled to [-0.5, 0.5] over ``shape`` (ny, nx): the width changes by a
    fraction ``gradient`` from one side of the field to the other along ``angle``.  A frozen
    dataclass rather than a closure so that a SimImage pickles (worker processes).
    """

    sigma0: float
    gradient: float
    angle: float
    shape: tuple[int, int]

    def __call__(self, x, y):
        return self.sigma0 * linear_map(x, y, self.shape, self.gradient, self.angle)


def linear_map(x, y, shape: tuple[int, int], gradient: float, angle: float):
    """``1 + gradient * (cos(angle) u + sin(angle) v)``, u, v in [-0.5, 0.5] over shape."""
    ny, nx = shape
    u = np.asarray(x, dtype=np.float64) / max(nx - 1, 1) - 0.5
    v = np.asarray(y, dtype=np.float64) / max(ny - 1, 1) - 0.5
    out = 1.0 + gradient * (math.cos(angle) * u + math.sin(angle) * v)
    return float(out) if np.ndim(out) == 0 else out


def sky_map(shape: tuple[int, int], sky: float, gradient: float, angle: float) -> np.ndarray:
    """``sky * linear_map`` on the pixel grid, built separably (no (ny, nx) coordinate grids)."""
    ny, nx = shape
    if gradient == 0.0:
        return np.full(shape, sky)
    fx = gradient * math.cos(angle) * (np.arange(nx) / max(nx - 1, 1) - 0.5)
    fy = gradient * math.sin(angle) * (np.arange(ny) / max(ny - 1, 1) - 0.5)
    return sky * (1.0 + fy[:, None] + fx[None, :])


def stamp_size(sigma: float, *, ellipticity: float = 0.0, nsigma: float = 5.0) -> int:
    """Odd stamp size covering +-nsigma of the widest axis (truncation < 1e-5 of the flux)."""
    return 2 * int(math.ceil(nsigma * sigma * (1.0 + abs(ellipticity)))) + 1


def peak_fraction(sigma) -> np.ndarray:
    """Fraction of a centred pixel-integrated Gaussian's flux in its central pixel."""
    return erf(0.5 / (np.sqrt(2.0) * np.asarray(sigma))) ** 2


@dataclass
class Frame:
    """One image's geometry, PSF truth, sky and detector, in electrons (internal)."""

    shape: tuple[int, int]
    wcs: WCS
    sigma_map: LinearSigmaMap
    gain: float  # e- per count
    read_noise: float  # e-, total (coadd: sqrt(depth) x single)
    full_well: float  # e-, total (coadd: depth x single)
    calib: float  # nJy per count
    sky_e: np.ndarray  # expected sky, e- per pixel
    sky_e_centre: float
    profile: PsfProfile = field(default_factory=PsfProfile)  # Gaussian unless told

    def psf_stamp(self, x: float, y: float, size: int, *, ellipticity: float = 0.0):
        """The true unit-sum PSF stamp centred at pixel (x, y) (no sub-pixel shift)."""
        sigma = float(self.sigma_map(x, y))
        return self.profile.stamp(sigma, size, x=x, y=y, ellipticity=ellipticity)

    def stamp_size(self, sigma: float, *, ellipticity: float = 0.0) -> int:
        return 2 * self.profile.half_size(sigma, ellipticity=ellipticity) + 1

    def background_sigma_njy(self, x, y) -> np.ndarray:
        """Per-pixel background noise (sky Poisson + read) in nJy at (x, y)."""
        ny, nx = self.shape
        ix = np.clip(np.round(np.asarray(x)).astype(int), 0, nx - 1)
        iy = np.clip(np.round(np.asarray(y)).astype(int), 0, ny - 1)
        return np.sqrt(self.sky_e[iy, ix] + self.read_noise**2) / self.gain * self.calib

    def electrons(self, flux_njy):
        return np.asarray(flux_njy) / self.calib * self.gain


# --- the scene ------------------------------------------------------------------------------


def draw_stars(
    rng: np.random.Generator,
    sci: Frame,
    tmp: Frame,
    *,
    n_stars: int,
    n_saturated: int,
    slope: float,
    bright_snr: float,
    ellipticity: float,
) -> np.ndarray:
    """Static stars (STAR_DTYPE): power-law fluxes, plus ``n_saturated`` saturated ones.

    Stars fill the box (science pixels) holding both footprints at ``n_stars`` per science
    area, so each image has stars wherever it has pixels.  Cumulative counts N(>F) ~ F^-slope
    from S/N 3 up to half the level that saturates either image with its sharpest PSF: only
    the saturated stars added at the end (peak 3-30 x the well) saturate.
    """
    ny, nx = sci.shape
    nty, ntx = tmp.shape
    corners = np.array([[-0.5, -0.5], [ntx - 0.5, -0.5], [-0.5, nty - 0.5], [ntx - 0.5, nty - 0.5]])
    ct = sci.wcs.all_world2pix(tmp.wcs.all_pix2world(corners, 0), 0)
    x_lo, x_hi = min(-0.5, ct[:, 0].min()), max(nx - 0.5, ct[:, 0].max())
    y_lo, y_hi = min(-0.5, ct[:, 1].min()), max(ny - 0.5, ct[:, 1].max())
    n = int(round(n_stars * (x_hi - x_lo) * (y_hi - y_lo) / (nx * ny)))
    x = rng.uniform(x_lo, x_hi, n)
    y = rng.uniform(y_lo, y_hi, n)

    area0 = 4 * math.pi * sci.sigma_map.sigma0**2  # effective PSF area, px
    f_min = 3.0 * float(sci.background_sigma_njy((nx - 1) / 2, (ny - 1) / 2)) * math.sqrt(area0)
    caps = []
    for frame in (sci, tmp):
        sig_min = frame.sigma_map.sigma0 * (1 - frame.sigma_map.gradient) * (1 - ellipticity)
        room_e = frame.full_well - float(frame.sky_e.max())
        caps.append(0.5 * room_e / float(peak_fraction(sig_min)) / frame.gain * frame.calib)
    ratio = min(caps) / f_min
    flux = f_min * (1 - rng.random(n) * (1 - ratio**-slope)) ** (-1 / slope)

    xs = rng.uniform(40, nx - 41, n_saturated)
    ys = rng.uniform(40, ny - 41, n_saturated)
    peak_x = np.exp(rng.uniform(math.log(3.0), math.log(30.0), n_saturated))
    room_e = sci.full_well - sci.sky_e_centre
    f_sat = peak_x * room_e / peak_fraction(sci.sigma_map(xs, ys)) / sci.gain * sci.calib

    x, y = np.concatenate([x, xs]), np.concatenate([y, ys])
    flux = np.concatenate([flux, f_sat])
    sky = sci.wcs.all_pix2world(np.column_stack([x, y]), 0)
    # Science positions from the sky again so that x, y and ra, dec agree to round-off (SIP).
    ps = sci.wcs.all_world2pix(sky, 0, tolerance=1e-10)
    pt = tmp.wcs.all_world2pix(sky, 0)
    stars = np.zeros(x.size, dtype=STAR_DTYPE)
    stars["id"] = np.arange(1, x.size + 1)
    stars["ra"], stars["dec"] = sky[:, 0], sky[:, 1]
    stars["x"], stars["y"] = ps[:, 0], ps[:, 1]
    stars["x_template"], stars["y_template"] = pt[:, 0], pt[:, 1]
    stars["flux_njy"] = flux
    f_counts = flux / sci.calib
    bg_counts = sci.background_sigma_njy(ps[:, 0], ps[:, 1]) / sci.calib
    area = 4 * math.pi * sci.sigma_map(ps[:, 0], ps[:, 1]) ** 2
    stars["snr_science"] = f_counts / np.sqrt(bg_counts**2 * area + f_counts / sci.gain)
    stars["saturated"] = np.arange(x.size) >= n
    stars["bright"] = stars["saturated"] | (stars["snr_science"] > bright_snr)
    inside_x = (ps[:, 0] > -0.5) & (ps[:, 0] < nx - 0.5)
    stars["in_science"] = inside_x & (ps[:, 1] > -0.5) & (ps[:, 1] < ny - 0.5)
    return stars


def _window_hits(flag: np.ndarray, x: float, y: float, r: float) -> bool:
    ny, nx = flag.shape
    ix, iy, ir = int(round(x)), int(round(y)), int(math.ceil(r))
    win = flag[max(iy - ir, 0) : min(iy + ir + 1, ny), max(ix - ir, 0) : min(ix + ir + 1, nx)]
    return bool(win.any())


def _place(
    rng,
    sci: Frame,
    tmp: Frame,
    n: int,
    *,
    avoid_xy: np.ndarray,
    sci_sat,
    tmp_sat,
    bad_cols,
    min_sep: float,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Rejection-sample n positions clear of edges, each other, ``avoid_xy``, SAT and BAD."""
    ny, nx = sci.shape
    nty, ntx = tmp.shape
    placed: list[tuple[float, float]] = []
    placed_t: list[tuple[float, float]] = []
    for _ in range(500 * n):
        if len(placed) == n:
            break
        x = float(rng.uniform(margin + 0.5, nx - 1.5 - margin))
        y = float(rng.uniform(margin + 0.5, ny - 1.5 - margin))
        near = np.concatenate([np.array(placed).reshape(-1, 2), avoid_xy])
        if near.size and np.min(np.hypot(near[:, 0] - x, near[:, 1] - y)) < min_sep:
            continue
        if any(abs(x - bx) < min_sep and y > y0 - min_sep for bx, y0, _ in bad_cols):
            continue
        if _window_hits(sci_sat, x, y, min_sep):
            continue
        pt = tmp.wcs.all_world2pix(sci.wcs.all_pix2world([[x, y]], 0), 0)[0]
        if not (margin <= pt[0] <= ntx - 1 - margin and margin <= pt[1] <= nty - 1 - margin):
            continue
        if _window_hits(tmp_sat, pt[0], pt[1], min_sep):
            continue
        placed.append((x, y))
        placed_t.append((float(pt[0]), float(pt[1])))
    if len(placed) < n:
        raise ValueError(
            f"could place only {len(placed)} of {n} difference sources in a {nx}x{ny} image "
            f"with {min_sep} px separation and {margin} px margins; use a larger shape or "
            "fewer sources"
        )
    return np.array(placed), np.array(placed_t)


def difference_sources(
    rng: np.random.Generator,
    sci: Frame,
    tmp: Frame,
    stars: np.ndarray,
    *,
    sci_sat: np.ndarray,
    tmp_sat: np.ndarray,
    bad_cols,
    n_transients: int,
    n_variables: int,
    snr: tuple[float, float],
    min_sep: float,
    margin: float,
    ellipticity: float,
) -> np.ndarray:
    """Truth table (TRUTH_DTYPE) of transients and variables with S/N log-uniform in ``snr``.

    S/N targets are stratified (one per equal-width log bin, bins shuffled among sources) so a
    few dozen sources fill every S/N bin.  For each source, ``sigma_F^2 = a + b |d|`` (a = 1/F_S
    from the backgrounds, b the photon terms per nJy of |d|, see
    :mod:`diffstream.stream.sim.simulate`) is
    solved for the flux difference |d| that gives the target S/N.  A variable's template flux
    is k |d| with k in [1.5, 4] (fading needs k > 1 to stay positive).
    """
    n = n_transients + n_variables
    n_up = n_variables - n_variables // 2
    kinds = ["transient"] * n_transients + ["brightening"] * n_up + ["fading"] * (n_variables // 2)
    bright = stars[stars["bright"]]
    xy, xyt = _place(
        rng,
        sci,
        tmp,
        n,
        avoid_xy=np.column_stack([bright["x"], bright["y"]]),
        sci_sat=sci_sat,
        tmp_sat=tmp_sat,
        bad_cols=bad_cols,
        min_sep=min_sep,
        margin=margin,
    )
    lo, hi = math.log(snr[0]), math.log(snr[1])
    target = np.exp(lo + (hi - lo) * (rng.permutation(n) + rng.random(n)) / n)
    k = np.where(np.arange(n) >= n_transients, rng.uniform(1.5, 4.0, n), 0.0)
    sign = np.array([-1.0 if kd == "fading" else 1.0 for kd in kinds])

    truth = np.zeros(n, dtype=TRUTH_DTYPE)
    truth["id"] = np.arange(1, n + 1)
    truth["kind"] = kinds
    truth["x"], truth["y"] = xy[:, 0], xy[:, 1]
    truth["x_template"], truth["y_template"] = xyt[:, 0], xyt[:, 1]
    sky = sci.wcs.all_pix2world(xy, 0)
    truth["ra"], truth["dec"] = sky[:, 0], sky[:, 1]
    # One stamp size for all (the widest PSF): what the pairs were made with so far.
    size = max(sci.stamp_size(float(sci.sigma_map(xy[:, 0], xy[:, 1]).max()),
                              ellipticity=ellipticity),
               tmp.stamp_size(float(tmp.sigma_map(xyt[:, 0], xyt[:, 1]).max()),
                              ellipticity=ellipticity))  # fmt: skip
    for i in range(n):
        a, bn, br = flux_noise_terms(sci, tmp, xy[i, 0], xy[i, 1], xyt[i, 0], xyt[i, 1],
                                     ellipticity=ellipticity, size=size)  # fmt: skip
        b = bn * (k[i] + sign[i]) + br * k[i]
        s2 = target[i] ** 2
        d = 0.5 * (s2 * b + math.sqrt((s2 * b) ** 2 + 4 * s2 * a))  # |d|^2 = s^2 (a + b |d|)
        f_tmp = k[i] * d
        f_sci = f_tmp + sign[i] * d
        sigma_f = math.sqrt(a + bn * f_sci + br * f_tmp)
        truth["flux_diff_njy"][i] = sign[i] * d
        truth["flux_science_njy"][i] = f_sci
        truth["flux_template_njy"][i] = f_tmp
        truth["sigma_flux_njy"][i] = sigma_f
        truth["snr_expected"][i] = d / sigma_f
    return truth


def flux_noise_terms(
    sci: Frame, tmp: Frame, x: float, y: float, xt: float, yt: float, *,
    ellipticity: float = 0.0, extra_e: tuple[float, float] = (0.0, 0.0), size: int | None = None,
) -> tuple[float, float, float]:  # fmt: skip
    """``(a, bn, br)`` of sigma_F^2 = a + bn F_sci + br F_tmpl at science (x, y) / template
    (xt, yt): ``a`` from the backgrounds (plus ``extra_e`` electrons per pixel of static
    light, e.g. a host galaxy, in each image), ``bn``/``br`` the sources' own photon terms
    per nJy (the model in :mod:`diffstream.stream.sim.simulate`).  ``size``: the PSF stamps'
    size (default: wide enough for both PSFs here)."""
    if size is None:
        sig_n, sig_r = float(sci.sigma_map(x, y)), float(tmp.sigma_map(xt, yt))
        size = max(sci.stamp_size(sig_n, ellipticity=ellipticity),
                   tmp.stamp_size(sig_r, ellipticity=ellipticity))  # fmt: skip
    pn = sci.psf_stamp(x, y, size, ellipticity=ellipticity)
    pr = tmp.psf_stamp(xt, yt, size, ellipticity=ellipticity)
    bg = []
    for frame, px, py, e in ((sci, x, y, extra_e[0]), (tmp, xt, yt, extra_e[1])):
        b0 = float(frame.background_sigma_njy(px, py))
        bg.append(math.sqrt(b0**2 + e * (frame.calib / frame.gain) ** 2))
    a = zogy_flux_variance(pn, pr, bg[0], bg[1])
    bn = poisson_psf_factor(pn) * sci.calib / sci.gain
    br = poisson_psf_factor(pr) * tmp.calib / tmp.gain
    return a, bn, br


# --- pixels ---------------------------------------------------------------------------------


def add_point_sources(
    out: np.ndarray,
    x,
    y,
    flux,
    sigma,
    *,
    ellipticity: float = 0.0,
    nsigma: float = 5.0,
    profile: PsfProfile | None = None,
) -> None:
    """Add pixel-integrated point sources (Gaussian unless ``profile`` says) to ``out``.

    ``x, y`` are 0-based pixel positions (pixel centres at integers), ``flux`` the total
    counts (or electrons) of each source and ``sigma`` its PSF sigma.  Each stamp has unit
    sum, so a source whose stamp lies inside ``out`` adds exactly ``flux``; parts of stamps
    falling off the image are dropped.  A Python loop over sources (one stamp each)
    is fast enough: ~30 us per source, against ~1 s of noise generation for 4k x 4k.
    """
    ny, nx = out.shape
    prof = profile or PsfProfile()
    arrays = (np.atleast_1d(v) for v in (x, y, flux, sigma))
    for xi, yi, fi, si in zip(*arrays, strict=True):
        if fi == 0.0:
            continue
        half = prof.half_size(float(si), ellipticity=ellipticity, nsigma=nsigma)
        size = 2 * half + 1
        ix, iy = int(math.floor(xi + 0.5)), int(math.floor(yi + 0.5))
        x0, y0 = ix - half, iy - half
        if x0 + size <= 0 or y0 + size <= 0 or x0 >= nx or y0 >= ny:
            continue
        stamp = prof.stamp(
            float(si), size, x=float(xi), y=float(yi), dx=float(xi - ix), dy=float(yi - iy),
            ellipticity=ellipticity,
        )  # fmt: skip
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1, sy1 = size - max(0, x0 + size - nx), size - max(0, y0 + size - ny)
        out[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += fi * stamp[sy0:sy1, sx0:sx1]


def bleed_columns(model_e: np.ndarray, full_well: float, columns_x, *, half_width: int) -> None:
    """Spill charge above ``full_well`` up and down the columns within ``half_width`` of x.

    Works on the noiseless expected image (electrons) so that the saturated footprint is known
    before noise is drawn and difference sources can be placed away from it.  The excess of each
    column is shared equally between the two directions and fills pixels up to the well,
    conserving charge except what runs off the image.
    """
    ny, nx = model_e.shape
    cols = {c for cx in columns_x for c in range(cx - half_width, cx + half_width + 1)}
    for col in sorted(c for c in cols if 0 <= c < nx):
        column = model_e[:, col]
        over = np.flatnonzero(column > full_well)
        if over.size == 0:
            continue
        excess = float((column[over] - full_well).sum())
        column[over] = full_well
        for step, row in ((1, int(over.max()) + 1), (-1, int(over.min()) - 1)):
            left = 0.5 * excess
            while left > 0 and 0 <= row < ny:
                take = min(max(full_well - column[row], 0.0), left)
                column[row] += take
                left -= take
                row += step


def static_model(
    frame: Frame, stars, xk: str, yk: str, *, ellipticity: float, bleed: bool
) -> np.ndarray:
    """Expected image in electrons: sky + stars, saturated charge bled along columns."""
    model = frame.sky_e.copy()
    xs, ys = stars[xk], stars[yk]
    flux_e = frame.electrons(stars["flux_njy"])
    wide = stars["saturated"]
    # Saturated stars get wide stamps: their far wings are still above the noise.
    for sel, nsigma in ((~wide, 5.0), (wide, 9.0)):
        add_point_sources(
            model,
            xs[sel],
            ys[sel],
            flux_e[sel],
            frame.sigma_map(xs[sel], ys[sel]),
            ellipticity=ellipticity,
            nsigma=nsigma,
            profile=frame.profile,
        )
    if bleed:
        bleed_columns(model, frame.full_well, np.round(xs[wide]).astype(int), half_width=12)
    return model


def noisy(rng: np.random.Generator, frame: Frame, model_e: np.ndarray) -> np.ndarray:
    """Poisson photons plus Gaussian read noise, electrons (float64)."""
    out = rng.poisson(model_e).astype(np.float64)
    out += rng.normal(0.0, frame.read_noise, out.shape)
    return out


def read_out(frame: Frame, model_e, noisy_e, mask, planes):
    """Counts clipped at SATURATE (flagged SAT) and the expected variance in counts^2."""
    sat_counts = frame.full_well / frame.gain
    raw = noisy_e / frame.gain
    saturated = (model_e >= frame.full_well) | (raw >= sat_counts)
    raw[saturated] = sat_counts
    mask[saturated] |= np.int32(1 << planes["SAT"])
    variance = model_e / frame.gain**2 + (frame.read_noise / frame.gain) ** 2
    return raw, variance


def add_cosmic_rays(
    image_e: np.ndarray,
    mask: np.ndarray,
    cr_bit: int,
    rng: np.random.Generator,
    n: int,
    *,
    avoid: np.ndarray,
    avoid_radius: float,
    level_e: tuple[float, float],
) -> np.ndarray:
    """Add ``n`` sharp hits of 1-3 pixels (straight tracks), flag them ``cr_bit``.

    Hits keep ``avoid_radius`` px from the (m, 2) array ``avoid`` of (x, y) positions (the
    injected difference sources) so the truth table is not corrupted by chance.  Deposits are
    log-uniform in ``level_e`` per pixel: far above the noise, far narrower than any PSF.
    Returns the (k, 2) array of hit centres (x, y).
    """
    ny, nx = image_e.shape
    avoid = np.asarray(avoid, dtype=np.float64).reshape(-1, 2)
    lo, hi = math.log(level_e[0]), math.log(level_e[1])
    centres: list[tuple[int, int]] = []
    for _ in range(100 * max(n, 1)):
        if len(centres) == n:
            break
        x, y = int(rng.integers(0, nx)), int(rng.integers(0, ny))
        if avoid.size and np.min(np.hypot(avoid[:, 0] - x, avoid[:, 1] - y)) < avoid_radius:
            continue
        length = int(rng.integers(1, 4))
        dx, dy = ((1, 0), (0, 1), (1, 1), (1, -1))[int(rng.integers(0, 4))]
        for k in range(length):
            px, py = x + k * dx, y + k * dy
            if 0 <= px < nx and 0 <= py < ny:
                image_e[py, px] += math.exp(rng.uniform(lo, hi))
                mask[py, px] |= np.int32(1 << cr_bit)
        centres.append((x, y))
    return np.array(centres, dtype=np.float64).reshape(-1, 2)


def add_bad_columns(
    raw: np.ndarray,
    mask: np.ndarray,
    bad_bit: int,
    rng: np.random.Generator,
    columns,
    *,
    sky: float,
    saturation: float,
) -> None:
    """Overwrite ``(x, y0, y1)`` column segments of ``raw`` (counts) with garbage, flag BAD.

    Alternately "dead" (near zero counts) and "hot" (far above sky, short of saturation): both
    must be caught by the mask, not by a threshold on the values.
    """
    for k, (x, y0, y1) in enumerate(columns):
        if k % 2 == 0:
            raw[y0:y1, x] = rng.normal(0.0, 2.0, y1 - y0)
        else:
            raw[y0:y1, x] = sky + rng.uniform(0.05, 0.5, y1 - y0) * (saturation - sky)
        mask[y0:y1, x] |= np.int32(1 << bad_bit)


# --- ideal S/N --------------------------------------------------------------------------------


def zogy_flux_variance(
    psf_n: np.ndarray, psf_r: np.ndarray, sigma_n: float, sigma_r: float
) -> float:
    """``1 / F_S``: variance of ZOGY's PSF-flux estimate from background noise alone.

    ZOGY (Zackay, Ofek & Gal-Yam 2016, eq. 42) with both images calibrated to the same flux
    unit (F_n = F_r = 1) and ``sigma_n``, ``sigma_r`` their background noise per pixel in that
    unit::

        F_S = (1/N) sum_k |P_n^(k)|^2 |P_r^(k)|^2 / (sigma_n^2 |P_r^(k)|^2 + sigma_r^2 |P_n^(k)|^2)

    summed over the N frequencies of a zero-padded DFT (the 1/N makes it Parseval-consistent:
    with sigma_r = 0 it is sum(P_n^2) / sigma_n^2, the PSF-fit S/N of a single image; with equal
    PSFs it is sum(P^2) / (sigma_n^2 + sigma_r^2)).  Both stamps: same odd size, unit sum, in the
    science pixel frame.
    """
    size = psf_n.shape[0]
    n = scipy.fft.next_fast_len(max(64, 2 * size))
    pn = np.abs(scipy.fft.rfft2(psf_n, s=(n, n))) ** 2
    pr = np.abs(scipy.fft.rfft2(psf_r, s=(n, n))) ** 2
    den = sigma_n**2 * pr + sigma_r**2 * pn
    ratio = np.divide(pn * pr, den, out=np.zeros_like(den), where=den > 0)
    # rfft2 holds half the plane: the columns other than 0 and Nyquist stand for two modes.
    weights = np.full(ratio.shape[1], 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return 1.0 / (float((ratio * weights).sum()) / (n * n))


def poisson_psf_factor(psf: np.ndarray) -> float:
    """``Q = sum(P^3) / sum(P^2)^2``: a source's own Poisson noise in its PSF-fit flux.

    For a PSF fit with background-dominated weights, w = P / sum(P^2), a source of F counts
    adds ``sum(w^2 * F * P) / gain = F * Q / gain`` counts^2 of variance.
    """
    p = np.asarray(psf, dtype=np.float64)
    return float((p**3).sum() / (p**2).sum() ** 2)
