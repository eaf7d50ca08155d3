"""Fake point sources put into a real exposure (in the manner of LSST's ``source_injection``).

Arrays in, arrays out, in the file's own units (counts for an uncalibrated DECam image): the
command ``diffstream inject`` (stream/cli/inject.py) reads and writes the files.

- **Where.** At given positions, or at random: "on hosts" (on the light of a detected star or
  galaxy, within a pixel of its centre) and "on sky" (no source above 3 sigma within two
  FWHM), at least five FWHM from each other and from the edges.
- **What shape.** The PSF model's stamp at the position, or (``stamps``) stamps of the
  exposure's own bright, isolated, unsaturated stars (:func:`star_stamps`), shifted to the
  sub-pixel position and scaled.  Flux tests use the star stamps, so that a wrong PSF model
  cannot pass its own test.
- **How bright.** A flux, or a signal-to-noise ratio from the *total* noise over the PSF:
  ``snr = F * sqrt(sum P^2 / V)`` with ``V`` the stated variance plus, where that variance
  counts the sky only (plain files, whose variance is estimated), the host's own photon noise
  ``max(host, 0) / gain``.  A source on a bright star is then as hard to see as that S/N says.

The fakes are noiseless (as LSST's are by default); their photon variance, when the gain is
known, is added to the variance plane so that the pipeline's errors stay honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffstream.jitcore.background import subtract_background
from diffstream.jitcore.psf import PsfModel
from diffstream.jitcore.psfmeasure import subpixel_shift
from diffstream.jitcore.sources import find_stars

__all__ = [
    "Scene",
    "choose_positions",
    "covered",
    "inject",
    "psf_stamp",
    "scene",
    "snr_to_flux",
    "star_stamps",
]


@dataclass
class Scene:
    """What injection needs to know about an exposure, measured once."""

    image: np.ndarray  # background-subtracted (file units)
    variance: np.ndarray  # stated variance
    bad: np.ndarray  # True = unusable
    catalogue: np.ndarray  # sources above 5 sigma (jitcore.sources.STAR_DTYPE)
    occupied: np.ndarray  # True within ~2 FWHM of a source above 3 sigma, or bad
    fwhm: float  # px


def scene(image: np.ndarray, variance: np.ndarray, bad: np.ndarray, *, fwhm: float) -> Scene:
    """Background-subtract, catalogue the sources, and map where the sky is not empty."""
    img, var = subtract_background(
        np.ascontiguousarray(image, np.float32), np.ascontiguousarray(variance, np.float32), bad
    )
    cat = find_stars(img, var, bad, threshold=5.0)
    # Empty sky: farther than two FWHM (plus the source's own radius) from anything above
    # 3 sigma over at least 5 pixels; single noise pixels above 2-3 sigma do not count.
    faint = find_stars(img, var, bad, threshold=3.0)
    occupied = bad.copy()
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx]
    for x, y, npix in zip(faint["x"], faint["y"], faint["npix"], strict=True):
        r = 2.0 * fwhm + np.sqrt(npix / np.pi)
        y0, y1 = max(0, int(y - r)), min(ny, int(y + r) + 2)
        x0, x1 = max(0, int(x - r)), min(nx, int(x + r) + 2)
        d2 = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
        occupied[y0:y1, x0:x1] |= d2 <= r * r
    return Scene(img, var, bad, cat, occupied, float(fwhm))


def _far_enough(x: float, y: float, xs: list[float], ys: list[float], sep: float) -> bool:
    return all((x - a) ** 2 + (y - b) ** 2 >= sep * sep for a, b in zip(xs, ys, strict=True))


def choose_positions(
    sc: Scene, *, n_host: int, n_sky: int, rng: np.random.Generator, min_snr_host: float = 10.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, on_host) of up to ``n_host`` positions on hosts and ``n_sky`` on empty sky.

    Hosts are catalogue sources with a peak S/N of at least ``min_snr_host`` whose footprint
    is whole (not cut by an edge or a bad pixel).  Fewer positions come back when the image
    has no room for more at the required separation (five FWHM).
    """
    ny, nx = sc.image.shape
    edge = int(np.ceil(3.0 * sc.fwhm)) + 2
    sep = 5.0 * sc.fwhm
    xs: list[float] = []
    ys: list[float] = []
    host: list[bool] = []
    cat = sc.catalogue
    if len(cat):
        peak_snr = cat["peak"] / np.sqrt(
            np.maximum(sc.variance[cat["ypeak"].astype(int), cat["xpeak"].astype(int)], 1e-30)
        )
        ok = (
            (cat["flag"] == 0)
            & (peak_snr >= min_snr_host)
            & (cat["x"] > edge) & (cat["x"] < nx - 1 - edge)
            & (cat["y"] > edge) & (cat["y"] < ny - 1 - edge)
        )  # fmt: skip
        for i in rng.permutation(np.flatnonzero(ok)):
            if sum(host) >= n_host:
                break
            r, phi = rng.uniform(0.0, 1.0), rng.uniform(0.0, 2 * np.pi)
            x, y = float(cat["x"][i] + r * np.cos(phi)), float(cat["y"][i] + r * np.sin(phi))
            if _far_enough(x, y, xs, ys, sep):
                xs.append(x)
                ys.append(y)
                host.append(True)
    for _ in range(200 * max(n_sky, 1)):
        if len(host) - sum(host) >= n_sky:
            break
        x, y = rng.uniform(edge, nx - 1 - edge), rng.uniform(edge, ny - 1 - edge)
        if sc.occupied[int(round(y)), int(round(x))]:
            continue
        if _far_enough(x, y, xs, ys, sep):
            xs.append(x)
            ys.append(y)
            host.append(False)
    return np.array(xs), np.array(ys), np.array(host, bool)


def star_stamps(
    sc: Scene,
    *,
    size: int,
    saturation: float | None = None,
    max_stamps: int = 8,
    min_snr: float = 50.0,
) -> list[np.ndarray]:
    """Unit-sum stamps (``size`` odd) of the brightest isolated, unsaturated stars, centred
    on their light (first moments), local background removed.  Empty when there are none."""
    if size % 2 == 0:
        raise ValueError(f"stamp size must be odd, got {size}")
    cat = sc.catalogue
    ny, nx = sc.image.shape
    h = size // 2
    out: list[tuple[float, np.ndarray]] = []
    if not len(cat):
        return []
    err = np.sqrt(np.maximum(cat["flux"], 0.0) + 1e-30)  # ordering only
    order = np.argsort(-cat["flux"] / err)
    for i in order:
        if len(out) >= max_stamps:
            break
        x, y = float(cat["x"][i]), float(cat["y"][i])
        ix, iy = int(round(x)), int(round(y))
        if cat["flag"][i] != 0 or not (h + 2 <= ix < nx - h - 2 and h + 2 <= iy < ny - h - 2):
            continue
        if saturation is not None and cat["peak"][i] >= 0.5 * saturation:
            continue
        others = np.hypot(cat["x"] - x, cat["y"] - y)
        others[i] = np.inf
        if np.any((others < 0.75 * size + sc.fwhm) & (cat["flux"] > 0.01 * cat["flux"][i])):
            continue  # a neighbour would ride along into every fake
        win = (slice(iy - h - 2, iy + h + 3), slice(ix - h - 2, ix + h + 3))
        if sc.bad[win].any():
            continue
        cut = sc.image[win].astype(np.float64)
        var = sc.variance[win].astype(np.float64)
        snr = cut.sum() / np.sqrt(var.sum())
        if snr < min_snr:
            continue
        ring = np.ones(cut.shape, bool)
        ring[3:-3, 3:-3] = False
        cut = cut - np.median(cut[ring])
        yy, xx = np.mgrid[: cut.shape[0], : cut.shape[1]]
        core = np.hypot(xx - (h + 2), yy - (h + 2)) <= 1.5 * sc.fwhm
        w = np.where(core, cut, 0.0)
        cx = float((w * xx).sum() / w.sum()) - (h + 2)
        cy = float((w * yy).sum() / w.sum()) - (h + 2)
        stamp = subpixel_shift(cut, cx, cy)[2:-2, 2:-2]
        out.append((snr, stamp / stamp.sum()))
    return [s for _, s in out]


def _placed(stamp: np.ndarray, x: float, y: float) -> tuple[np.ndarray, int, int]:
    """``stamp`` (centred, unit sum) moved to the sub-pixel offset of (x, y); with the
    integer pixel its centre lands on."""
    ix, iy = int(round(x)), int(round(y))
    padded = np.pad(stamp, 3)
    moved = subpixel_shift(padded, -(x - ix), -(y - iy))[3:-3, 3:-3]
    return moved / moved.sum(), ix, iy


def snr_to_flux(
    sc: Scene,
    stamp: np.ndarray,
    x: float,
    y: float,
    snr: float,
    *,
    gain: float | None,
    host_noise: bool,
) -> float:
    """The flux whose optimal (PSF-weighted) S/N at (x, y) is ``snr``, from the total noise:
    the stated variance, plus the host's own photon noise when ``host_noise`` (the stated
    variance counts the sky only) and the gain is known."""
    p, ix, iy = _placed(stamp, x, y)
    h = p.shape[0] // 2
    win = (slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1))
    v = sc.variance[win].astype(np.float64)
    if host_noise and gain:
        v = v + np.maximum(np.nan_to_num(sc.image[win].astype(np.float64)), 0.0) / gain
    good = np.isfinite(v) & (v > 0)
    return float(snr / np.sqrt(np.sum(p[good] ** 2 / v[good])))


def inject(
    image: np.ndarray,
    variance: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    fluxes: np.ndarray,
    stamps: list[np.ndarray],
    *,
    gain: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``image`` and ``variance`` with a source of ``fluxes[i]`` at each position;
    source ``i`` takes ``stamps[i % len(stamps)]``.  Sources partly off the image are cut."""
    if not stamps:
        raise ValueError("no stamp to inject")
    img = np.array(image, dtype=np.float32, copy=True)
    var = np.array(variance, dtype=np.float32, copy=True)
    ny, nx = img.shape
    for i, (x, y, f) in enumerate(zip(xs, ys, fluxes, strict=True)):
        p, ix, iy = _placed(stamps[i % len(stamps)], float(x), float(y))
        h = p.shape[0] // 2
        y0, y1, x0, x1 = iy - h, iy + h + 1, ix - h, ix + h + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        y0c, x0c, y1c, x1c = max(y0, 0), max(x0, 0), min(y1, ny), min(x1, nx)
        if y1c <= y0c or x1c <= x0c:
            continue
        src = (f * p[sy0 : sy0 + y1c - y0c, sx0 : sx0 + x1c - x0c]).astype(np.float32)
        img[y0c:y1c, x0c:x1c] += src
        if gain:
            var[y0c:y1c, x0c:x1c] += np.maximum(src, 0) / np.float32(gain)
    return img, var


def psf_stamp(psf: PsfModel, x: float, y: float) -> np.ndarray:
    """The PSF model's unit-sum stamp at (x, y)."""
    s = np.asarray(psf.at(x, y), dtype=np.float64)
    return s / s.sum()


def match_positions(
    x_true: np.ndarray, y_true: np.ndarray, x_found: np.ndarray, y_found: np.ndarray, radius: float
) -> np.ndarray:
    """For each true position, the index of the nearest found one within ``radius`` (-1 when
    none); each found position is given to one true position at most, nearest pairs first."""
    out = np.full(len(x_true), -1, dtype=np.int64)
    if not len(x_true) or not len(x_found):
        return out
    d = np.hypot(np.subtract.outer(x_true, x_found), np.subtract.outer(y_true, y_found))
    taken = np.zeros(len(x_found), bool)
    for k in np.argsort(d, axis=None):
        i, j = divmod(int(k), len(x_found))
        if d[i, j] > radius:
            break
        if out[i] < 0 and not taken[j]:
            out[i], taken[j] = j, True
    return out


def covered(valid: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """For each position, whether every pixel within ``radius`` px of it is inside the image
    and ``valid`` (a difference's valid map: True where the score is defined).

    A fake whose PSF core reaches into the invalid area (near static light that the image
    edge cuts, within the ZOGY kernels' reach, or a masked star)
    cannot be found by any detection there, on a host or on sky; LSST's injection
    completeness likewise leaves out sources on EDGE / NO_DATA pixels.
    """
    ny, nx = valid.shape
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = dx * dx + dy * dy <= radius * radius
    out = np.zeros(len(x), bool)
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        ix, iy = int(round(float(xi))), int(round(float(yi)))
        if not (r <= ix < nx - r and r <= iy < ny - r):
            continue
        out[i] = bool(valid[iy - r : iy + r + 1, ix - r : ix + r + 1][disc].all())
    return out


def not_already_there(
    hit: np.ndarray,
    flux: np.ndarray,
    found: list,
    clean: list,
    *,
    radius: float = 2.0,
    min_gain: float = 0.5,
) -> np.ndarray:
    """``hit`` (from :func:`match_positions`) with -1 where the matched diaSource was there
    without the fakes too and the fake did not add to it.

    A fake on a bright star sits on that star's own subtraction residual, which is detected
    in the clean run as well: matching by position alone credited the residual as the fake
    (on the DECam pairs 67 of 88 "found" hosted fakes at S/N >= 15 matched a clean-run
    detection, and half of those gained less than 0.44 of the injected flux).  A matched
    diaSource within ``radius`` px of a clean-run one of the same sign counts only if its
    psfFlux exceeds that one's by ``min_gain`` x the injected ``flux``.  ``found`` and
    ``clean`` are diaSource records (x, y, psfFlux, isNegative).

    A matched diaSource whose own psfFlux is below ``min_gain`` x the injected flux is never
    the fake, wherever the clean run's detections lie: a star's residual fitted as a dipole
    moves its position by a pixel or two between the runs (out of ``radius``), and on the
    DECam pairs 19 such matches with psfFlux of -0.3 to 0.2 of the fake's had been credited.
    """
    out = np.array(hit, dtype=np.int64, copy=True)
    for i, j in enumerate(out):
        if j < 0:
            continue
        s = found[j]
        if not s["psfFlux"] >= min_gain * float(flux[i]):
            out[i] = -1
            continue
        same = [c for c in clean if bool(c.get("isNegative")) == bool(s.get("isNegative"))
                and np.hypot(c["x"] - s["x"], c["y"] - s["y"]) <= radius]  # fmt: skip
        if not same:
            continue
        c = min(same, key=lambda c: np.hypot(c["x"] - s["x"], c["y"] - s["y"]))
        if s["psfFlux"] - c["psfFlux"] < min_gain * float(flux[i]):
            out[i] = -1
    return out
