"""What a survey's own headers mean: instrument, ids, band, time scale, exposure time.

:mod:`diffstream.stream.io.fitsio` reads pixels; this module reads the conventions of the
files real surveys publish, so that a file with an unusual but valid header is not taken
for bad input (issue 12).  Each rule names the survey whose format it follows:

* Instrument (:func:`instrument_of`): ``INSTRUME``/``TELESCOP``; DECam cut-outs that lost
  ``INSTRUME`` are still known by their ``FILTER`` ('i DECam SDSS c0003 ...') or
  ``DETPOS``+``CCDNUM``.
* Ids (:func:`header_ids`): a value given by the caller wins.  Known instruments map their
  own integer keys (DECam ``CCDNUM`` -> detector, ``EXPNUM`` -> visit and exposure id;
  ZTF ``RCID`` -> detector, ``EXPID`` -> visit and exposure id).  Otherwise
  VISIT/DETECTOR/EXPID are used when they are integers (or digit strings).  A non-integer
  value (DECam ``DETECTOR='S3-177_107419-14-1'``, JWST ``DETECTOR='MULTIPLE'``) never
  rejects the file: it is ignored with a WARNING and a ``fallbacks`` flag, and kept as
  ``<key>_name`` in the metadata.
* Band (:func:`band_of`): ``ugrizy`` where the filter is known (DECam 'i DECam SDSS ...' ->
  'i', ZTF 'ZTF_r' -> 'r', LSST 'r_57' -> 'r'); otherwise the filter name itself (JWST
  'F200W').  The instrument's filter name is kept in the metadata either way.
* Time scale (:func:`default_timesys`): DECam and ZTF write UTC times without a TIMESYS
  keyword; other files without one keep LSST's TAI (stream.io.fitsio).

A fallback is never silent: :func:`flag` logs a WARNING and appends to
``info["fallbacks"]``, which the pipeline copies into the run's metadata
(:func:`exposure_metadata`).
"""

from __future__ import annotations

import logging
import numbers
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "instrument_of",
    "header_ids",
    "band_of",
    "default_timesys",
    "exposure_time_keyword",
    "flag",
    "exposure_metadata",
]

log = logging.getLogger(__name__)

# Keys of each instrument that hold integer ids, in the order tried; the generic LSST-style
# keywords come after them.  DECam's visit is its exposure number (LSST's obs_decam does the
# same); a ZTF exposure is one readout channel (RCID 0..63) of one EXPID.
_ID_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "DECam": {"visit": ("EXPNUM",), "detector": ("CCDNUM",), "exposure_id": ("EXPNUM",)},
    "ZTF": {"visit": ("EXPID",), "detector": ("RCID",), "exposure_id": ("EXPID",)},
}
_GENERIC_ID_KEY = {"visit": "VISIT", "detector": "DETECTOR", "exposure_id": "EXPID"}
_LSST_BANDS = "ugrizy"
# Surveys whose headers give UTC times without saying so (DECam's MJD-OBS, ZTF's OBSMJD).
_UTC_INSTRUMENTS = ("DECam", "ZTF")


def flag(info: dict[str, Any], path: str, code: str, message: str, **fields: Any) -> None:
    """A fallback taken while reading ``path``: WARNING in the log, flag in the metadata."""
    log.warning("%s: %s", path, message)
    info.setdefault("fallbacks", []).append({"flag": code, "message": message, **fields})


def instrument_of(header: Mapping[str, Any]) -> str | None:
    """'DECam', 'JWST', 'ZTF', 'LSST' or None (unknown): the conventions to apply."""
    inst = str(header.get("INSTRUME", "") or "").strip().upper()
    tele = str(header.get("TELESCOP", "") or "").strip().upper()
    origin = str(header.get("ORIGIN", "") or "").strip().upper()
    filt = str(header.get("FILTER", "") or "")
    if inst == "DECAM" or " DECAM " in f" {filt.upper()} ":
        return "DECam"
    if "CCDNUM" in header and "DETPOS" in header:  # DECam per-CCD keywords (no INSTRUME)
        return "DECam"
    if tele == "JWST":
        return "JWST"
    if inst.startswith("ZTF") or "ZWICKY" in origin or filt.upper().startswith("ZTF_"):
        return "ZTF"
    if inst.startswith("LSST") or tele.startswith("LSST") or "RUBIN" in tele:
        return "LSST"
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def header_ids(
    header: Mapping[str, Any],
    *,
    instrument: str | None,
    given: Mapping[str, int | None],
    path: str,
    info: dict[str, Any],
) -> dict[str, int | None]:
    """``{"visit", "detector", "exposure_id"}`` from ``given`` (the caller's), else the header.

    ``info["id_sources"]`` records where each id came from ("argument", a keyword, or
    None); a non-integer keyword is flagged (``id_ignored``) and kept as ``<name>_name``.
    """
    ids: dict[str, int | None] = {}
    sources: dict[str, str | None] = {}
    for name, generic in _GENERIC_ID_KEY.items():
        raw = header.get(generic)
        unusable = raw is not None and _as_int(raw) is None
        if unusable:
            # Not an id we can use, but it names the detector/visit: keep it for the record.
            info[f"{name}_name"] = str(raw).strip()
        if given.get(name) is not None:
            ids[name], sources[name] = given[name], "argument"
            continue
        ids[name], sources[name] = None, None
        keys = (*_ID_KEYS.get(instrument or "", {}).get(name, ()), generic)
        for key in keys:
            if key not in header:
                continue
            value = _as_int(header[key])
            if value is not None:
                ids[name], sources[name] = value, key
                break
        if unusable:
            if sources[name] is None:
                flag(
                    info, path, "id_ignored",
                    f"keyword {generic}={raw!r} is not an integer: ignored ({name} unknown; "
                    f"give --{name.replace('_', '-')} to set it)",
                    keyword=generic, value=str(raw),
                )  # fmt: skip
    info["id_sources"] = sources
    return ids


def band_of(header: Mapping[str, Any], instrument: str | None) -> tuple[str | None, str | None]:
    """``(band, filter name)``: the band in ``ugrizy`` where the filter is known, else the
    filter name; the filter name as the file spells it (None when there is none)."""
    raw = header.get("FILTER", header.get("BAND"))
    if raw is None or not str(raw).strip():
        return None, None
    name = str(raw).strip()
    first = re.split(r"[\s_~.]+", name)[0]
    if instrument == "ZTF" and name.upper().startswith("ZTF_"):
        first = name[4:].strip()
    # Lower-case letters only, plus DECam's/HSC's capital Y: a capital R or I is Johnson/
    # Cousins on many telescopes, not SDSS r or i.
    if len(first) == 1 and (first in _LSST_BANDS or first == "Y"):
        return first.lower(), name
    return name, name


def default_timesys(instrument: str | None) -> str | None:
    """The time scale of a file without TIMESYS, where its survey documents one."""
    return "UTC" if instrument in _UTC_INSTRUMENTS else None


def exposure_time_keyword(header: Mapping[str, Any]) -> str | None:
    """EXPTIME, else JWST's XPOSURE/EFFEXPTM (effective exposure time, s)."""
    for key in ("EXPTIME", "XPOSURE", "EFFEXPTM"):
        if key in header:
            return key
    return None


def exposure_metadata(exposure: Any) -> dict[str, Any]:
    """The survey facts of a loaded exposure for the run's metadata (science/template)."""
    info = exposure.info
    out: dict[str, Any] = {
        "instrument": info.get("instrument"),
        "band": exposure.band,
        "filter": info.get("filter"),
        "calibSource": exposure.calib_source,
        "ids": {
            "visit": exposure.visit,
            "detector": exposure.detector,
            "exposureId": exposure.exposure_id,
            "sources": info.get("id_sources", {}),
        },
        "fallbacks": list(info.get("fallbacks", [])),
    }
    for key in ("visit_name", "detector_name", "exposure_id_name"):
        if key in info:
            out["ids"][key] = info[key]
    return out
