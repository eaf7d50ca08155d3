"""Fake-source injection (stream/sim/inject.py) and ``diffstream inject``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from astropy.io import fits

from diffstream.stream.cli.main import main
from diffstream.stream.sim import inject as inj

pytestmark = pytest.mark.unit


def _gauss(size: int, sigma: float, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    g = np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / (2 * sigma * sigma))
    return g / g.sum()


def _field(seed=3, shape=(200, 220), sky_sigma=10.0):
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, sky_sigma, shape).astype(np.float32)
    stars = [(50.3, 60.7, 4e4), (150.2, 120.4, 3e4), (170.8, 40.1, 2e4)]
    for x, y, f in stars:
        ix, iy = int(round(x)), int(round(y))
        img[iy - 12 : iy + 13, ix - 12 : ix + 13] += f * _gauss(25, 1.6, x - ix, y - iy)
    var = np.full(shape, sky_sigma**2, np.float32)
    return img, var, np.zeros(shape, bool), stars


def test_injected_flux_and_centroid_against_a_direct_sum():
    img = np.zeros((64, 64), np.float32)
    var = np.ones_like(img)
    stamp = _gauss(21, 1.5)
    out, out_var = inj.inject(img, var, np.array([30.3]), np.array([25.8]), np.array([500.0]),
                              [stamp], gain=4.0)  # fmt: skip
    added = out - img
    assert added.sum() == pytest.approx(500.0, rel=1e-5)
    yy, xx = np.mgrid[:64, :64]
    assert (added * xx).sum() / added.sum() == pytest.approx(30.3, abs=0.02)
    assert (added * yy).sum() / added.sum() == pytest.approx(25.8, abs=0.02)
    # The fakes' photon variance (flux / gain) joins the variance plane.
    assert (out_var - var).sum() == pytest.approx(500.0 / 4.0, rel=1e-3)


def test_snr_to_flux_is_the_optimal_snr_of_the_total_noise():
    img, var, bad, stars = _field()
    sc = inj.scene(img, var, bad, fwhm=1.6 * 2.3548)
    stamp = _gauss(21, 1.6)
    # Empty sky, integer position: V is the sky variance alone (the field's background is
    # zero, so subtracting it changes nothing to speak of).
    f = inj.snr_to_flux(sc, stamp, 100.0, 100.0, 10.0, gain=None, host_noise=False)
    assert f == pytest.approx(10.0 / np.sqrt((stamp**2).sum() / 100.0), rel=1e-3)
    # On a bright star the host's photon noise makes the same S/N cost more flux.
    x, y, _ = stars[0]
    on_sky = inj.snr_to_flux(sc, stamp, x, y, 10.0, gain=2.0, host_noise=False)
    on_star = inj.snr_to_flux(sc, stamp, x, y, 10.0, gain=2.0, host_noise=True)
    assert on_star > 1.5 * on_sky


def test_positions_on_hosts_on_sky_and_apart():
    img, var, bad, stars = _field()
    fwhm = 1.6 * 2.3548
    sc = inj.scene(img, var, bad, fwhm=fwhm)
    xs, ys, host = inj.choose_positions(sc, n_host=3, n_sky=6, rng=np.random.default_rng(1))
    assert host.sum() == 3 and (~host).sum() == 6
    sx, sy = np.array([s[0] for s in stars]), np.array([s[1] for s in stars])
    for x, y, h in zip(xs, ys, host, strict=True):
        d = np.hypot(sx - x, sy - y).min()
        assert (d <= 1.5) if h else (d > 2 * fwhm)
    d = np.hypot(np.subtract.outer(xs, xs), np.subtract.outer(ys, ys))
    assert d[~np.eye(len(xs), dtype=bool)].min() >= 5 * fwhm


def test_star_stamps_are_unit_sum_centred_and_skip_saturated_stars():
    img, var, bad, stars = _field()
    sc = inj.scene(img, var, bad, fwhm=1.6 * 2.3548)
    stamps = inj.star_stamps(sc, size=21)
    assert len(stamps) == 3
    yy, xx = np.mgrid[:21, :21] - 10
    for s in stamps:
        assert s.sum() == pytest.approx(1.0)
        core = np.hypot(xx, yy) <= 4
        assert abs((s * xx)[core].sum() / s[core].sum()) < 0.05
        assert abs((s * yy)[core].sum() / s[core].sum()) < 0.05
        np.testing.assert_allclose(s, _gauss(21, 1.6), atol=2e-3)
    # A saturation level below the brightest peak removes that star.
    peak = float(sc.catalogue["peak"].max())
    assert len(inj.star_stamps(sc, size=21, saturation=1.5 * peak)) == 2


def test_match_positions_one_to_one_nearest_first():
    hit = inj.match_positions(np.array([0.0, 1.0, 50.0]), np.zeros(3), np.array([0.9, 60.0]),
                              np.zeros(2), 3.0)  # fmt: skip
    assert hit.tolist() == [-1, 0, -1]


def test_covered_needs_the_whole_disc_valid_and_inside():
    valid = np.ones((40, 50), bool)
    valid[:, :8] = False  # an invalid edge strip
    valid[30, 30] = False  # one masked pixel
    x = np.array([20.0, 12.0, 11.0, 30.0, 34.6, 47.0])
    y = np.array([15.0, 15.0, 15.0, 26.0, 30.0, 20.0])
    # 12 - 4 = 8: the disc's edge just clears the strip; 11 - 4 = 7 is in it; (30, 26) has
    # the masked pixel on its rim; (34.6, 30) rounds to 35, 5 px away; x = 47 leaves the image.
    out = inj.covered(valid, x, y, 4.0)
    assert out.tolist() == [True, True, False, False, True, False]


def test_a_residual_found_without_the_fake_is_not_the_fake():
    clean = [{"x": 10.0, "y": 10.0, "psfFlux": 500.0, "isNegative": False},
             {"x": 40.0, "y": 40.0, "psfFlux": -300.0, "isNegative": True}]  # fmt: skip
    found = [{"x": 10.5, "y": 10.0, "psfFlux": 530.0, "isNegative": False},  # residual + 30
             {"x": 30.0, "y": 30.0, "psfFlux": 100.0, "isNegative": False},  # new: a fake
             {"x": 10.2, "y": 10.0, "psfFlux": 700.0, "isNegative": False},  # residual + 200
             {"x": 40.0, "y": 40.5, "psfFlux": 90.0, "isNegative": False}]  # fmt: skip
    hit = np.array([0, 1, 2, 3, -1])  # found[3] sits on a clean one of the other sign
    flux = np.array([100.0, 100.0, 300.0, 100.0, 100.0])
    out = inj.not_already_there(hit, flux, found, clean)
    assert out.tolist() == [-1, 1, 2, 3, -1]
    assert hit.tolist() == [0, 1, 2, 3, -1]  # the input is left alone


def test_a_match_far_fainter_than_the_fake_is_not_the_fake():
    """A star's residual fitted as a dipole moves by a pixel or two between the clean and
    the injected run, out of reach of the clean-run comparison: its own flux tells."""
    clean = [{"x": 10.0, "y": 10.0, "psfFlux": 500.0, "isNegative": False}]
    found = [{"x": 13.0, "y": 10.0, "psfFlux": 40.0, "isNegative": False},  # moved residual
             {"x": 13.0, "y": 10.0, "psfFlux": -60.0, "isNegative": False},
             {"x": 30.0, "y": 30.0, "psfFlux": 55.0, "isNegative": False}]  # fmt: skip
    out = inj.not_already_there(np.array([0, 1, 2]), np.full(3, 100.0), found, clean)
    assert out.tolist() == [-1, -1, 2]


def test_cli_writes_the_injected_file_and_its_catalogue(tmp_path):
    from astropy.wcs import WCS

    img, var, bad, stars = _field()
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [110.0, 100.0]
    w.wcs.cdelt = [-0.26 / 3600, 0.26 / 3600]
    hdr = w.to_header()
    hdr["PSF_FWHM"] = 1.6 * 2.3548
    hdr["GAIN"] = 2.0
    src = tmp_path / "in.fits"
    fits.PrimaryHDU(img, header=hdr).writeto(src)
    pos = tmp_path / "pos.csv"
    pos.write_text("x,y,flux\n100.2,150.6,2000\n30.5,170.1,1500\n")
    out = tmp_path / "out.fits"
    assert main(["inject", str(src), "--out", str(out), "--positions", str(pos),
                 "--allow-uncalibrated"]) == 0  # fmt: skip
    added = fits.getdata(out).astype(np.float64) - img
    assert added.sum() == pytest.approx(3500.0, rel=1e-3)
    with (tmp_path / "out.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["flux"]) for r in rows] == [2000.0, 1500.0]
    assert all(float(r["snr"]) > 5 for r in rows) and rows[0]["shape"].startswith("psf:")
    # An S/N request and drawn positions, shaped by the field's own stars.
    out2 = tmp_path / "out2.fits"
    assert main(["inject", str(src), "--out", str(out2), "--n-host", "2", "--n-sky", "3",
                 "--snr", "20", "20", "--from-stars", "--allow-uncalibrated"]) == 0  # fmt: skip
    with (tmp_path / "out2.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and sum(int(r["on_host"]) for r in rows) == 2
    assert all(float(r["snr"]) == pytest.approx(20.0) for r in rows)
    assert all(r["shape"].startswith("star") for r in rows)
