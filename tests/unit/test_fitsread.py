"""stream.io.fitsread: pixels decoded straight from the file's bytes must equal astropy's, bit for
bit, and every case the fast path does not cover must fall back to astropy."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading

import numpy as np
import pytest
from astropy.io import fits

from diffstream.stream.io import fitsread
from diffstream.stream.io.fitsio import load_exposure
from diffstream.stream.ops.errors import BadExposure

pytestmark = pytest.mark.unit

SHAPE = (37, 53)  # odd sizes: the data units end inside a 2880-byte block

WCS_CARDS = {
    "CTYPE1": "RA---TAN",
    "CTYPE2": "DEC--TAN",
    "CRVAL1": 150.1,
    "CRVAL2": 2.2,
    "CRPIX1": 20.0,
    "CRPIX2": 15.0,
    "CD1_1": -5.5e-5,
    "CD1_2": 0.0,
    "CD2_1": 0.0,
    "CD2_2": 5.5e-5,
    "MAGZP": 27.0,
    "PSF_FWHM": 3.0,
}


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's bytes as unsigned integers: equality that NaN payloads cannot fool."""
    return a.view(f"u{a.dtype.itemsize}")


def _astropy_pixels(raw: bytes, index: int, dtype) -> np.ndarray:
    """The reference: astropy's decoded data, cast as diffstream.stream.io.fitsread did before."""
    with fits.open(io.BytesIO(raw)) as hdul:
        return np.ascontiguousarray(np.asarray(hdul[index].data).astype(dtype, casting="unsafe"))


def _direct(raw: bytes, index: int, dtype):
    with fitsread.open_fits(raw, "mem.fits") as hdul:
        return fitsread._direct_pixels(hdul[index], raw, dtype)


def _hdu_bytes(hdus) -> bytes:
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def _float_values(dtype) -> np.ndarray:
    rng = np.random.default_rng(5)
    data = (rng.normal(0, 1e3, SHAPE)).astype(dtype)
    # float32's extremes: a float64 beyond them would overflow (warn) in the cast either way.
    f32 = np.finfo(np.float32)
    data.flat[:6] = [np.nan, np.inf, -np.inf, -0.0, f32.max, f32.tiny]
    if data.dtype == np.float32:  # a signalling NaN with a payload, kept bit for bit
        data.view(np.uint32).flat[6] = 0x7FA00001
    return data


def _int_values(dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(6)
    data = rng.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)
    data.flat[:2] = [info.min, info.max]
    return data


_STORED = [
    _float_values(np.float32),
    _float_values(np.float64),
    _int_values(np.uint8),
    _int_values(np.int16),
    _int_values(np.int32),
    _int_values(np.uint16),  # written with BZERO = 32768
    _int_values(np.uint32),  # written with BZERO = 2**31
]
# (stored data, dtype we decode into): float32 for IMAGE/VARIANCE, int32 for integer MASKs.
_CASES = [(d, np.float32) for d in _STORED] + [
    (d, np.int32) for d in _STORED if d.dtype.kind != "f"
]


@pytest.mark.parametrize(
    ("data", "dtype"), _CASES, ids=[f"{d.dtype}-to-{np.dtype(t)}" for d, t in _CASES]
)
@pytest.mark.parametrize("where", ["primary", "extension"])
def test_direct_pixels_equal_astropy(data, dtype, where):
    if where == "primary":
        raw = _hdu_bytes([fits.PrimaryHDU(data)])
        index = 0
    else:
        raw = _hdu_bytes([fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 3), ">f4")),
                          fits.ImageHDU(data, name="SCI")])  # fmt: skip
        index = 2
    direct = _direct(raw, index, dtype)
    assert direct is not None, "this layout should take the fast path"
    ref = _astropy_pixels(raw, index, dtype)
    assert direct.dtype == np.dtype(dtype) and direct.dtype.isnative
    assert direct.flags.c_contiguous and direct.flags.writeable
    np.testing.assert_array_equal(_bits(direct), _bits(ref))


def _scaled(bscale, bzero, bitpix="int16"):
    hdu = fits.PrimaryHDU(np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE))
    hdu.scale(bitpix, bscale=bscale, bzero=bzero)
    return _hdu_bytes([hdu])


def _with_blank():
    hdu = fits.PrimaryHDU(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE))
    hdu.header["BLANK"] = 7
    return _hdu_bytes([hdu])


def _compressed():
    data = _float_values(np.float32)
    data[~np.isfinite(data)] = 0.0
    return _hdu_bytes([fits.PrimaryHDU(), fits.CompImageHDU(data)])


@pytest.mark.parametrize(
    ("make", "index"),
    [
        (lambda: _scaled(0.5, 1000.0), 0),  # BSCALE != 1
        (lambda: _scaled(1.0, 1000.0), 0),  # BZERO that is not the unsigned convention
        (lambda: _scaled(1.0, 128.0, "uint8"), 0),  # BZERO on 8-bit data (astropy: int8 / float)
        (_with_blank, 0),  # BLANK: astropy makes those pixels NaN when it scales
        (lambda: _hdu_bytes([fits.PrimaryHDU(_int_values(np.int64))]), 0),  # BITPIX 64
        (_compressed, 1),  # tile compression
    ],
    ids=["bscale", "bzero", "int8", "blank", "bitpix64", "compressed"],
)
def test_unusual_hdus_fall_back_to_astropy(make, index):
    raw = make()
    assert _direct(raw, index, np.float32) is None
    # ... and the loader still decodes them, through astropy.
    with fitsread.open_fits(raw, "mem.fits") as hdul:
        image = fitsread.read_image(hdul[index], raw, "mem.fits", 10**6, "image")
    np.testing.assert_array_equal(_bits(image), _bits(_astropy_pixels(raw, index, np.float32)))


def test_random_groups_fall_back(tmp_path):
    groups = fits.GroupData(
        np.zeros((2, 1, 4, 5), "f4"), parnames=["a"], pardata=[np.zeros(2, "f4")], bitpix=-32
    )
    fits.GroupsHDU(groups).writeto(tmp_path / "groups.fits")  # astropy cannot to a BytesIO
    raw = (tmp_path / "groups.fits").read_bytes()
    assert _direct(raw, 0, np.float32) is None


def test_data_past_the_end_of_the_buffer_falls_back():
    raw = _hdu_bytes([fits.PrimaryHDU(_float_values(np.float32))])
    with fitsread.open_fits(raw, "mem.fits") as hdul:
        short = raw[: len(raw) - 2880 - 8]  # the header parsed from the whole file
        assert fitsread._direct_pixels(hdul[0], short, np.float32) is None


# --- through load_exposure --------------------------------------------------------------------


def _mef(tmp_path, *, mask, image=None, name="mef.fits"):
    image = _float_values(np.float32) if image is None else image
    variance = np.abs(_float_values(np.float32))
    variance[~np.isfinite(variance)] = 1.0
    image = np.where(np.isfinite(image), image, 0.0).astype(image.dtype)
    hdr = fits.Header(WCS_CARDS)
    hdus = [
        fits.PrimaryHDU(header=fits.Header(WCS_CARDS)),
        fits.ImageHDU(image, header=hdr, name="IMAGE"),
        fits.ImageHDU(mask, name="MASK"),
        fits.ImageHDU(variance, name="VARIANCE"),
    ]
    path = tmp_path / name
    fits.HDUList(hdus).writeto(path)
    return path


def _both_paths(path, monkeypatch):
    fast = load_exposure(path, measure_psf=False)
    with monkeypatch.context() as m:
        m.setattr(fitsread, "_direct_pixels", lambda *a: None)
        slow = load_exposure(path, measure_psf=False)
    return fast, slow


@pytest.mark.parametrize("mask_dtype", [np.int32, np.uint32, np.int16, np.uint16, np.uint8])
def test_load_exposure_mef_same_arrays_either_path(tmp_path, monkeypatch, mask_dtype):
    mask = _int_values(mask_dtype)
    fast, slow = _both_paths(_mef(tmp_path, mask=mask), monkeypatch)
    for a, b in ((fast.image, slow.image), (fast.variance, slow.variance), (fast.mask, slow.mask)):
        assert a.dtype == b.dtype and a.dtype.isnative
        np.testing.assert_array_equal(_bits(a), _bits(b))
    assert fast.mask_planes == slow.mask_planes and fast.sha256 == slow.sha256


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float64])
def test_load_exposure_plain_same_arrays_either_path(tmp_path, monkeypatch, dtype):
    data = _int_values(dtype) if np.dtype(dtype).kind in "iu" else _float_values(dtype)
    if data.dtype.kind == "f":
        data[~np.isfinite(data)] = 0.0
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(data, header=fits.Header(WCS_CARDS)).writeto(path)
    fast, slow = _both_paths(path, monkeypatch)
    np.testing.assert_array_equal(_bits(fast.image), _bits(slow.image))
    np.testing.assert_array_equal(fast.mask, slow.mask)


def test_float_mask_is_still_refused_by_dtype(tmp_path):
    path = _mef(tmp_path, mask=np.zeros(SHAPE, ">f4"))
    with pytest.raises(BadExposure, match=r"MASK HDU must hold integers, got dtype >f4"):
        load_exposure(path, measure_psf=False)


# --- the hash ---------------------------------------------------------------------------------


def test_threaded_hash_is_of_the_bytes_read(tmp_path, monkeypatch):
    monkeypatch.setattr(fitsread, "_HASH_THREAD_MIN_BYTES", 0)  # always on a thread
    path = _mef(tmp_path, mask=np.zeros(SHAPE, np.int32))
    exp = load_exposure(path, measure_psf=False)
    assert exp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_threaded_hash_error_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(fitsread, "_HASH_THREAD_MIN_BYTES", 0)

    class Boom:
        def __init__(self, data):
            raise MemoryError("no room to hash")

    monkeypatch.setattr(fitsread.hashlib, "sha256", Boom)
    digest = fitsread._sha256_of(b"x" * 10)
    with pytest.raises(MemoryError, match="no room to hash"):
        digest()


def test_truncated_file_with_threaded_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(fitsread, "_HASH_THREAD_MIN_BYTES", 0)
    raw = _mef(tmp_path, mask=np.zeros(SHAPE, np.int32)).read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[: len(raw) - 3 * 2880])
    with pytest.raises(BadExposure, match=r"truncated FITS file") as info:
        load_exposure(cut, measure_psf=False)
    assert info.value.fields["reason"] == "truncated"


def test_read_bytes_kept_for_other_modules(tmp_path):
    # diffstream.stream.io.calibrated imports these two from diffstream.stream.io.fitsio.
    from diffstream.stream.io.fitsio import open_fits, read_bytes

    path = _mef(tmp_path, mask=np.zeros(SHAPE, np.int32))
    raw, sha = read_bytes(str(path), 10**9)
    assert raw == path.read_bytes() and sha == hashlib.sha256(raw).hexdigest()
    with open_fits(raw, str(path)) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]


def test_hash_thread_runs_at_the_lowest_priority(monkeypatch):
    # The deferred hash only takes idle cores (Linux: nice is per thread).
    monkeypatch.setattr(fitsread, "_HASH_THREAD_MIN_BYTES", 0)
    seen = {}
    real = fitsread.hashlib.sha256

    def spy(data):
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real(data)

    monkeypatch.setattr(fitsread.hashlib, "sha256", spy)
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    digest = fitsread._sha256_of(b"y" * 10)
    assert digest() == real(b"y" * 10).hexdigest()
    assert seen["nice"] == 19
    # The caller's own priority is untouched (compared with itself: a CI runner may be niced).
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller


def test_lowering_priority_failing_is_harmless(monkeypatch):
    def refuse(*args):
        raise PermissionError("not allowed")

    monkeypatch.setattr(fitsread.os, "setpriority", refuse)
    fitsread._yield_cpu()  # no exception


def test_threaded_hash_does_not_keep_the_bytes(tmp_path, monkeypatch):
    # The deferred hash reads the file through its own descriptor: the bytes read for
    # decoding can be freed before it runs (issue 17's peak RSS), and it is still theirs.
    monkeypatch.setattr(fitsread, "_HASH_THREAD_MIN_BYTES", 0)
    path = _mef(tmp_path, mask=np.zeros(SHAPE, np.int32))
    gate = threading.Event()
    monkeypatch.setattr(fitsread, "_yield_cpu", gate.wait)  # the thread waits for a core
    raw, digest = fitsread.read_file(str(path), 10**9)
    assert sys.getrefcount(raw) == 2  # ours and the call's: the waiting thread holds none
    expected = hashlib.sha256(raw).hexdigest()
    del raw
    path.rename(tmp_path / "moved.fits")  # the descriptor still names the file read
    gate.set()
    assert digest() == expected


def test_threaded_hash_refuses_a_file_changed_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(fitsread, "_HASH_THREAD_MIN_BYTES", 0)
    path = _mef(tmp_path, mask=np.zeros(SHAPE, np.int32))
    gate = threading.Event()
    monkeypatch.setattr(fitsread, "_yield_cpu", gate.wait)
    _, digest = fitsread.read_file(str(path), 10**9)
    with path.open("ab") as fh:  # appended in place while the hash waits
        fh.write(b"\0" * 2880)
    gate.set()
    with pytest.raises(BadExposure, match="changed while it was read") as info:
        digest()
    assert info.value.fields["reason"] == "changed"


def _count_hash_threads(monkeypatch):
    started = []
    real = fitsread._on_idle_thread

    def counting(job):
        started.append(job)
        return real(job)

    monkeypatch.setattr(fitsread, "_on_idle_thread", counting)
    return started


def test_a_file_hashed_before_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    # A worker reads the same template event after event: its digest is remembered by file
    # identity (device, inode, size, mtime, ctime) and the ~200 MB are not hashed again.
    monkeypatch.setattr(fitsread, "_HASH_THREAD_MIN_BYTES", 0)
    monkeypatch.setattr(fitsread, "_DIGESTS", fitsread._DigestCache(8))
    path = _mef(tmp_path, mask=np.zeros(SHAPE, np.int32))
    old = os.stat(path).st_mtime_ns - 10 * 10**9
    os.utime(path, ns=(old, old))  # mtime in the past; ctime is now: still racily clean
    started = _count_hash_threads(monkeypatch)
    raw, first = fitsread.read_file(str(path), 10**9)
    expected = hashlib.sha256(raw).hexdigest()
    assert first() == expected
    _, again = fitsread.read_file(str(path), 10**9)
    assert again() == expected
    assert len(started) == 2  # ctime within _RACY_S of the hash: not remembered
    monkeypatch.setattr(fitsread, "_RACY_S", 0.0)  # as if the file were older
    _, third = fitsread.read_file(str(path), 10**9)
    assert third() == expected
    _, fourth = fitsread.read_file(str(path), 10**9)
    assert fourth() == expected
    assert len(started) == 3  # the fourth read hashed nothing
    # The same size rewritten in place (other bytes): a new identity, a new hash.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(old, old))  # even with the old mtime back, ctime moved
    _, fifth = fitsread.read_file(str(path), 10**9)
    assert fifth() == hashlib.sha256(bytes(data)).hexdigest() != expected
    assert len(started) == 4


def test_the_digest_cache_is_bounded_and_forgets_the_oldest(tmp_path, monkeypatch):
    monkeypatch.setattr(fitsread, "_RACY_S", 0.0)
    cache = fitsread._DigestCache(2)
    stats = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"x" * (i + 1))
        stats.append(os.stat(p))
        cache.put(stats[-1], f"d{i}")
    assert cache.get(fitsread._identity(stats[0])) is None
    assert [cache.get(fitsread._identity(s)) for s in stats[1:]] == ["d1", "d2"]
