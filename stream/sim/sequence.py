"""A multi-visit sequence of one field: the same stars, variables, and a transient.

For association and history (the APDB, issue 14): ``n_visits`` science exposures of one
pointing against one template.  Variables vary sinusoidally about a mean flux that the
template lacks, so each is a positive difference source at every visit; the transient is
absent before ``transient_visit`` (0-based) and fades linearly from its peak afterwards.

Each visit's science is the static pair's science (:func:`simulate_pair` without difference
sources) plus the visit's difference sources plus fresh Gaussian noise of the same variance,
so noise differs between visits; the base noise is shared (half the variance: consecutive
visits' errors correlate at 0.5), which per-visit statistics do not mind.  The truth light
curve is in ``truth["flux"]`` [nJy], (n_sources, n_visits).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffstream.stream.sim.fits import write_exposure
from diffstream.stream.sim.model import SimImage
from diffstream.stream.sim.render import add_point_sources
from diffstream.stream.sim.simulate import simulate_pair

__all__ = ["Sequence", "simulate_sequence", "write_sequence"]


@dataclass
class Sequence:
    template: SimImage
    visits: list[SimImage]
    # One row per difference source: x, y (science pixels), ra, dec, kind ("variable" or
    # "transient") and its flux [nJy] at each visit.
    truth: dict[str, np.ndarray] = field(default_factory=dict)


def simulate_sequence(
    *,
    seed: int,
    n_visits: int = 10,
    shape: tuple[int, int] = (256, 256),
    n_variables: int = 4,
    transient_visit: int = 3,
    snr: float = 40.0,
    cadence_days: float = 3.0,
) -> Sequence:
    """The sequence (module docstring); ``snr`` is the variables' mean S/N."""
    if n_visits < 1 or not 0 <= transient_visit < n_visits:
        msg = f"need n_visits >= 1 and 0 <= transient_visit < n_visits, got {n_visits}, "
        raise ValueError(msg + f"{transient_visit}")
    base = simulate_pair(
        seed=seed, shape=shape, transients=False, n_cosmic_rays=0, n_bad_columns=0,
        n_saturated=0, n_stars=60, template_offset_px=(1.3, -0.6), template_rotation_deg=0.2,
    )  # fmt: skip
    sci = base.science
    rng = np.random.default_rng(seed + 1)
    ny, nx = shape
    n = n_variables + 1
    # A grid keeps the sources apart and off the edges, whatever the seed.
    side = math.ceil(math.sqrt(n))
    cells = rng.permutation(side * side)[:n]
    x = 30.0 + (cells % side + rng.uniform(0.3, 0.7, n)) * (nx - 60.0) / side
    y = 30.0 + (cells // side + rng.uniform(0.3, 0.7, n)) * (ny - 60.0) / side
    sigma = np.array([sci.psf_sigma_map(xi, yi) for xi, yi in zip(x, y, strict=True)])
    # Flux of S/N `snr` under the sky: sqrt(4 pi sigma^2 var) is the PSF-fit error [counts].
    var_sky = float(np.median(sci.variance))
    unit = snr * np.sqrt(4.0 * np.pi * sigma**2 * var_sky) * sci.photo_calib  # nJy
    t = np.arange(n_visits, dtype=np.float64)
    flux = np.zeros((n, n_visits))
    for k in range(n_variables):
        phase = rng.uniform(0, 2 * np.pi)
        flux[k] = unit[k] * (1.0 + 0.3 * np.sin(2 * np.pi * t / rng.uniform(4, 8) + phase))
    peak = 2.0 * unit[-1]
    after = t - transient_visit
    flux[-1] = np.where(after >= 0, peak * np.clip(1.0 - 0.1 * after, 0.2, 1.0), 0.0)
    kind = np.array(["variable"] * n_variables + ["transient"])
    ra, dec = sci.wcs.all_pix2world(x, y, 0)

    visits = []
    for v in range(n_visits):
        noise_rng = np.random.default_rng([seed, v])
        image = sci.image.astype(np.float64)
        add_point_sources(image, x, y, flux[:, v] / sci.photo_calib, sigma)
        image += noise_rng.normal(0.0, 1.0, image.shape) * np.sqrt(sci.variance)
        visits.append(
            dataclasses.replace(
                sci,
                image=image.astype(np.float32),
                variance=(2.0 * sci.variance).astype(np.float32),
                mask=sci.mask.copy(),
                mjd_obs=sci.mjd_obs + cadence_days * v,
                visit=int(sci.visit) + v,
            )
        )
    truth = {"x": x, "y": y, "ra": ra, "dec": dec, "kind": kind, "flux": flux}
    return Sequence(template=base.template, visits=visits, truth=truth)


def write_sequence(seq: Sequence, outdir: str | Path) -> tuple[Path, list[Path]]:
    """Write ``template.fits`` and ``visit<NN>.fits`` into ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    template = write_exposure(seq.template, outdir / "template.fits")
    visits = [write_exposure(s, outdir / f"visit{v:02d}.fits") for v, s in enumerate(seq.visits)]
    return template, visits
