"""Photometric calibration keywords -> nJy per count."""

from __future__ import annotations

import math

import pytest
from astropy.io import fits

from diffstream.stream.io.calib import photo_calib_from_header
from diffstream.stream.ops.errors import BadExposure

pytestmark = pytest.mark.unit


def _header(**cards):
    h = fits.Header()
    for key, value in cards.items():
        # PHOTCALIB has 9 characters: FITS writes it as a HIERARCH card.
        h[f"HIERARCH {key}" if len(key) > 8 else key] = value
    return h


def _njy_of_mag(mag):
    """AB definition: 3631 Jy at magnitude 0."""
    return 3631e9 * 10 ** (-0.4 * mag)


def test_photcalib_is_taken_as_is():
    assert photo_calib_from_header(_header(PHOTCALIB=0.0625)) == (0.0625, "PHOTCALIB")


@pytest.mark.parametrize("key", ["MAGZP", "MAGZERO"])
@pytest.mark.parametrize("zp", [27.0, 31.4, 33.1])
def test_magzp_converts_a_source_of_known_magnitude(key, zp):
    calib, source = photo_calib_from_header(_header(**{key: zp}))
    assert source == key
    mag = 21.7
    counts = 10 ** (-0.4 * (mag - zp))  # zp = AB magnitude of 1 count
    assert counts * calib == pytest.approx(_njy_of_mag(mag), rel=1e-3)


def test_magzp_of_31_4_is_one_njy_per_count():
    calib, _ = photo_calib_from_header(_header(MAGZP=31.4))
    assert calib == pytest.approx(1.0, rel=1e-12)


def test_fluxmag0_converts_a_source_of_known_magnitude():
    flux0 = 6.3e10
    calib, source = photo_calib_from_header(_header(FLUXMAG0=flux0))
    assert source == "FLUXMAG0"
    mag = 19.3
    counts = flux0 * 10 ** (-0.4 * mag)
    assert counts * calib == pytest.approx(_njy_of_mag(mag), rel=1e-12)


@pytest.mark.parametrize("unit", ["nJy", "njy", " nJy "])
def test_bunit_njy_is_already_calibrated(unit):
    assert photo_calib_from_header(_header(BUNIT=unit)) == (1.0, "BUNIT")


def test_other_bunit_is_not_a_calibration():
    assert photo_calib_from_header(_header(BUNIT="adu")) == (None, "none")


def test_nothing_found():
    assert photo_calib_from_header(_header(EXPTIME=30.0)) == (None, "none")
    assert photo_calib_from_header({}) == (None, "none")


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        ({"PHOTCALIB": 2.0, "MAGZP": 25.0}, "PHOTCALIB"),
        ({"MAGZP": 25.0, "MAGZERO": 26.0}, "MAGZP"),
        ({"MAGZERO": 26.0, "FLUXMAG0": 1e10}, "MAGZERO"),
        ({"FLUXMAG0": 1e10, "BUNIT": "nJy"}, "FLUXMAG0"),
    ],
)
def test_precedence(cards, expected):
    assert photo_calib_from_header(_header(**cards))[1] == expected


@pytest.mark.parametrize("value", [0.0, -1.5])
def test_non_positive_photcalib(value):
    with pytest.raises(BadExposure, match=r"PHOTCALIB must be > 0, got"):
        photo_calib_from_header(_header(PHOTCALIB=value), path="/d/x.fits")


@pytest.mark.parametrize("value", [0.0, -3e9])
def test_non_positive_fluxmag0(value):
    with pytest.raises(BadExposure, match=r"FLUXMAG0 must be > 0, got"):
        photo_calib_from_header(_header(FLUXMAG0=value))


@pytest.mark.parametrize("key", ["PHOTCALIB", "MAGZP", "FLUXMAG0"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values(key, value):
    with pytest.raises(BadExposure, match=rf"{key} must be finite"):
        photo_calib_from_header({key: value})


@pytest.mark.parametrize("value", ["25.0", True])
def test_non_numeric_values(value):
    with pytest.raises(BadExposure, match=r"MAGZP must be a number"):
        photo_calib_from_header({"MAGZP": value})


def test_keyword_without_value():
    h = fits.Header()
    h.append(fits.Card.fromstring("MAGZERO ="))
    with pytest.raises(BadExposure, match=r"MAGZERO must be a number"):
        photo_calib_from_header(h)


@pytest.mark.parametrize("zp", [-1e6, 1e6])
def test_absurd_zero_point(zp):
    with pytest.raises(BadExposure, match=r"MAGZP=.* gives nJy/count=.* finite and > 0"):
        photo_calib_from_header({"MAGZP": zp})


def test_error_names_the_file_and_keyword():
    with pytest.raises(BadExposure, match=r"^/data/v1\.fits: ") as info:
        photo_calib_from_header({"PHOTCALIB": -1.0}, path="/data/v1.fits")
    assert info.value.fields["keyword"] == "PHOTCALIB"
    assert info.value.path == "/data/v1.fits"
