"""jitcore.hostfit: a point source on a star told from the star's residual modes.

Synthetic difference images on white noise of unit variance: a residual of known shape
(shift and width error of a bright star) plus, or not, a point source at the star.
Seeded and statistical: means within 5 sigma / sqrt(N) of the truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from diffstream.jitcore.detect import SOURCE_DTYPE
from diffstream.jitcore.hostfit import host_point_test, residual_modes, vet_detections
from diffstream.jitcore.psf import gaussian_psf

pytestmark = pytest.mark.unit

SHAPE = (61, 61)
PSF = gaussian_psf(1.8, 21)
HOST = (30.0, 30.0)


def _scene(rng, *, host_flux, dx, dw, new_flux):
    d = rng.normal(0.0, 1.0, SHAPE)
    modes = residual_modes(PSF)
    stamp = host_flux * (dx * modes[0] + dw * modes[2]) + new_flux * PSF
    d[20:41, 20:41] += stamp
    return d


def _fit(d, host_flux, **kw):
    var = np.ones(SHAPE)
    valid = np.ones(SHAPE, bool)
    return host_point_test(d, var, valid, PSF, x=HOST[0], y=HOST[1], host_x=HOST[0],
                           host_y=HOST[1], host_flux=host_flux, **kw)  # fmt: skip


def test_residual_of_a_bright_star_is_not_a_source():
    # Flux 2e5 with a 0.1 px shift and a 2% width error: the plain PSF fit sees a 10-sigma
    # "source" (the size mode projects on the PSF); the host fit does not.
    rng = np.random.default_rng(1)
    t_host, t_plain = [], []
    for _ in range(40):
        d = _scene(rng, host_flux=2e5, dx=0.1, dw=0.02, new_flux=0.0)
        f, e = _fit(d, 2e5)
        t_host.append(f / e)
        fp, ep = _fit(d, 2e5, shape_error=1e-9, shift_error=1e-9)  # no freedom: a PSF fit
        t_plain.append(fp / ep)
    assert np.abs(np.mean(t_plain)) > 5.0  # the premise: the residual fools a PSF fit
    assert abs(np.mean(t_host)) < 5.0 / np.sqrt(40) + 1.0
    assert np.max(np.abs(t_host)) < 5.0


def test_new_source_on_the_star_is_measured_without_bias():
    rng = np.random.default_rng(2)
    fluxes, errs = [], []
    for _ in range(40):
        d = _scene(rng, host_flux=2e5, dx=0.1, dw=0.02, new_flux=300.0)
        f, e = _fit(d, 2e5)
        fluxes.append(f)
        errs.append(e)
    e = float(np.mean(errs))
    assert abs(np.mean(fluxes) - 300.0) < 5.0 * e / np.sqrt(40)
    # The price of the free size mode (rho^2 = 1/2 for a continuous Gaussian): error about
    # sqrt(2) x that of a plain PSF fit, sqrt(1 / sum P^2) here; 1.47 on this pixel grid
    # (np.gradient's central differences make the mode a little more PSF-like).
    plain = 1.0 / np.sqrt((PSF**2).sum())
    assert 1.3 * plain < e < 1.55 * plain
    assert np.std(fluxes) == pytest.approx(e, rel=0.35)


def test_faint_host_costs_nothing():
    rng = np.random.default_rng(3)
    # Host flux 5: the priors (0.15 in flux x mode units) pin the modes well below the noise.
    d = _scene(rng, host_flux=5.0, dx=0.0, dw=0.0, new_flux=100.0)
    _, e = _fit(d, 5.0)
    assert e == pytest.approx(1.0 / np.sqrt((PSF**2).sum()), rel=1e-2)


def test_vet_detections_drops_residuals_and_keeps_sources():
    rng = np.random.default_rng(4)
    hosts = np.array([[15.0, 15.0], [45.0, 15.0], [15.0, 45.0], [45.0, 45.0]])
    fluxes = np.array([2e5, 1.5e5, 1e5, 1.2e5])
    d = rng.normal(0.0, 1.0, SHAPE)
    modes = residual_modes(PSF)
    for (x, y), f in zip(hosts, fluxes, strict=True):
        ix, iy = int(x), int(y)
        d[iy - 10 : iy + 11, ix - 10 : ix + 11] += f * (0.1 * modes[0] + 0.02 * modes[2])
    d[35:56, 35:56] += 400.0 * PSF  # a new source on the fourth host
    found = np.zeros(4, dtype=SOURCE_DTYPE)
    for k, (x, y) in enumerate(hosts):
        found[k]["x"], found[k]["y"] = x + 2.0, y  # a lobe of each residual
        found[k]["peak_x"], found[k]["peak_y"], found[k]["sign"] = int(x) + 2, int(y), 1
    rows, _, counts = vet_detections(
        found, d, np.ones(SHAPE), np.ones(SHAPE, bool), lambda x, y: PSF, hosts, fluxes,
        score=d, threshold=5.0, dipole_radius=10.0,
    )  # fmt: skip
    assert counts["rejected"] == 4 and counts["added"] == 1
    assert len(rows) == 1 and (rows["x"][0], rows["y"][0]) == (45.0, 45.0)
