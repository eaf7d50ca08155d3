"""Reading a FITS file's bytes and pixels for :mod:`diffstream.stream.io.fitsio`.

The file is read once into memory and decoded from there.  Its SHA-256 is computed on a
background thread at the lowest priority, while the pipeline runs (hashlib releases the GIL on
large buffers, so the two overlap).  A large file's hash reads the file a second time, in 4 MB
chunks, through the descriptor the bytes came from (the same file even if the path is replaced
meanwhile; a size or mtime change in between is an error): hashing the in-memory bytes kept
them alive until the starved thread got a core, up to 200 MB per file past the decode and the
worker's peak RSS with them (issue 17).

Pixels of plain image HDUs are taken straight from those bytes (``_direct_pixels``): one
byte-swapping cast from the big-endian buffer to the native array we keep.  astropy's
``hdu.data`` on an in-memory file copies the bytes out of the buffer, byte-swaps them into a
new array, and we then cast that array: three passes over each 64 MB plane of a 4k x 4k
exposure instead of one.  Headers stay astropy's (parsing them is cheap), and anything
unusual (tile compression, random groups, BSCALE/BZERO scaling other than the unsigned
convention, BLANK, a data unit past the end of the buffer) goes through astropy, whose
errors we report.  tests/unit/test_fitsread.py checks that both paths give identical arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import numbers
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from diffstream.jitcore.masks import DEFAULT_PLANES, MASK_DTYPE
from diffstream.stream.ops.errors import BadExposure

__all__ = [
    "read_file",
    "open_fits",
    "is_image",
    "first_image_hdu",
    "load_pixels",
    "read_image",
    "read_mef",
    "read_sci_err",
]

# Below this many bytes the hash is computed in line: a thread would cost more than it saves.
_HASH_THREAD_MIN_BYTES = 4 * 2**20
# Stored dtype of each BITPIX that _direct_pixels decodes.
_STORED = {8: "u1", 16: ">i2", 32: ">i4", -32: ">f4", -64: ">f8"}


def read_file(path: str, limit: int) -> tuple[bytes, Callable[[], str]]:
    """The file's (decompressed) bytes, and a callable giving the SHA-256 (hex) of the bytes
    as stored on disk.  The hash of a large file runs on a thread while the caller parses."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise BadExposure("is a directory, not a FITS file", path=path, reason="not_a_file")
        if size > limit:
            raise BadExposure(
                f"file is {size} bytes > limit {limit} for max_pixels",
                path=path,
                reason="too_large",
            )
        with p.open("rb") as fh:
            before = os.fstat(fh.fileno())
            raw = fh.read()
            if len(raw) < _HASH_THREAD_MIN_BYTES:
                sha256 = _sha256_of(raw)
            elif (known := _known_digest(fh.fileno(), before)) is not None:
                sha256 = _known(known)
            else:  # the thread owns a duplicate of the descriptor (closed when hashed)
                sha256 = _sha256_of_file(os.dup(fh.fileno()), before, path)
    except FileNotFoundError as exc:
        raise BadExposure("file not found", path=path, reason="missing") from exc
    except OSError as exc:
        raise BadExposure(f"cannot read file: {exc}", path=path, reason="unreadable") from exc
    if raw[:2] == b"\x1f\x8b":  # gzip; astropy only sniffs it for named files, not buffers
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                raw = gz.read(limit + 1)
        except (OSError, EOFError) as exc:
            raise BadExposure(f"corrupt gzip stream: {exc}", path=path, reason="corrupt") from exc
        if len(raw) > limit:
            raise BadExposure(
                f"decompressed size > limit {limit} for max_pixels", path=path, reason="too_large"
            )
    if not raw:
        raise BadExposure("file is empty", path=path, reason="not_fits")
    return raw, sha256


def _yield_cpu() -> None:
    """Lower the calling thread's priority (Linux: nice is per thread) to the lowest.

    The hash of a deferred checksum (stream.pipeline.subtract) then takes the cores only when the
    subtraction leaves one idle, instead of slowing the decode and the warp it runs beside;
    when the pipeline finally waits for it, nothing else is running and it gets the core.
    Elsewhere (no per-thread nice, or not allowed) this does nothing.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def _on_idle_thread(job: Callable[[], str]) -> Callable[[], str]:
    """Run ``job`` on a daemon thread at the lowest priority; the callable returned waits for
    its answer and re-raises its error in the caller's thread.  A daemon: a load that fails
    while hashing does not wait for the hash."""
    box: dict[str, Any] = {}

    def run() -> None:
        _yield_cpu()
        try:
            box["digest"] = job()
        except BaseException as exc:  # re-raised in the caller's thread by result()
            box["error"] = exc

    thread = threading.Thread(target=run, name="fitsread-sha256", daemon=True)
    thread.start()

    def result() -> str:
        thread.join()
        if "error" in box:
            raise box["error"]
        return str(box["digest"])

    return result


def _sha256_of(raw: bytes) -> Callable[[], str]:
    if len(raw) < _HASH_THREAD_MIN_BYTES:
        digest = hashlib.sha256(raw).hexdigest()
        return lambda: digest
    return _on_idle_thread(lambda: hashlib.sha256(raw).hexdigest())


_HASH_CHUNK = 4 * 2**20

# Digests of large files already hashed by this process, by file identity.  Why: a stream
# worker sees the same template (and calibration files) event after event, and hashing a 4k
# plane's ~200 MB costs ~0.15 core-s (SHA-256 plus the re-read): ~4% of a CCD's core-seconds
# per file.  The identity is git's stat-cache one -- device, inode, size, mtime and ctime in
# ns (a rewrite in place, a copy over it, even a utime that restores mtime changes ctime) --
# and, as git does for "racily clean" entries, a file modified less than _RACY_S before it
# was hashed is never remembered: a write in the same timestamp tick could keep its times.
_RACY_S = 2.0
_DIGESTS_MAX = 256


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _DigestCache:
    """A small LRU of hex digests by file identity, shared by the hashing threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, ...]) -> str | None:
        with self._lock:
            digest = self._items.get(key)
            if digest is not None:
                self._items.move_to_end(key)
            return digest

    def put(self, st: os.stat_result, digest: str) -> None:
        newest = max(st.st_mtime_ns, st.st_ctime_ns)
        if time.time_ns() - newest < _RACY_S * 1e9:
            return  # racily clean: not trusted
        with self._lock:
            self._items[_identity(st)] = digest
            self._items.move_to_end(_identity(st))
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_DIGESTS = _DigestCache(_DIGESTS_MAX)


def _known(digest: str) -> Callable[[], str]:
    return lambda: digest


def _known_digest(fd: int, before: os.stat_result) -> str | None:
    """The remembered digest of the file read through ``fd``, if its identity is the same
    before and after the read (else the hash thread reads it again, and says it changed)."""
    digest = _DIGESTS.get(_identity(before))
    if digest is None or _identity(os.fstat(fd)) != _identity(before):
        return None
    return digest


def _sha256_of_file(fd: int, before: os.stat_result, path: str) -> Callable[[], str]:
    """The SHA-256 of the open file ``fd`` (which this takes over), read from its start on a
    thread at the lowest priority; ``before`` is its fstat when the caller read it.  The
    callable returned waits for the hash and raises its error."""

    def job() -> str:
        try:
            h = hashlib.sha256()
            offset = 0
            while chunk := os.pread(fd, _HASH_CHUNK, offset):
                h.update(chunk)
                offset += len(chunk)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise BadExposure(
                "file changed while it was read (size or mtime): its checksum would not "
                "be of the pixels processed", path=path, reason="changed",
            )  # fmt: skip
        digest = h.hexdigest()
        if _identity(after) == _identity(before):
            _DIGESTS.put(after, digest)
        return digest

    return _on_idle_thread(job)


def open_fits(raw: bytes, path: str) -> fits.HDUList:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # uint=True (astropy's default, pinned here): _direct_pixels decodes the unsigned
            # BZERO convention the way astropy does with it.
            hdul = fits.open(io.BytesIO(raw), lazy_load_hdus=False, memmap=False, uint=True)
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise BadExposure(
                f"not a FITS file or corrupt: {exc}", path=path, reason="not_fits"
            ) from exc
    for w in caught:
        if "truncated" in str(w.message).lower():
            hdul.close()
            raise BadExposure(f"truncated FITS file: {w.message}", path=path, reason="truncated")
    return hdul


def is_image(hdu: Any) -> bool:
    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def first_image_hdu(hdul: fits.HDUList, path: str) -> Any:
    for hdu in hdul:
        if is_image(hdu) and hdu.shape is not None and len(hdu.shape) == 2 and min(hdu.shape) > 0:
            return hdu
    shapes = [
        (hdu.name or "PRIMARY", type(hdu).__name__, getattr(hdu, "shape", None)) for hdu in hdul
    ]
    raise BadExposure(
        f"no image data: no HDU holds a 2-D image (HDUs: {shapes})", path=path, reason="no_image"
    )


def _direct_pixels(hdu: Any, raw: bytes, dtype: np.dtype | type) -> np.ndarray | None:
    """``hdu``'s 2-D pixels as a new native ``dtype`` array, decoded from ``raw`` (the bytes
    the HDUList was opened from) in one cast, or None where astropy must decode them.

    Values equal astropy's ``hdu.data`` cast to ``dtype`` (``casting="unsafe"``) bit for bit.
    """
    # Exact types: CompImageHDU subclasses ImageHDU and GroupsHDU subclasses PrimaryHDU.
    if type(hdu) not in (fits.PrimaryHDU, fits.ImageHDU):
        return None
    header = hdu.header
    stored = _STORED.get(header.get("BITPIX"))
    shape = tuple(hdu.shape or ())
    if stored is None or len(shape) != 2 or "BLANK" in header:
        return None
    if header.get("PCOUNT", 0) != 0 or header.get("GCOUNT", 1) != 1:
        return None
    bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
    if not (isinstance(bscale, numbers.Real) and isinstance(bzero, numbers.Real)):
        return None
    bitpix = int(header["BITPIX"])
    # BZERO = 2^(BITPIX-1) with BSCALE = 1 is FITS's unsigned-integer convention, which
    # astropy (uint=True) decodes to uint16/uint32; any other scaling is astropy's job.
    unsigned = bitpix in (16, 32) and bscale == 1 and bzero == 1 << (bitpix - 1)
    if not unsigned and (bscale != 1 or bzero != 0):
        return None
    info = hdu.fileinfo()
    offset = None if info is None else info.get("datLoc")
    count = shape[0] * shape[1]
    if not isinstance(offset, int) or offset < 0:
        return None
    if offset + count * np.dtype(stored).itemsize > len(raw):
        return None  # truncated: astropy reports it
    pixels = np.frombuffer(raw, dtype=stored, count=count, offset=offset).reshape(shape)
    if unsigned:
        # value = stored + 2^(b-1) modulo 2^b, i.e. the stored bits with the top bit flipped:
        # the uint array astropy builds (np.array(raw, uint) -= 2^(b-1)), in native order.
        utype = np.dtype(f"u{bitpix // 8}")
        top = np.array(1 << (bitpix - 1), dtype=utype)
        flipped = np.bitwise_xor(pixels.view(utype.newbyteorder(">")), top, dtype=utype)
        if np.dtype(dtype).itemsize == utype.itemsize and np.dtype(dtype).kind in "iu":
            return flipped.view(dtype)  # uint32 -> int32 mask: the same bits, no second pass
        return flipped.astype(dtype, casting="unsafe")
    return pixels.astype(dtype, casting="unsafe")  # one pass: byte swap and cast


def load_pixels(hdu: Any, path: str, what: str) -> np.ndarray:
    """``hdu``'s data as astropy decodes it (the fallback, and small HDUs such as a PSF)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = hdu.data
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise BadExposure(f"corrupt {what} data: {exc}", path=path, reason="corrupt") from exc
    if data is None:
        raise BadExposure(f"no image data in {what} HDU {hdu.name!r}", path=path, reason="no_image")
    return np.asarray(data)


def read_image(hdu: Any, raw: bytes, path: str, max_pixels: int, what: str) -> np.ndarray:
    """An image HDU's data as a native float32 array, checking shape and size first."""
    shape = tuple(hdu.shape or ())
    if len(shape) != 2 or min(shape) == 0:
        raise BadExposure(
            f"no image data: {what} HDU {hdu.name!r} has shape {shape}, need a non-empty 2-D image",
            path=path,
            reason="no_image",
        )
    npix = shape[0] * shape[1]
    if npix > max_pixels:
        raise BadExposure(
            f"{what} has {npix} pixels {shape} > max_pixels={max_pixels}",
            path=path,
            reason="too_large",
        )
    direct = _direct_pixels(hdu, raw, np.float32)
    if direct is not None:
        return direct
    data = load_pixels(hdu, path, what)
    if data.dtype.kind not in "fiu":
        raise BadExposure(
            f"{what} HDU holds dtype {data.dtype}, need real numbers", path=path, reason="bad_dtype"
        )
    return np.ascontiguousarray(data, dtype=np.float32)  # np.float32 is native byte order


def _read_mask(hdu: Any, raw: bytes, path: str) -> np.ndarray:
    # A float mask (BITPIX < 0) takes astropy's path, whose dtype the error message names.
    if int(hdu.header.get("BITPIX", 0)) > 0:
        direct = _direct_pixels(hdu, raw, MASK_DTYPE)
        if direct is not None:
            return direct
    mask_raw = load_pixels(hdu, path, "MASK")
    if mask_raw.dtype.kind not in "iu":
        raise BadExposure(
            f"MASK HDU must hold integers, got dtype {mask_raw.dtype}",
            path=path,
            reason="bad_dtype",
        )
    # uint32 masks wrap into int32 with the same bits, which is what matters.
    return np.ascontiguousarray(mask_raw.astype(MASK_DTYPE, casting="unsafe"))


def read_mef(hdul, names, raw, path, max_pixels, info):
    """IMAGE, VARIANCE (float32), MASK (int32), mask planes and the IMAGE HDU of an
    lsst-mef file; ``info`` gets ``mask_planes_from`` and ``xy0``."""
    for need in ("IMAGE", "MASK", "VARIANCE"):
        if need not in names:
            raise BadExposure(
                f"lsst-mef layout needs IMAGE, MASK and VARIANCE HDUs; {need} "
                f"is missing (HDUs: {names})",
                path=path,
                reason="missing_hdu",
            )
        if not is_image(hdul[need]):
            raise BadExposure(
                f"{need} HDU is a {type(hdul[need]).__name__}, not an image",
                path=path,
                reason="no_image",
            )
    img_hdu = hdul["IMAGE"]
    shapes = {n: tuple(hdul[n].shape or ()) for n in ("IMAGE", "MASK", "VARIANCE")}
    if len(set(shapes.values())) != 1:
        raise BadExposure(
            f"shape mismatch between IMAGE/MASK/VARIANCE: {shapes}",
            path=path,
            reason="shape_mismatch",
        )
    image = read_image(img_hdu, raw, path, max_pixels, "IMAGE")
    variance = read_image(hdul["VARIANCE"], raw, path, max_pixels, "VARIANCE")
    mask = _read_mask(hdul["MASK"], raw, path)
    planes = _mask_planes(hdul["MASK"].header, path)
    info["mask_planes_from"] = "header" if planes is not None else "default"
    ltv = (img_hdu.header.get("LTV1"), img_hdu.header.get("LTV2"))
    if all(isinstance(v, numbers.Real) for v in ltv):
        info["xy0"] = (-int(ltv[0]), -int(ltv[1]))  # LSST writes LTV = -xy0
    return image, variance, mask, (planes or dict(DEFAULT_PLANES)), img_hdu


def _mask_planes(header: fits.Header, path: str) -> dict[str, int] | None:
    planes: dict[str, int] = {}
    for key in header:
        if not key.upper().startswith("MP_"):
            continue
        value = header[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or not 0 <= int(value) <= 30
        ):
            raise BadExposure(
                f"mask plane keyword {key} must be a bit index in 0..30, got {value!r}",
                path=path,
                reason="bad_mask_planes",
            )
        planes[key[3:].upper()] = int(value)
    if len(set(planes.values())) != len(planes):
        raise BadExposure(
            f"mask plane keywords reuse a bit: {planes}", path=path, reason="bad_mask_planes"
        )
    return planes or None


# JWST data-quality bits (jwst.datamodels.dqflags): DO_NOT_USE, SATURATED, JUMP_DET.
_JWST_DQ_PLANES = ((1 << 0, "BAD"), (1 << 1, "SAT"), (1 << 2, "CR"))


def read_sci_err(hdul, names, raw, path, max_pixels, info):
    """SCI (float32), variance (float32 or None), mask (int32) and the SCI HDU of a file in
    the JWST/HST layout: SCI with ERR (1-sigma, SCI's units), WHT (weight map) and/or DQ.

    The variance is ERR^2 when ERR is there, else the sum of JWST's VAR_POISSON, VAR_RNOISE
    and VAR_FLAT, else None (estimated from the image by the caller).  WHT is not a
    variance: JWST's resample writes exposure-time or read-noise-only inverse-variance
    weights (``weight_type``), so it only marks the pixels no exposure covered (WHT <= 0)
    NO_DATA.  DQ (level-2 files) maps DO_NOT_USE/SATURATED/JUMP_DET to BAD/SAT/CR.
    ``info`` gets ``variance_from`` and ``mask_from``.
    """
    sci = hdul["SCI"]
    image = read_image(sci, raw, path, max_pixels, "SCI")

    def plane(name: str) -> np.ndarray | None:
        if name not in names or not is_image(hdul[name]) or hdul[name].shape is None:
            return None
        if tuple(hdul[name].shape) != image.shape:
            raise BadExposure(
                f"{name} HDU has shape {tuple(hdul[name].shape)}, SCI has {image.shape}",
                path=path,
                reason="shape_mismatch",
            )
        return read_image(hdul[name], raw, path, max_pixels, name)

    variance = None
    err = plane("ERR")
    if err is not None:
        variance = np.square(err, dtype=np.float32)
        info["variance_from"] = "ERR"
    else:
        found = (plane(n) for n in ("VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"))
        parts = [p for p in found if p is not None]
        if parts:
            variance = np.sum(parts, axis=0, dtype=np.float32)
            info["variance_from"] = "VAR_POISSON+VAR_RNOISE+VAR_FLAT"
    planes = dict(DEFAULT_PLANES)
    mask = np.zeros(image.shape, dtype=MASK_DTYPE)
    used = []
    wht = plane("WHT")
    if wht is not None:
        with np.errstate(invalid="ignore"):
            mask[~(wht > 0)] |= 1 << planes["NO_DATA"]
        used.append("WHT")
    if "DQ" in names and is_image(hdul["DQ"]):
        dq = _read_mask(hdul["DQ"], raw, path)
        if dq.shape != image.shape:
            raise BadExposure(
                f"DQ HDU has shape {dq.shape}, SCI has {image.shape}",
                path=path,
                reason="shape_mismatch",
            )
        for bit, name in _JWST_DQ_PLANES:
            mask[(dq & bit) != 0] |= 1 << planes[name]
        used.append("DQ")
    info["mask_from"] = "+".join(used) or "none"
    info["mask_planes_from"] = "default"
    return image, variance, mask, planes, sci
