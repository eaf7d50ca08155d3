"""stream.pipeline.defects: the pipeline's defect repair (issue 12) on real Exposure objects."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.wcs import WCS

from diffstream.jitcore.masks import DEFAULT_PLANES, bits, with_planes
from diffstream.jitcore.psf import PsfModel, gaussian_psf
from diffstream.stream.io.exposure import Exposure
from diffstream.stream.pipeline.defects import hard_bits, interpolate_defects

pytestmark = pytest.mark.unit

BAD = 1 << DEFAULT_PLANES["BAD"]
CR = 1 << DEFAULT_PLANES["CR"]
INTRP = 1 << DEFAULT_PLANES["INTRP"]
NO_DATA = 1 << DEFAULT_PLANES["NO_DATA"]


def _exposure(*, psf=True, planes=None, shape=(64, 64)):
    rng = np.random.default_rng(2)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.0, -5.0]
    w.wcs.cdelt = [-5e-5, 5e-5]
    w.wcs.set()
    mask = np.zeros(shape, np.int32)
    mask[:, 20] |= BAD
    mask[30, 40] |= CR
    mask[5:25, 50:62] |= BAD  # a block too wide to fill in its middle
    image = rng.normal(100.0, 3.0, shape).astype(np.float32)
    image[mask != 0] = 5e4  # garbage the fill must not see
    return Exposure(
        image=image,
        variance=np.full(shape, 9.0, np.float32),
        mask=mask,
        mask_planes=dict(planes or DEFAULT_PLANES),
        wcs=w,
        psf=PsfModel.constant(gaussian_psf(1.3, 15), shape) if psf else None,
        photo_calib=1.0,
    )


def test_fills_flags_and_marks_the_unfillable_no_data():
    exp = _exposure()
    out, info = interpolate_defects(exp, name="science")
    masked = (exp.mask & (BAD | CR)) != 0
    filled = (out.mask & INTRP) != 0
    lost = (out.mask & NO_DATA) != 0
    assert info["nFilled"] == int(filled.sum()) and info["nUnfilled"] == int(lost.sum())
    assert np.array_equal(filled | lost, masked) and not np.any(filled & lost)
    assert filled[:, 20].all() and filled[30, 40]
    assert lost[15, 56]  # the middle of the 12 px wide block
    # Filled values look like the sky around them, not like the garbage they replaced.
    assert np.all(np.abs(out.image[filled] - 100.0) < 20.0)
    assert np.all(out.image[lost] == 5e4)  # left as they were, and now NO_DATA
    assert info["psfSigma"] == pytest.approx(1.3, rel=0.05)
    # The input exposure is not modified.
    assert not np.any(exp.mask & (INTRP | NO_DATA)) and np.all(exp.image[:, 20] == 5e4)
    # After repair only the NO_DATA pixels count as "no data" for the subtraction.
    assert np.array_equal((out.mask & hard_bits(out.mask_planes)) != 0, lost)


def test_no_psf_is_a_loud_fallback(caplog):
    exp = _exposure(psf=False)
    with caplog.at_level(logging.WARNING):
        out, info = interpolate_defects(exp, name="template")
    assert info["skipped"] == "no PSF" and info["nFilled"] == 0
    assert "template: no PSF to interpolate" in caplog.text
    masked = (exp.mask & (BAD | CR)) != 0
    assert np.array_equal((out.mask & NO_DATA) != 0, masked)  # unusable, as before
    assert np.array_equal(out.image, exp.image)


def test_missing_planes_are_added():
    planes = {"BAD": 0, "SAT": 1, "CR": 3, "EDGE": 4}  # a file naming no INTRP / NO_DATA
    out, _ = interpolate_defects(_exposure(planes=planes), name="science")
    assert out.mask_planes["INTRP"] == 2 and out.mask_planes["NO_DATA"] == 5
    assert np.all(out.mask[:, 20] & (1 << 2))


def test_nothing_to_fill_keeps_the_arrays():
    exp = _exposure()
    exp.mask[:] = 0
    out, info = interpolate_defects(exp, name="science")
    assert out.image is exp.image and info == {"nFilled": 0, "nUnfilled": 0}
    assert "INTRP" in out.mask_planes


def test_with_planes():
    assert with_planes({"A": 0, "B": 2}, ("C", "A", "D")) == {"A": 0, "B": 2, "C": 1, "D": 3}
    full = {f"P{b}": b for b in range(31)}
    with pytest.raises(ValueError, match="no free mask bit for plane 'X': all 0..30 used"):
        with_planes(full, ("X",))
    assert bits(with_planes({}, ("INTRP",)), ["INTRP"]) == 1
