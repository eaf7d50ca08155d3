"""Alert cutouts: small in-memory FITS files in astropy's CCDData layout, as Rubin's are.

Rubin writes its cutouts with astropy ``CCDData.to_hdu`` (ap_association packageAlerts.py), so
brokers open them with ``CCDData.read(io.BytesIO(cutout))``.  We write the same layout, read
back by that call with its defaults (tests/unit/test_cutouts.py::test_ccddata_round_trip):

- primary HDU: the image cutout, float32, ``BUNIT = 'nJy'`` (CCDData's unit; without it
  ``CCDData.read`` refuses the file), a WCS, and ``LTV1``/``LTV2`` = minus the parent pixel of
  the cutout's pixel (0, 0) (IRAF/LSST convention: parent = cutout - LTV);
- ``MASK``: int16 when the values fit (they do for LSST's default planes), else int32, with
  ``MP_<PLANE>`` = bit index cards as LSST writes them (CCDData reads it as ``!= 0``; the bits
  stay in the file for readers of plain FITS);
- ``UNCERT``: the variance, float32, with ``UTYPE = 'VarianceUncertainty'`` (without UTYPE
  CCDData takes the plane for a standard deviation: every S/N computed from it would be wrong);
- ``PSFIMAGE``: the PSF at the source, float32, at most :data:`PSF_MAX_SIZE` px a side (and
  never larger than the cutout): CCDData's ``psf``.

The side follows the source: its footprint's bbox clamped to [:data:`MIN_SIZE`,
:data:`MAX_SIZE`] (30-102 px, Rubin's rule; :func:`cutout_size`).

The WCS is the parent's linearised at the source, as LSST's alert production does
(ap_association ``makeLocalTransformMatrix``): a TAN projection with CRPIX at the source,
CRVAL its sky position and CD the parent WCS's Jacobian there.  It is exact at the source and
off by ~(distortion curvature) x 15 px^2 at the corners, far below 0.01 px for real
distortions (tests/unit/test_cutouts.py checks the corners with a SIP WCS).  We rejected
slicing the full WCS (Cutout2D's ``wcs=``): a SIP header does not fit one 2880-byte header
block, which costs 2.9 KB per cutout (8.6 KB per alert, 79 KB in all), too close to LSST's
82 KB limit.

Plain FITS pads every header and data unit to 2880 bytes, so a 30 x 30 cutout with a 21 x 21
PSF is 3 header blocks + 2 + 2 + 1 data blocks, +1 +1 for the PSF: 28,800 bytes whatever its
content.  Pixels outside the parent image are NaN in the image and variance and have
NO_DATA set in the mask (Cutout2D ``mode='partial'``), so a source near an edge still gets a
full-size cutout centred on it.

The bytes are written by a few lines here rather than astropy.io.fits (see "a minimal FITS
image writer" below): ~5 ms per cutout with astropy, which matters at thousands of alerts per
exposure.  :class:`CutoutMaker` formats the cards that do not depend on the source once per
exposure, and writes the three cutouts of an alert (difference, science, template: one pixel
grid, one WCS) with one local WCS: ~30 us per cutout at 4k x 4k, against ~70 us through
:func:`make_cutout` and ~140 us with astropy's Cutout2D and every card formatted per cutout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from astropy.wcs import WCS

from diffstream.jitcore.masks import DEFAULT_PLANES, value_range
from diffstream.jitcore.psf import PsfModel

__all__ = ["make_cutout", "CutoutMaker", "cutout_size", "MIN_SIZE", "MAX_SIZE", "PSF_MAX_SIZE"]

MIN_SIZE = 30  # Rubin's cutout side: the footprint bbox clamped to [30, 102] px
MAX_SIZE = 102
PSF_MAX_SIZE = 21  # PSFIMAGE side: the PSF's core and wings, one FITS data block in float32
BUNIT = "nJy"  # the pipeline's images are calibrated to nJy before subtraction

Card = tuple[str, Any, str]
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image, variance, mask), one grid

_INT16 = np.iinfo(np.int16)
# Step of the central differences for the Jacobian [px]: their error is the WCS's third
# derivative x step^2, negligible for any smooth distortion.
_STEP = 1.0
_DX = np.array([0.0, _STEP, -_STEP, 0.0, 0.0])
_DY = np.array([0.0, 0.0, 0.0, _STEP, -_STEP])


def _check_arrays(image: np.ndarray, variance: np.ndarray, mask: np.ndarray) -> None:
    for name, arr in (("image", image), ("variance", variance), ("mask", mask)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            shape = getattr(arr, "shape", type(arr).__name__)
            raise ValueError(f"{name} must be a 2-D numpy array, got {shape}")
    if variance.shape != image.shape or mask.shape != image.shape:
        msg = f"variance {variance.shape} and mask {mask.shape} must match image {image.shape}"
        raise ValueError(msg)
    if image.dtype.kind != "f":
        # Off-image pixels are NaN, which an integer image cannot hold.
        raise TypeError(f"image must have a floating dtype, got {image.dtype}")
    if mask.dtype.kind not in "iu":
        raise TypeError(f"mask must have an integer dtype, got {mask.dtype}")


def _check_wcs_size(wcs: WCS, size: int) -> None:
    if not isinstance(wcs, WCS) or not wcs.has_celestial or wcs.naxis != 2:
        raise TypeError(f"wcs must be a 2-axis celestial astropy WCS, got {wcs!r}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels), got {size!r}")


def _local_tan(wcs: WCS, x: float, y: float) -> tuple[float, float, list[float]]:
    """CRVAL (deg) and CD (CD1_1, CD1_2, CD2_1, CD2_2) of ``wcs`` linearised at parent pixel
    (``x``, ``y``).

    A gnomonic (TAN) projection tangent at the sky position of (x, y), with CD the Jacobian
    of ``wcs`` there (central differences in the tangent plane).
    """
    crval, cd = _local_tans(wcs, np.array([x], dtype=float), np.array([y], dtype=float))
    if not np.isfinite(cd[0]).all():
        raise ValueError(f"wcs has no sky position at or near pixel ({x}, {y})")
    return float(crval[0, 0]), float(crval[0, 1]), [float(v) for v in cd[0]]


def _local_tans(wcs: WCS, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_local_tan` of many positions in one WCS call: CRVALs (n, 2) and CDs (n, 4),
    NaN rows where the WCS has no sky position at or near the pixel.

    One astropy call for all sources instead of one each (~40 us of call overhead per
    source, a quarter of an alert's cutout time).
    """
    world = wcs.pixel_to_world_values(xs[:, None] + _DX, ys[:, None] + _DY)
    lng, lat = wcs.wcs.lng, wcs.wcs.lat
    ra = np.radians(np.asarray(world[lng], dtype=float)).reshape(-1, _DX.size)
    dec = np.radians(np.asarray(world[lat], dtype=float)).reshape(-1, _DX.size)
    ra0, dec0 = ra[:, :1], dec[:, :1]
    # Standard coordinates (xi, eta) of the points on the plane tangent at the source: the
    # TAN projection's intermediate world coordinates for the default LONPOLE (180).
    with np.errstate(invalid="ignore", divide="ignore"):
        dra = ra - ra0
        cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(dra)
        xi = np.degrees(np.cos(dec) * np.sin(dra) / cos_c)
        eta = np.degrees(
            (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(dra)) / cos_c
        )
    cd = np.column_stack([
        (xi[:, 1] - xi[:, 2]) / (2 * _STEP),
        (xi[:, 3] - xi[:, 4]) / (2 * _STEP),
        (eta[:, 1] - eta[:, 2]) / (2 * _STEP),
        (eta[:, 3] - eta[:, 4]) / (2 * _STEP),
    ])  # fmt: skip
    crval = np.column_stack([np.degrees(ra0[:, 0]), np.degrees(dec0[:, 0])])
    bad = ~(np.isfinite(ra).all(axis=1) & np.isfinite(dec).all(axis=1))
    crval[bad] = np.nan
    cd[bad] = np.nan
    return crval, cd


def _wcs_constants(wcs: WCS) -> tuple[str, str, tuple[Card, ...]]:
    """CTYPE1, CTYPE2 and the cards after CD (RADESYS, EQUINOX) of the local TAN WCS."""
    ctype = wcs.wcs.ctype
    radesys = wcs.wcs.radesys or "ICRS"
    tail: list[Card] = [("RADESYS", radesys, "")]
    if radesys in ("FK4", "FK5") and math.isfinite(wcs.wcs.equinox):
        tail.append(("EQUINOX", float(wcs.wcs.equinox), ""))
    lng, lat = wcs.wcs.lng, wcs.wcs.lat
    return f"{ctype[lng][:4]}-TAN", f"{ctype[lat][:4]}-TAN", tuple(tail)


# -- a minimal FITS image writer ------------------------------------------------------------
# astropy.io.fits takes ~5 ms per cutout, nearly all in header bookkeeping and verification
# (config lookups per card); writing the few cards we need directly, from per-exposure
# templates, takes ~30 us, so three cutouts cost no longer than the alert's Avro encoding.
# tests/unit/test_cutouts.py opens every cutout with astropy, warnings as errors and
# verify("exception"), to keep it honest, checks the slicing against Cutout2D's, and the
# bytes of CutoutMaker.make against make_cutout's.
_BLOCK = 2880
_BIG_ENDIAN: dict[int, np.dtype] = {-32: np.dtype(">f4"), 16: np.dtype(">i2"), 32: np.dtype(">i4")}


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, int):
        return f"{value:>20d}"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"FITS cannot hold a non-finite header value, got {value}")
        return f"{repr(value).upper():>20}"  # shortest repr: exact round trip
    if not isinstance(value, str):
        raise TypeError(f"FITS header values must be bool, int, float or str, got {value!r}")
    # Strings are quoted, padded to at least 8 characters inside the quotes (FITS 4.2.1).
    quoted = "'" + str(value).replace("'", "''").ljust(8) + "'"
    return f"{quoted:<20}"


def _card(key: str, value: Any, comment: str = "") -> str:
    head = f"{key:<8}= " if len(key) <= 8 else f"HIERARCH {key} = "
    card = head + _format_value(value)
    if comment:
        card += f" / {comment}"
    if len(card) > 80:
        if len(head) + len(_format_value(value)) > 80:
            raise ValueError(f"FITS card too long: {card!r}")
        card = card[:80]  # trim the comment only
    return card.ljust(80)


def _cards(cards: Sequence[Card]) -> str:
    return "".join(_card(*c) for c in cards)


def _end(text: str) -> bytes:
    """Header text (whole cards) closed by END and padded to whole blocks."""
    text += "END".ljust(80)
    return (text + " " * (-len(text) % _BLOCK)).encode("ascii")


def _image_cards(first: Card, bitpix: int, size: int) -> list[Card]:
    return [first, ("BITPIX", bitpix, ""), ("NAXIS", 2, ""), ("NAXIS1", size, ""),
            ("NAXIS2", size, "")]  # fmt: skip


@lru_cache(maxsize=512)
def _extension_header(name: str, bitpix: int, size: int, extra: tuple[Card, ...]) -> bytes:
    cards = [
        *_image_cards(("XTENSION", "IMAGE", "image extension"), bitpix, size),
        ("PCOUNT", 0, ""),
        ("GCOUNT", 1, ""),
        ("EXTNAME", name, ""),
        *extra,
    ]
    return _end(_cards(cards))


@lru_cache(maxsize=256)
def _primary_parts(size: int, ctype1: str, ctype2: str, tail: tuple[Card, ...]) -> tuple[str, ...]:
    """The constant runs of cards around the per-source ones (see CutoutMaker._primary)."""
    return (
        _cards([
            *_image_cards(("SIMPLE", True, "conforms to FITS standard"), -32, size),
            ("EXTEND", True, ""),
            ("BUNIT", BUNIT, "astropy CCDData unit"),
            ("CTYPE1", ctype1, "local linear approximation at the source"),
            ("CTYPE2", ctype2, "local linear approximation at the source"),
        ]),
        _cards([("CUNIT1", "deg", ""), ("CUNIT2", "deg", "")]),
        _cards(tail),
    )  # fmt: skip


def _data_span(size: int, bitpix: int) -> int:
    nbytes = size * size * abs(bitpix) // 8
    return nbytes + (-nbytes % _BLOCK)


def cutout_size(bbox_size: Any, *, minimum: int = MIN_SIZE, maximum: int = MAX_SIZE) -> int:
    """The cutout side for a source whose footprint bbox is ``bbox_size`` px: clamped to
    [``minimum``, ``maximum``] (a missing or non-finite bbox gives ``minimum``)."""
    try:
        side = float(bbox_size)
    except (TypeError, ValueError):
        return int(minimum)
    if not math.isfinite(side):
        return int(minimum)
    return int(min(max(math.ceil(side), minimum), maximum))


def _psf_stamp(psf: np.ndarray | None, size: int) -> np.ndarray | None:
    """The PSF cropped about its centre to an odd side <= min(PSF_MAX_SIZE, size), float32."""
    if psf is None:
        return None
    arr = np.asarray(psf)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] % 2 == 0:
        raise ValueError(f"a PSF image must be a square 2-D array of odd side, got {arr.shape}")
    side = min(arr.shape[0], PSF_MAX_SIZE, size - (1 - size % 2))
    cut = (arr.shape[0] - side) // 2
    return np.ascontiguousarray(arr[cut : cut + side, cut : cut + side], dtype=np.float32)


def _model_stack(psf_at: Any, xs: np.ndarray, ys: np.ndarray) -> np.ndarray | None:
    """``psf_at``'s stamps at (xs, ys) when it is a bound :meth:`PsfModel.at` (as
    diffstream.jitcore.photometry.stack_psfs tells it), else None (called per position)."""
    model = getattr(psf_at, "__self__", None)
    if isinstance(model, PsfModel) and getattr(psf_at, "__func__", None) is PsfModel.at:
        return model.stack(xs, ys)
    return None


class CutoutMaker:
    """Writes alert cutouts on one parent pixel grid with one WCS.

    Build one per exposure; ``make(triples, x, y)`` returns the cutouts of one source, one per
    (image, variance, mask) triple in ``triples`` (e.g. difference, science and warped
    template, all on the science grid), sharing the local WCS, which is computed once.  The
    bytes equal those of :func:`make_cutout` for each triple.  ``mask_planes`` (name -> bit)
    names the mask planes in the header and picks the NO_DATA bit for pixels off the image
    (default: LSST's default planes).
    """

    def __init__(
        self, wcs: WCS, *, size: int = 30, mask_planes: Mapping[str, int] | None = None
    ) -> None:
        _check_wcs_size(wcs, size)
        planes = dict(DEFAULT_PLANES if mask_planes is None else mask_planes)
        self.wcs = wcs
        self.size = int(size)
        self._no_data = 1 << planes["NO_DATA"] if "NO_DATA" in planes else 0
        # Names past 8 characters (MP_DETECTED) get HIERARCH cards, as LSST's files have.
        plane_cards: tuple[Card, ...] = tuple(
            (f"MP_{name}", int(bit), "")
            for name, bit in sorted(planes.items(), key=lambda kv: kv[1])
        )
        self._plane_cards = plane_cards
        self._ctypes = _wcs_constants(wcs)

    def __call__(
        self,
        image: np.ndarray,
        variance: np.ndarray,
        mask: np.ndarray,
        x: float,
        y: float,
        *,
        psf: np.ndarray | None = None,
        size: int | None = None,
    ) -> bytes:
        """The cutout of one (image, variance, mask) triple at (``x``, ``y``)."""
        psfs = None if psf is None else [psf]
        return self.make([(image, variance, mask)], x, y, psfs=psfs, size=size)[0]

    def make(
        self,
        triples: Sequence[Triple],
        x: float,
        y: float,
        *,
        psfs: Sequence[np.ndarray | None] | None = None,
        size: int | None = None,
    ) -> list[bytes]:
        """FITS bytes of a ``size`` x ``size`` cutout (default: the maker's size) of each
        (image, variance, mask) triple, centred on parent pixel (``x``, ``y``) (0-based, pixel
        centres at integers), with ``psfs[i]`` (odd square stamp, or None) as triple i's
        PSFIMAGE.

        Raises ValueError when a cutout would not overlap its image at all.
        """
        for image, variance, mask in triples:
            _check_arrays(image, variance, mask)
        side = self._side(size)
        return self._make(triples, x, y, None, side, _psf_list(psfs, len(triples)))

    def _side(self, size: int | None) -> int:
        if size is None:
            return self.size
        _check_wcs_size(self.wcs, size)
        return int(size)

    def make_many(
        self,
        triples: Sequence[Triple],
        xs: Sequence[float],
        ys: Sequence[float],
        *,
        sizes: Sequence[int] | None = None,
        psfs_at: Sequence[Any] | None = None,
    ) -> Iterator[list[bytes]]:
        """``make(triples, x, y)`` for each position, in order, with the local WCSs of all
        positions computed in one pass.  The checks, the local WCSs, the sides and the
        PsfModels' stamps are done here, at the call; the cutouts themselves are made as the
        returned iterator is taken, and that part never reads the WCS, so it may run on
        another thread (stream.pipeline.steps.start_cutouts does, beside the trail fits;
        astropy's WCS is not thread-safe).

        ``sizes``: one side per position (default the maker's); ``psfs_at``: one callable
        ``(x, y) -> PSF stamp`` (or None) per triple, giving each cutout's PSFIMAGE."""
        for image, variance, mask in triples:
            _check_arrays(image, variance, mask)
        x_arr = np.asarray(xs, dtype=float)
        y_arr = np.asarray(ys, dtype=float)
        if x_arr.shape != y_arr.shape or x_arr.ndim != 1:
            raise ValueError(f"xs and ys must be 1-D of one length, got {x_arr.shape}, "
                             f"{y_arr.shape}")  # fmt: skip
        if sizes is not None and len(sizes) != x_arr.size:
            raise ValueError(f"sizes must have one side per position, got {len(sizes)}")
        if psfs_at is not None and len(psfs_at) != len(triples):
            raise ValueError(f"psfs_at must have one entry per triple, got {len(psfs_at)}")
        ok = np.isfinite(x_arr) & np.isfinite(y_arr)
        crval, cd = _local_tans(self.wcs, np.where(ok, x_arr, 0.0), np.where(ok, y_arr, 0.0))
        # A PsfModel's stamps for every position at once (PsfModel.stack, one tensor product):
        # its ``at`` called per source was ~0.1 s of a 4k exposure's 1250 alerts (issue 17).
        cubes = [
            _model_stack(f, np.where(ok, x_arr, 0.0), np.where(ok, y_arr, 0.0))
            for f in (psfs_at or ())
        ]
        n = x_arr.size
        sides = [self.size] * n if sizes is None else [self._side(int(s)) for s in sizes]
        return self._many(triples, x_arr, y_arr, crval, cd, sides, psfs_at, cubes)

    def _many(
        self, triples, x_arr, y_arr, crval, cd, sides, psfs_at, cubes
    ) -> Iterator[list[bytes]]:
        """The cutouts of :meth:`make_many`, one position at a time."""
        for i, (x, y) in enumerate(zip(x_arr.tolist(), y_arr.tolist(), strict=True)):
            side = sides[i]
            psfs = (
                [None] * len(triples)
                if psfs_at is None
                else [
                    None if f is None else (f(x, y) if cube is None else cube[i])
                    for f, cube in zip(psfs_at, cubes, strict=True)
                ]
            )
            yield self._make(triples, x, y, (crval[i], cd[i]), side, psfs)

    def _make(
        self,
        triples: Sequence[Triple],
        x: float,
        y: float,
        tan: Any,
        size: int,
        psfs: Sequence[np.ndarray | None],
    ) -> list[bytes]:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"cutout centre must be finite, got ({x}, {y})")
        # Parent pixel of cutout pixel (0, 0): astropy's overlap_slices (Cutout2D, partial
        # mode), ceil(position - size / 2); test_cutout_geometry_matches_cutout2d checks it.
        x0, y0 = math.ceil(x - size / 2.0), math.ceil(y - size / 2.0)
        for image, _, _ in triples:
            ny, nx = image.shape
            if x0 + size <= 0 or y0 + size <= 0 or x0 >= nx or y0 >= ny:
                msg = (
                    f"a {size} px cutout at ({x:.1f}, {y:.1f}) does not overlap image {image.shape}"
                )
                raise ValueError(msg)
        primary = self._primary(x, y, x0, y0, tan, size)
        return [
            self._write(primary, *triple, x0, y0, size, _psf_stamp(psf, size))
            for triple, psf in zip(triples, psfs, strict=True)
        ]

    def _primary(self, x: float, y: float, x0: int, y0: int, tan: Any, size: int) -> bytes:
        if tan is None:
            crval1, crval2, cd = _local_tan(self.wcs, x, y)
        else:
            if not np.isfinite(tan[1]).all():
                raise ValueError(f"wcs has no sky position at or near pixel ({x}, {y})")
            crval1, crval2 = float(tan[0][0]), float(tan[0][1])
            cd = [float(v) for v in tan[1]]
        head, units, tail = _primary_parts(size, *self._ctypes)
        text = "".join((
            head,
            _card("CRPIX1", (x - x0) + 1.0, "source position (1-based)"),
            _card("CRPIX2", (y - y0) + 1.0, "source position (1-based)"),
            _card("CRVAL1", crval1, "[deg] source position"),
            _card("CRVAL2", crval2, "[deg] source position"),
            units,
            _card("CD1_1", cd[0]),
            _card("CD1_2", cd[1]),
            _card("CD2_1", cd[2]),
            _card("CD2_2", cd[3]),
            tail,
            _card("LTV1", -x0, "parent x = cutout x - LTV1 (0-based)"),
            _card("LTV2", -y0, "parent y = cutout y - LTV2 (0-based)"),
        ))  # fmt: skip
        return _end(text)

    def _write(self, primary, image, variance, mask, x0: int, y0: int, size: int, psf) -> bytes:
        ny, nx = image.shape
        # The overlap of the cutout with the parent, in parent and in cutout pixels.
        ya, yb, xa, xb = max(y0, 0), min(y0 + size, ny), max(x0, 0), min(x0 + size, nx)
        parent = np.s_[ya:yb, xa:xb]
        inner = np.s_[ya - y0 : yb - y0, xa - x0 : xb - x0]
        partial = (yb - ya, xb - xa) != (size, size)
        sub_mask = mask[parent]
        lo, hi = value_range(sub_mask)
        if partial:
            lo, hi = min(lo, self._no_data), max(hi, self._no_data)
        mask_bitpix = 16 if lo >= _INT16.min and hi <= _INT16.max else 32
        psf_side = 0 if psf is None else psf.shape[0]
        mask_header = _extension_header("MASK", mask_bitpix, size, self._plane_cards)
        total, (at_image, at_mask, at_var, at_psf) = _layout(
            len(primary), len(mask_header), size, mask_bitpix, psf_side
        )

        # CCDData.to_hdu's order: the image, MASK, UNCERT, then PSFIMAGE.
        out = bytearray(total)  # zero padding
        out[0 : len(primary)] = primary
        out[at_image[1] : at_image[1] + len(mask_header)] = mask_header
        var_header = _extension_header("UNCERT", -32, size, _UNCERT_CARDS)
        out[at_mask[1] : at_mask[1] + len(var_header)] = var_header
        for at, data, bitpix, fill in (
            (at_image[0], image[parent], -32, np.nan),
            (at_mask[0], sub_mask, mask_bitpix, self._no_data),
            (at_var[0], variance[parent], -32, np.nan),
        ):
            pixels = np.frombuffer(out, _BIG_ENDIAN[bitpix], size * size, at).reshape(size, size)
            if partial:
                pixels[...] = fill
            # One cast into the big-endian bytes (unsafe: float64 -> float32 as astype does,
            # and a mask that needs 32 bits wraps into int32 as astype does).
            np.copyto(pixels[inner], data, casting="unsafe")
        if psf is not None:  # whole
            psf_header = _extension_header("PSFIMAGE", -32, psf_side, ())
            out[at_var[1] : at_var[1] + len(psf_header)] = psf_header
            pixels = np.frombuffer(out, _BIG_ENDIAN[-32], psf_side * psf_side, at_psf[0])
            np.copyto(pixels.reshape(psf_side, psf_side), psf, casting="unsafe")
        return bytes(out)


@lru_cache(maxsize=1024)
def _layout(
    primary: int, mask_header: int, size: int, mask_bitpix: int, psf_side: int
) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(total bytes, per HDU (where its data starts, where the next header starts)) of a
    cutout file: the primary and MASK headers of the lengths given, the UNCERT header and,
    with ``psf_side`` > 0, the PSFIMAGE one (cached per size and type), each followed by
    its data units (four entries; a missing PSFIMAGE's is empty at the end)."""
    heads = [primary, mask_header, len(_extension_header("UNCERT", -32, size, _UNCERT_CARDS))]
    spans = [_data_span(size, -32), _data_span(size, mask_bitpix), _data_span(size, -32)]
    if psf_side:
        heads.append(len(_extension_header("PSFIMAGE", -32, psf_side, ())))
        spans.append(_data_span(psf_side, -32))
    pos = 0
    places = []
    for head, span in zip(heads, spans, strict=True):
        pos += head
        places.append((pos, pos + span))
        pos += span
    places += [(pos, pos)] * (4 - len(places))
    return pos, tuple(places)


def _psf_list(psfs: Sequence[np.ndarray | None] | None, n: int) -> list[np.ndarray | None]:
    if psfs is None:
        return [None] * n
    if len(psfs) != n:
        raise ValueError(f"psfs must have one entry per triple ({n}), got {len(psfs)}")
    return list(psfs)


_UNCERT_CARDS: tuple[Card, ...] = (("UTYPE", "VarianceUncertainty", "astropy CCDData"),)


def make_cutout(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    wcs: WCS,
    x: float,
    y: float,
    *,
    size: int = 30,
    mask_planes: Mapping[str, int] | None = None,
    psf: np.ndarray | None = None,
) -> bytes:
    """FITS bytes of a ``size`` x ``size`` cutout centred on pixel (``x``, ``y``).

    Pixel coordinates are 0-based with pixel centres at integers (astropy/LSST); arrays are
    indexed ``[y, x]``.  ``mask_planes`` (name -> bit) names the mask planes in the header
    and picks the NO_DATA bit for pixels off the image (default: LSST's default planes).
    Raises ValueError when the cutout would not overlap the image at all.  For many sources
    (or several images per source) :class:`CutoutMaker` does the same work once.
    """
    _check_arrays(image, variance, mask)
    maker = CutoutMaker(wcs, size=size, mask_planes=mask_planes)
    return maker(image, variance, mask, x, y, psf=psf)
