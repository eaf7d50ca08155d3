"""Alert cutouts: small in-memory FITS files (image + VARIANCE + MASK) around a diaSource.

Layout (what LSST's alert cutouts carry, in the fewest bytes plain FITS allows):

- primary HDU: the image cutout, float32, with a WCS, and ``LTV1``/``LTV2`` = minus the
  parent pixel of the cutout's pixel (0, 0) (IRAF/LSST convention: parent = cutout - LTV);
- ``VARIANCE``: float32, same grid, no WCS (it is the primary's);
- ``MASK``: int16 when the values fit (they do for LSST's default planes), else int32, with
  ``MP_<PLANE>`` = bit index cards as LSST writes them.

The WCS is the parent's linearised at the source, as LSST's alert production does
(ap_association ``makeLocalTransformMatrix``): a TAN projection with CRPIX at the source,
CRVAL its sky position and CD the parent WCS's Jacobian there.  It is exact at the source and
off by ~(distortion curvature) x 15 px^2 at the corners, far below 0.01 px for real
distortions (tests/unit/test_cutouts.py checks the corners with a SIP WCS).  We rejected
slicing the full WCS (Cutout2D's ``wcs=``): a SIP header does not fit one 2880-byte header
block, which costs 2.9 KB per cutout (8.6 KB per alert, 79 KB in all), too close to LSST's
82 KB limit.

Plain FITS pads every header and data unit to 2880 bytes, so a 30 x 30 cutout is 3 header
blocks + 2 + 2 + 1 data blocks = 23,040 bytes whatever its content; three of them keep an
alert near 70 KB.  Pixels outside the parent image are NaN in the image and variance and have
NO_DATA set in the mask (Cutout2D ``mode='partial'``), so a source near an edge still gets a
full-size cutout centred on it.

The bytes are written by a few lines here rather than astropy.io.fits (see ``_hdu_bytes``):
0.14 ms instead of ~5 ms per cutout, which matters at thousands of alerts per exposure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.nddata import Cutout2D, NoOverlapError
from astropy.wcs import WCS

from jitcore.masks import DEFAULT_PLANES

__all__ = ["make_cutout"]

Card = tuple[str, Any, str]

_INT16 = np.iinfo(np.int16)
# Step of the central differences for the Jacobian [px]: their error is the WCS's third
# derivative x step^2, negligible for any smooth distortion.
_STEP = 1.0


def _check_inputs(
    image: np.ndarray, variance: np.ndarray, mask: np.ndarray, wcs: WCS, size: int
) -> None:
    for name, arr in (("image", image), ("variance", variance), ("mask", mask)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            shape = getattr(arr, "shape", type(arr).__name__)
            raise ValueError(f"{name} must be a 2-D numpy array, got {shape}")
    if variance.shape != image.shape or mask.shape != image.shape:
        msg = f"variance {variance.shape} and mask {mask.shape} must match image {image.shape}"
        raise ValueError(msg)
    if not np.issubdtype(image.dtype, np.floating):
        # Off-image pixels are NaN, which an integer image cannot hold.
        raise TypeError(f"image must have a floating dtype, got {image.dtype}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"mask must have an integer dtype, got {mask.dtype}")
    if not isinstance(wcs, WCS) or not wcs.has_celestial or wcs.naxis != 2:
        raise TypeError(f"wcs must be a 2-axis celestial astropy WCS, got {wcs!r}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels), got {size!r}")


def _local_tan_cards(wcs: WCS, x: float, y: float, *, crpix: tuple[float, float]) -> list[Card]:
    """FITS WCS cards of ``wcs`` linearised at parent pixel (``x``, ``y``).

    A gnomonic (TAN) projection tangent at the sky position of (x, y), with CD the Jacobian
    of ``wcs`` there (central differences in the tangent plane), and CRPIX = ``crpix``
    (0-based pixel of (x, y) in the cutout; FITS' 1-based CRPIX is written).
    """
    px = np.array([x, x + _STEP, x - _STEP, x, x])
    py = np.array([y, y, y, y + _STEP, y - _STEP])
    world = wcs.pixel_to_world_values(px, py)
    lng, lat = wcs.wcs.lng, wcs.wcs.lat
    ra = np.radians(np.asarray(world[lng], dtype=float))
    dec = np.radians(np.asarray(world[lat], dtype=float))
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        raise ValueError(f"wcs has no sky position at or near pixel ({x}, {y})")
    # Standard coordinates (xi, eta) of the points on the plane tangent at the source: the
    # TAN projection's intermediate world coordinates for the default LONPOLE (180).
    dra = ra - ra[0]
    cos_c = np.sin(dec[0]) * np.sin(dec) + np.cos(dec[0]) * np.cos(dec) * np.cos(dra)
    xi = np.degrees(np.cos(dec) * np.sin(dra) / cos_c)
    eta = np.degrees(
        (np.cos(dec[0]) * np.sin(dec) - np.sin(dec[0]) * np.cos(dec) * np.cos(dra)) / cos_c
    )
    cd = [
        [(xi[1] - xi[2]) / (2 * _STEP), (xi[3] - xi[4]) / (2 * _STEP)],
        [(eta[1] - eta[2]) / (2 * _STEP), (eta[3] - eta[4]) / (2 * _STEP)],
    ]
    ctype = wcs.wcs.ctype
    radesys = wcs.wcs.radesys or "ICRS"
    cards: list[Card] = [
        ("CTYPE1", f"{ctype[lng][:4]}-TAN", "local linear approximation at the source"),
        ("CTYPE2", f"{ctype[lat][:4]}-TAN", "local linear approximation at the source"),
        ("CRPIX1", crpix[0] + 1.0, "source position (1-based)"),
        ("CRPIX2", crpix[1] + 1.0, "source position (1-based)"),
        ("CRVAL1", math.degrees(ra[0]), "[deg] source position"),
        ("CRVAL2", math.degrees(dec[0]), "[deg] source position"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CD1_1", float(cd[0][0]), ""),
        ("CD1_2", float(cd[0][1]), ""),
        ("CD2_1", float(cd[1][0]), ""),
        ("CD2_2", float(cd[1][1]), ""),
        ("RADESYS", radesys, ""),
    ]
    if radesys in ("FK4", "FK5") and math.isfinite(wcs.wcs.equinox):
        cards.append(("EQUINOX", float(wcs.wcs.equinox), ""))
    return cards


# -- a minimal FITS image writer ------------------------------------------------------------
# astropy.io.fits takes ~5 ms per cutout, nearly all in header bookkeeping and verification
# (config lookups per card); writing the few cards we need directly takes ~0.1 ms, so three
# cutouts cost no longer than the alert's Avro encoding.  tests/unit/test_cutouts.py opens
# every cutout with astropy, warnings as errors and verify("exception"), to keep it honest.
_BLOCK = 2880
_BITPIX = {np.dtype(np.float32): -32, np.dtype(np.int16): 16, np.dtype(np.int32): 32}


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


def _hdu_bytes(first: list[Card], data: np.ndarray, extra: list[Card]) -> bytes:
    ny, nx = data.shape
    cards = [
        *first[:1],
        ("BITPIX", _BITPIX[data.dtype], ""),
        ("NAXIS", 2, ""),
        ("NAXIS1", nx, ""),
        ("NAXIS2", ny, ""),
        *first[1:],
        *extra,
    ]
    header = "".join(_card(*c) for c in cards) + "END".ljust(80)
    header += " " * (-len(header) % _BLOCK)
    raw = data.astype(data.dtype.newbyteorder(">"), copy=False).tobytes()
    return header.encode("ascii") + raw + b"\0" * (-len(raw) % _BLOCK)


def _extension(name: str) -> list[Card]:
    return [
        ("XTENSION", "IMAGE", "image extension"),
        ("PCOUNT", 0, ""),
        ("GCOUNT", 1, ""),
        ("EXTNAME", name, ""),
    ]


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
) -> bytes:
    """FITS bytes of a ``size`` x ``size`` cutout centred on pixel (``x``, ``y``).

    Pixel coordinates are 0-based with pixel centres at integers (astropy/LSST); arrays are
    indexed ``[y, x]``.  ``mask_planes`` (name -> bit) names the mask planes in the header
    and picks the NO_DATA bit for pixels off the image (default: LSST's default planes).
    Raises ValueError when the cutout would not overlap the image at all.
    """
    _check_inputs(image, variance, mask, wcs, size)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"cutout centre must be finite, got ({x}, {y})")
    planes = dict(DEFAULT_PLANES if mask_planes is None else mask_planes)
    size = int(size)
    try:
        cut = Cutout2D(image, (x, y), (size, size), mode="partial", fill_value=np.nan, copy=True)
    except NoOverlapError as exc:
        msg = f"a {size} px cutout at ({x:.1f}, {y:.1f}) does not overlap image {image.shape}"
        raise ValueError(msg) from exc

    # Variance and mask reuse the image cutout's slices: same geometry by construction.
    var = np.full((size, size), np.nan, dtype=np.float32)
    var[cut.slices_cutout] = variance[cut.slices_original]
    no_data = 1 << planes["NO_DATA"] if "NO_DATA" in planes else 0
    msk = np.full((size, size), no_data, dtype=np.int64)
    msk[cut.slices_cutout] = mask[cut.slices_original]
    fits_int16 = msk.min() >= _INT16.min and msk.max() <= _INT16.max
    msk = msk.astype(np.int16 if fits_int16 else np.int32)

    # Parent pixel of cutout pixel (0, 0).  Cutout2D's origin_original is clipped to the
    # image in partial mode; input_position_cutout is not.
    cx, cy = (float(v) for v in cut.input_position_cutout)
    x0, y0 = round(x - cx), round(y - cy)

    wcs_cards = _local_tan_cards(wcs, x, y, crpix=(x - x0, y - y0))
    offset_cards: list[Card] = [
        ("LTV1", -x0, "parent x = cutout x - LTV1 (0-based)"),
        ("LTV2", -y0, "parent y = cutout y - LTV2 (0-based)"),
    ]
    # Names past 8 characters (MP_DETECTED) get HIERARCH cards, as LSST's files have.
    plane_cards: list[Card] = [
        (f"MP_{name}", int(bit), "") for name, bit in sorted(planes.items(), key=lambda kv: kv[1])
    ]
    primary: list[Card] = [("SIMPLE", True, "conforms to FITS standard"), ("EXTEND", True, "")]
    image32 = np.asarray(cut.data, dtype=np.float32)
    return b"".join(
        (
            _hdu_bytes(primary, image32, wcs_cards + offset_cards),
            _hdu_bytes(_extension("VARIANCE"), var, []),
            _hdu_bytes(_extension("MASK"), msk, plane_cards),
        )
    )
