"""stream.io.outputs.write_planes: the file equals, byte for byte, what astropy's HDUList.writeto
wrote for the same planes (the writer we replaced), and a failed write leaves nothing."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from diffstream.jitcore.masks import DEFAULT_PLANES
from diffstream.stream.io import outputs
from diffstream.stream.io.outputs import write_planes

pytestmark = pytest.mark.unit


def make_wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [20.5, 10.5]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.cd = np.array([[-5.55e-5, 1.3e-6], [1.1e-6, 5.56e-5]])
    return wcs


def astropy_planes(path, *, image, variance, mask, mask_planes, wcs, header=None, bunit="nJy"):
    """The reference: write_planes as it was, through astropy's HDUList.writeto."""
    primary = fits.PrimaryHDU()
    for key, value in (header or {}).items():
        primary.header[key[:8].upper()] = value
    wcs_header = wcs.to_header(relax=True)
    img = fits.ImageHDU(np.asarray(image, dtype=np.float32), header=wcs_header, name="IMAGE")
    img.header["BUNIT"] = bunit
    msk = fits.ImageHDU(np.asarray(mask, dtype=np.int32), header=wcs_header, name="MASK")
    for name, bit in sorted(mask_planes.items(), key=lambda kv: kv[1]):
        key = f"MP_{name}"
        msk.header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    var = fits.ImageHDU(np.asarray(variance, dtype=np.float32), header=wcs_header, name="VARIANCE")
    var.header["BUNIT"] = f"{bunit}^2" if bunit else ""
    fits.HDUList([primary, img, msk, var]).writeto(path)


@pytest.fixture
def planes():
    """Factory: (image, variance, mask) of ``shape`` with NaN, inf and high mask bits."""

    def factory(shape=(37, 53), float_dtype=np.float32, mask_dtype=np.int32):
        rng = np.random.default_rng(3)
        image = rng.normal(0, 10, shape).astype(float_dtype)
        variance = rng.uniform(1, 2, shape).astype(float_dtype)
        mask = rng.integers(0, 1 << 9, shape).astype(mask_dtype)
        if image.size >= 3:
            image.flat[:3] = [np.nan, np.inf, -0.0]
            variance.flat[-1] = np.nan
            mask.flat[1] = 1 << 30
        return image, variance, mask

    return factory


@pytest.mark.parametrize(
    ("float_dtype", "mask_dtype"),
    [(np.float32, np.int32), (np.float64, np.int64), (">f4", ">i4"), (np.float32, np.uint32)],
)
@pytest.mark.parametrize("chunk", [None, 100])  # 100 bytes: one row per chunk
def test_bytes_equal_astropy_writer(tmp_path, planes, monkeypatch, float_dtype, mask_dtype, chunk):
    if chunk is not None:
        monkeypatch.setattr(outputs, "_CHUNK_BYTES", chunk)
    image, variance, mask = planes(float_dtype=float_dtype, mask_dtype=mask_dtype)
    kwargs = {
        "image": image,
        "variance": variance,
        "mask": mask,
        "mask_planes": DEFAULT_PLANES,
        "wcs": make_wcs(),
        "header": {"VISIT": 12, "DETECTOR": 3, "alksum": 0.5},
    }
    ours = write_planes(tmp_path / "ours.fits", **kwargs)
    astropy_planes(tmp_path / "ref.fits", **kwargs)
    assert ours.read_bytes() == (tmp_path / "ref.fits").read_bytes()


@pytest.mark.parametrize("shape", [(1, 1), (720, 1), (4, 720)])  # data ending on a block edge
def test_shapes_and_unitless(tmp_path, planes, shape):
    image, variance, mask = planes(shape=shape)
    kwargs = {"image": image, "variance": variance, "mask": mask, "mask_planes": {"BAD": 0},
              "wcs": make_wcs(), "bunit": ""}  # fmt: skip
    write_planes(tmp_path / "ours.fits", **kwargs)
    astropy_planes(tmp_path / "ref.fits", **kwargs)
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "ref.fits").read_bytes()
    with fits.open(tmp_path / "ours.fits") as hdul:
        np.testing.assert_array_equal(hdul["IMAGE"].data, image)
        np.testing.assert_array_equal(hdul["MASK"].data, mask)


def test_shape_mismatch(tmp_path, planes):
    image, variance, mask = planes()
    with pytest.raises(ValueError, match=r"must be 2-D arrays of one shape"):
        write_planes(tmp_path / "x.fits", image=image, variance=variance[1:], mask=mask,
                     mask_planes={}, wcs=make_wcs())  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, planes, monkeypatch):
    image, variance, mask = planes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "_write_data", boom)
    with pytest.raises(OSError, match="disk full"):
        write_planes(tmp_path / "x.fits", image=image, variance=variance, mask=mask,
                     mask_planes={}, wcs=make_wcs())  # fmt: skip
    assert list(tmp_path.iterdir()) == []
