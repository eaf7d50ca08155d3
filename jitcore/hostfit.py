"""A new point source on a star, told from that star's subtraction residual (issue 12).

A static star that does not cancel leaves a residual with a known *shape*: a PSF model
wrong in width or ellipticity leaves F * (dP/dw) modes, a registration error F * dP/dx and
F * dP/dy, all centred on the star (F: its flux).  A new point source on the star adds
F_new * P.  ZOGY's V_psf (jitcore/zogy.py) instead inflates the score variance by
e^2 (S_n^2 + S_r^2), which treats the residual as noise of the *point-source* shape: it
cannot tell the two apart and vetoed injected sources of S/N 17-39 on DECam stars.

Here the difference image around a candidate is fitted by generalised least squares with
the point source at the candidate plus the host's five residual modes (two shifts, size,
two shears: jitcore.psfmodes.mode_stamps of the difference PSF) and, for a candidate off
the host's centre, a free point source at the host too (a variable host).  The modes have
Gaussian priors of width (error) x F_host, so for a faint host they cost nothing and for a
bright one they absorb the residual; the point source's amplitude and its error come from
the regularised normal equations, and its significance decides.

What it costs: the size mode is not orthogonal to the PSF (for a Gaussian, rho^2 = 1/2),
so on a host bright enough for its prior to be loose a new source's significance is up to
1/sqrt(2) of its S/N; shifts and shears are orthogonal to a centred source and cost
nothing.  benchmarks/transients_on_stars.py measures the trade-off on the DECam pairs.
Rejected: a chi2 of the candidate against the PSF (a source on a residual fails it too);
a reliability classifier (no labelled real data).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import shift

from diffstream.jitcore.psfmodes import mode_stamps
from diffstream.jitcore.robust import mad_sigma

__all__ = [
    "host_point_test", "hosts_from_catalogues", "psf_fluxes", "residual_modes", "vet_detections",
]  # fmt: skip


def residual_modes(psf: np.ndarray) -> np.ndarray:
    """(5, k, k): -dP/dx, -dP/dy (a shift by +1 px), size, e1, e2 of the unit-sum ``psf``.

    Amplitudes are in flux x (px, fractional width, shear): a star of flux F shifted by dx
    leaves F dx times the first mode, a width error dw/w leaves F dw/w times the third.
    """
    p = np.asarray(psf, dtype=np.float64)
    dy, dx = np.gradient(p)
    return np.concatenate([np.stack([-dx, -dy]), mode_stamps(p)])


def _place(stamp: np.ndarray, window: tuple[int, int, int, int], x: float, y: float):
    """``stamp`` (odd k x k, centred) moved to (x, y) on the window grid (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = window
    out = np.zeros((y1 - y0, x1 - x0))
    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    k = stamp.shape[0]
    h = k // 2
    moved = shift(stamp, (y - iy, x - ix), order=3, mode="constant")
    sy0, sx0 = iy - h - y0, ix - h - x0
    ys0, xs0 = max(sy0, 0), max(sx0, 0)
    ys1, xs1 = min(sy0 + k, out.shape[0]), min(sx0 + k, out.shape[1])
    if ys1 > ys0 and xs1 > xs0:
        out[ys0:ys1, xs0:xs1] = moved[ys0 - sy0 : ys1 - sy0, xs0 - sx0 : xs1 - sx0]
    return out


def host_point_test(
    difference: np.ndarray,
    variance: np.ndarray,
    valid: np.ndarray,
    psf: np.ndarray,
    *,
    x: float,
    y: float,
    host_x: float,
    host_y: float,
    host_flux: float,
    shape_error: float = 0.03,
    shift_error: float = 0.05,
) -> tuple[float, float]:
    """(flux, flux error) of a point source at (x, y) with the host's residual fitted too.

    ``difference``/``variance``/``valid``: the difference image (a source of flux f is
    f * psf), its variance and where it may be used; ``psf``: the difference PSF (unit sum,
    odd size) near (x, y).  ``host_flux`` (same units) sets the priors: ``shape_error``
    (fractional width and shear error of the PSF models) and ``shift_error`` (px,
    registration) times it.  Returns (nan, nan) when no valid pixel is in reach.
    """
    if not (shape_error > 0 and shift_error > 0):
        raise ValueError(f"errors must be > 0, got {shape_error}, {shift_error}")
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] % 2 == 0:
        raise ValueError(f"psf must be square with odd size, got shape {p.shape}")
    ny, nx = difference.shape
    h = p.shape[0] // 2
    reach = h + int(math.ceil(math.hypot(x - host_x, y - host_y)))
    cx, cy = int(math.floor(host_x + 0.5)), int(math.floor(host_y + 0.5))
    window = (max(cy - reach, 0), min(cy + reach + 1, ny), max(cx - reach, 0),
              min(cx + reach + 1, nx))  # fmt: skip
    y0, y1, x0, x1 = window
    d = np.asarray(difference[y0:y1, x0:x1], dtype=np.float64)
    v = np.asarray(variance[y0:y1, x0:x1], dtype=np.float64)
    ok = np.asarray(valid[y0:y1, x0:x1], dtype=bool) & np.isfinite(d) & (v > 0)
    if not ok.any():
        return math.nan, math.nan
    w = np.where(ok, 1.0 / np.where(ok, v, 1.0), 0.0).ravel()
    cols = [_place(p, window, x, y)]
    prior = [0.0]
    fh = abs(float(host_flux))
    for k, mode in enumerate(residual_modes(p)):
        cols.append(_place(mode, window, host_x, host_y))
        tau = (shift_error if k < 2 else shape_error) * fh
        prior.append(1.0 / tau**2 if tau > 0 else 1e300)
    if math.hypot(x - host_x, y - host_y) > 1.5:
        cols.append(_place(p, window, host_x, host_y))  # the host itself may vary
        prior.append(0.0)
    t = np.stack([c.ravel() for c in cols], axis=1)
    a = (t * w[:, None]).T @ t + np.diag(prior)
    b = (t * w[:, None]).T @ np.where(ok, d, 0.0).ravel()
    try:
        cov = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return math.nan, math.nan
    coef = cov @ b
    return float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))


def psf_fluxes(image: np.ndarray, psf_at, xy: np.ndarray) -> np.ndarray:
    """Unweighted PSF-fit fluxes sum(P I) / sum(P^2) of the sources at ``xy`` (nan off-image).

    The hosts' flux scale for the residual priors and for their common residual ratio: an
    isophotal flux is a brightness-dependent fraction of the total (its ratio to the
    residual scattered by 2-3x more on the DECam pairs), a PSF fit is not.  Unweighted, so
    that the star's own photon noise does not bias it.
    """
    ny, nx = image.shape
    out = np.full(len(xy), np.nan)
    for j, (x, y) in enumerate(xy):
        p = np.asarray(psf_at(x, y), dtype=np.float64)
        h = p.shape[0] // 2
        window = (int(math.floor(y + 0.5)) - h, int(math.floor(y + 0.5)) + h + 1,
                  int(math.floor(x + 0.5)) - h, int(math.floor(x + 0.5)) + h + 1)  # fmt: skip
        if window[0] < 0 or window[2] < 0 or window[1] > ny or window[3] > nx:
            continue
        t = _place(p, window, x, y)
        cut = np.asarray(image[window[0] : window[1], window[2] : window[3]], dtype=np.float64)
        if np.isfinite(cut).all():
            out[j] = float((t * cut).sum() / (t * t).sum())
    return out


def hosts_from_catalogues(
    catalogues: list[np.ndarray], variance: np.ndarray, *, snr_min: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """(xy (n, 2), flux (n,)) of the bright sources of jitcore.sources.find_stars catalogues.

    The pipeline passes the template's catalogue only: a new source is in the science's and
    would be its own host (that emptied the sky bins of the benchmark), while a star, and a
    star that faded, are in the template's.  Duplicates within 2 px keep the larger flux.
    S/N: isophotal flux over sqrt(npix x median variance), a cheap stand-in that only has to
    rank hosts.
    """
    med_var = float(np.nanmedian(variance[:: 4, :: 4]))  # fmt: skip
    xy, flux = [], []
    for cat in catalogues:
        if cat is None or len(cat) == 0:
            continue
        snr = cat["flux"] / np.sqrt(np.maximum(cat["npix"], 1) * med_var)
        sel = snr >= snr_min
        xy.append(np.column_stack([cat["x"][sel], cat["y"][sel]]))
        flux.append(cat["flux"][sel])
    if not xy:
        return np.zeros((0, 2)), np.zeros(0)
    pts, f = np.vstack(xy), np.concatenate(flux)
    order = np.argsort(-f)
    pts, f = pts[order], f[order]
    keep: list[int] = []
    for i in range(len(pts)):
        if all(math.hypot(*(pts[i] - pts[j])) > 2.0 for j in keep):
            keep.append(i)
    return pts[keep], f[keep]


def vet_detections(
    found: np.ndarray,
    difference: np.ndarray,
    variance: np.ndarray,
    valid: np.ndarray,
    psf_at,
    hosts_xy: np.ndarray,
    hosts_flux: np.ndarray,
    *,
    score: np.ndarray,
    threshold: float,
    dipole_radius: float,
    shape_error: float = 0.03,
    shift_error: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Detections near hosts kept only if a point source explains them beyond the residual.

    ``found``: jitcore.detect.SOURCE_DTYPE rows; ``psf_at(x, y)``: the difference PSF there.
    ``score``: S_corr (for the peak_score of added rows); ``dipole_radius`` as detect's.
    A detection within the PSF radius of a host is kept when its point-source significance
    (:func:`host_point_test`, signed like the detection) reaches ``threshold``; then each
    host that had a detection in reach is tested at its own centre and gets a detection of
    that sign when it passes and no kept one of that sign lies within 2 px (a source on the
    star's centre whose footprint merged with a residual lobe peaks on the lobe).  Returns
    (rows, significance per row (nan: no host in reach), counts).
    """
    from diffstream.jitcore.detect import SOURCE_DTYPE, pair_opposites

    n = len(found)
    signif = np.full(n, np.nan)
    keep = np.ones(n, dtype=bool)
    counts = {"nearHost": 0, "rejected": 0, "added": 0}
    good = np.isfinite(hosts_flux) & (hosts_flux > 0)
    hosts_xy, hosts_flux = hosts_xy[good], hosts_flux[good]
    if n == 0 or len(hosts_xy) == 0:
        return found, signif, counts
    ny, nx = difference.shape
    # Every host's own point-source amplitude: a static star leaves kappa x its flux at its
    # centre, kappa common to all (the photometric scale's error and the two PSF models'
    # different truncation of the wings: 2-5% on the DECam pairs).  kappa is their median,
    # its error the robust scatter / sqrt(n); a source at a host's centre counts by how far
    # its amplitude departs from kappa x F, with kappa's error in the noise.
    centre = np.full((len(hosts_xy), 2), np.nan)
    for j in range(len(hosts_xy)):
        hx, hy = float(hosts_xy[j, 0]), float(hosts_xy[j, 1])
        px, py = int(math.floor(hx + 0.5)), int(math.floor(hy + 0.5))
        if not (0 <= px < nx and 0 <= py < ny and valid[py, px]):
            continue
        centre[j] = host_point_test(difference, variance, valid, psf_at(hx, hy), x=hx, y=hy,
                                    host_x=hx, host_y=hy, host_flux=hosts_flux[j],
                                    shape_error=shape_error, shift_error=shift_error)  # fmt: skip
    usable = np.isfinite(centre[:, 0]) & (centre[:, 1] > 0)
    kappa, kappa_err = 0.0, 0.0
    if usable.sum() >= 3:
        ratio = centre[usable, 0] / hosts_flux[usable]
        kappa = float(np.median(ratio))
        kappa_err = float(1.2533 * mad_sigma(ratio) / math.sqrt(usable.sum()))
    counts["kappaPpm"] = int(round(1e6 * kappa))

    def centre_significance(j: int) -> float:
        f, e = centre[j]
        e = math.hypot(e, kappa_err * hosts_flux[j])
        return (f - kappa * hosts_flux[j]) / e if e > 0 else math.nan

    touched: dict[int, None] = {}
    for i in range(n):
        x, y = float(found["x"][i]), float(found["y"][i])
        p = psf_at(x, y)
        dist = np.hypot(hosts_xy[:, 0] - x, hosts_xy[:, 1] - y)
        j = int(np.argmin(dist))
        if dist[j] > p.shape[0] // 2:
            continue
        counts["nearHost"] += 1
        touched[j] = None
        if dist[j] <= 1.5:
            t = centre_significance(j)
        else:
            f, e = host_point_test(difference, variance, valid, p, x=x, y=y,
                                   host_x=hosts_xy[j, 0], host_y=hosts_xy[j, 1],
                                   host_flux=hosts_flux[j], shape_error=shape_error,
                                   shift_error=shift_error)  # fmt: skip
            t = f / e if e > 0 else math.nan
        signif[i] = t * found["sign"][i]
        keep[i] = bool(signif[i] >= threshold)
    counts["rejected"] = int((~keep).sum())
    rows, sig = [found[keep]], [signif[keep]]
    for j in touched:
        hx, hy = float(hosts_xy[j, 0]), float(hosts_xy[j, 1])
        t = centre_significance(j)
        if not abs(t) >= threshold:
            continue
        sign = 1 if t > 0 else -1
        kept = rows[0]
        near = np.hypot(kept["x"] - hx, kept["y"] - hy) <= 2.0
        if (near & (kept["sign"] == sign)).any():
            continue
        px, py = int(math.floor(hx + 0.5)), int(math.floor(hy + 0.5))
        if not (0 <= px < nx and 0 <= py < ny and valid[py, px]):
            continue
        row = np.zeros(1, dtype=SOURCE_DTYPE)
        row["peak_x"], row["peak_y"], row["x"], row["y"] = px, py, hx, hy
        row["sign"], row["npix"] = sign, 1
        row["bbox"] = [[px, px, py, py]]
        rows.append(row)
        sig.append(np.array([abs(t)]))
        counts["added"] += 1
    out = np.concatenate(rows)
    sig_out = np.concatenate(sig)
    order = np.lexsort((out["peak_x"], out["peak_y"]))
    out, sig_out = out[order], sig_out[order]
    out["peak_score"] = score[out["peak_y"], out["peak_x"]]
    out["adjacent_opposite"] = pair_opposites(out["x"], out["y"], out["sign"], dipole_radius)
    return out, sig_out, counts
