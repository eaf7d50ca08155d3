"""prepareCalibratedExposure: external PSF and background (diffstream.stream.io.calibrated)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.stream.io.calibrated import MAX_PSF_SIZE, apply_external, read_psf_stamp
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.sim.simulate import simulate_pair, write_exposure

pytestmark = pytest.mark.unit


def _exposure(shape=(40, 50)) -> Exposure:
    rng = np.random.default_rng(0)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.0, -5.0]
    w.wcs.crpix = [25.0, 20.0]
    w.wcs.cd = [[-5.5e-5, 0.0], [0.0, 5.5e-5]]
    image = rng.normal(size=shape).astype(np.float32)
    image[3, 4] = np.nan  # NO_DATA pixel
    return Exposure(
        image=image,
        variance=np.ones(shape, np.float32),
        mask=np.zeros(shape, np.int32),
        mask_planes=dict(DEFAULT_PLANES),
        wcs=w,
        psf=PsfModel.constant(gaussian_psf(1.5, 11), shape, source="hdu"),
        photo_calib=2.0,
        path="science.fits",
    )


def _write(path, *hdus):
    fits.HDUList([fits.PrimaryHDU(), *hdus] if hdus else [fits.PrimaryHDU()]).writeto(path)
    return path


def test_plain_psf_stamp_replaces_the_psf(tmp_path):
    exp = _exposure()
    stamp = 7.0 * gaussian_psf(2.0, 15)
    path = tmp_path / "psf.fits"
    fits.PrimaryHDU(stamp).writeto(path)
    out = apply_external(exp, psf_path=path)
    assert out is not exp and exp.psf.source == "hdu"  # the input is not modified
    assert out.psf.source == "external" and out.psf.degree == 0
    np.testing.assert_allclose(out.psf.at(10.0, 30.0), stamp / stamp.sum())
    assert out.info["psf_external"] == str(path) and "psf_external" not in exp.info
    assert out.info["inputs"] == {
        "psf": {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    }
    assert out.image is exp.image  # nothing else changes


def test_psf_hdu_of_an_lsst_file(tmp_path):
    pair = simulate_pair(seed=2, shape=(96, 96), n_stars=5, n_saturated=0, transients=False)
    path = write_exposure(pair.science, tmp_path / "calexp.fits")
    out = apply_external(_exposure(), psf_path=path)
    np.testing.assert_allclose(out.psf.at(0.0, 0.0), pair.science.psf_centre, rtol=1e-12)
    # The same file without its PSF HDU is an exposure, not a PSF.
    bare = write_exposure(pair.science, tmp_path / "bare.fits", include_psf=False)
    with pytest.raises(BadExposure, match="looks like an exposure .* but has no PSF HDU"):
        apply_external(_exposure(), psf_path=bare)


def test_background_is_added_back(tmp_path):
    exp = _exposure()
    bkg = np.full(exp.shape, 100.0) + np.arange(exp.shape[1])
    bkg[3, 4] = np.nan  # allowed where the image has no data
    path = _write(tmp_path / "bkg.fits", fits.ImageHDU(bkg, name="IMAGE"))
    out = apply_external(exp, background_path=path)
    good = np.isfinite(exp.image)
    np.testing.assert_allclose(out.image[good], (exp.image + bkg.astype(np.float32))[good],
                               rtol=1e-6)  # fmt: skip
    assert np.isnan(out.image[3, 4]) and out.image.dtype == np.float32
    assert out.variance is exp.variance  # a model adds no noise
    assert out.info["background_added"]["mean"] == pytest.approx(np.nanmean(bkg[good]))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert out.info["inputs"] == {"background": {"path": str(path), "sha256": digest}}
    assert out.psf is exp.psf
    # A plain single-HDU image works too.
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros(exp.shape)).writeto(plain)
    np.testing.assert_array_equal(apply_external(exp, background_path=plain).image, exp.image)


def test_nothing_given_returns_the_exposure():
    exp = _exposure()
    assert apply_external(exp) is exp


def test_psf_checks(tmp_path):
    exp = _exposure()

    def psf_file(name, data):
        path = tmp_path / name
        fits.PrimaryHDU(data).writeto(path)
        return path

    with pytest.raises(BadExposure, match="missing.fits: file not found"):
        apply_external(exp, psf_path=tmp_path / "missing.fits")
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(BadExposure, match="not a FITS file or corrupt"):
        apply_external(exp, psf_path=junk)
    with pytest.raises(BadExposure, match=r"square with an odd size, got shape \(10, 10\)"):
        apply_external(exp, psf_path=psf_file("even.fits", np.ones((10, 10))))
    with pytest.raises(BadExposure, match=r"square with an odd size, got shape \(9, 11\)"):
        apply_external(exp, psf_path=psf_file("rect.fits", np.ones((9, 11))))
    bad = gaussian_psf(1.5, 11)
    bad[0, 0] = np.nan
    with pytest.raises(BadExposure, match="PSF stamp has 1 non-finite pixels"):
        apply_external(exp, psf_path=psf_file("nan.fits", bad))
    with pytest.raises(BadExposure, match="PSF stamp must have a positive sum, got -1"):
        apply_external(exp, psf_path=psf_file("neg.fits", -gaussian_psf(1.5, 11)))
    size = MAX_PSF_SIZE + 2
    with pytest.raises(BadExposure, match=f"PSF stamp is {size} px > {MAX_PSF_SIZE} px allowed"):
        read_psf_stamp(psf_file("huge.fits", np.ones((size, size))))
    with pytest.raises(BadExposure, match=r"PSF stamp of 45 px is larger than the exposure"):
        apply_external(exp, psf_path=psf_file("big.fits", gaussian_psf(5.0, 45)))
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    table.name = "PSF"
    with pytest.raises(BadExposure, match="PSF HDU is a BinTableHDU .* not an image stamp"):
        apply_external(exp, psf_path=_write(tmp_path / "archive.fits", table))
    table.name = "OTHER"
    with pytest.raises(BadExposure, match="no 2-D image HDU to read a PSF stamp from"):
        apply_external(exp, psf_path=_write(tmp_path / "table.fits", table))


def test_background_checks(tmp_path):
    exp = _exposure()
    path = tmp_path / "small.fits"
    fits.PrimaryHDU(np.zeros((40, 49))).writeto(path)
    with pytest.raises(
        BadExposure, match=r"background shape \(40, 49\) differs from .* \(40, 50\)"
    ):
        apply_external(exp, background_path=path)
    holes = np.zeros(exp.shape)
    holes[10, 10] = np.inf
    path = tmp_path / "holes.fits"
    fits.PrimaryHDU(holes).writeto(path)
    with pytest.raises(BadExposure, match="background is non-finite in 1 pixels where the image"):
        apply_external(exp, background_path=path)
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    with pytest.raises(BadExposure, match="no 2-D image HDU to read a background from"):
        apply_external(exp, background_path=_write(tmp_path / "t.fits", table))
    with pytest.raises(BadExposure, match="nope.fits: file not found"):
        apply_external(exp, background_path=tmp_path / "nope.fits")
