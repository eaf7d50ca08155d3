"""diaObject records: the LSST 11.1 summary of a diaObject's diaSources and forced photometry.

One home for the summary, used twice: by the APDB (stream/pipeline/apdb/) after association,
over an object's whole history, and by :func:`stream.alerts.packets.make_alert` without an
APDB, over the one diaSource of the alert (a diaObject is never null in our alerts: Rubin
sends one with every non-solar-system alert, and brokers rely on it).

Statistics follow the schema's docs: ``psfFluxMean`` is the inverse-variance weighted mean of
the diaSources' ``psfFlux`` with ``psfFluxMeanErr`` its standard error, ``psfFluxSigma`` the
sample standard deviation (ddof=1; None below two points), ``psfFluxMaxSlope`` the largest
``|d psfFlux / d t|`` between consecutive detections [nJy/d]; ``fpFlux*`` and
``scienceFlux*`` are the same weighted means over the forced sources' ``psfFlux`` (difference)
and ``scienceFlux`` (science).  The position is the weighted mean unit vector (no RA wrap).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from diffstream.schemas import load_parsed

__all__ = [
    "BANDS",
    "DIA_OBJECT_SPECS",
    "DIA_FORCED_SOURCE_SPECS",
    "DIA_OBJECT_FIELDS",
    "DIA_FORCED_SOURCE_FIELDS",
    "dia_object_summary",
    "lsst_specs",
    "record_of",
]

BANDS = ("u", "g", "r", "i", "z", "y")


def lsst_specs(name: str) -> tuple[tuple[str, str, bool], ...]:
    """(name, Avro primitive, nullable) of each field of the 11.1 record ``name``."""
    record = load_parsed(f"lsst/lsst.v11_1.{name}")
    out = []
    for field in record["fields"]:
        ftype = field["type"]
        nullable = isinstance(ftype, list)
        base = next(t for t in ftype if t != "null") if nullable else ftype
        out.append((field["name"], str(base), nullable))
    return tuple(out)


# (name, Avro primitive, nullable) of each field, in schema order.
DIA_OBJECT_SPECS = lsst_specs("diaObject")
DIA_FORCED_SOURCE_SPECS = lsst_specs("diaForcedSource")
DIA_OBJECT_FIELDS = tuple(name for name, _, _ in DIA_OBJECT_SPECS)
DIA_FORCED_SOURCE_FIELDS = tuple(name for name, _, _ in DIA_FORCED_SOURCE_SPECS)


def record_of(specs: Sequence[tuple[str, str, bool]], values: Mapping[str, Any]) -> dict[str, Any]:
    """A record of ``specs`` from ``values``: plain Python types, floats rounded to float32
    where the schema says ``float`` (so it equals what a reader decodes), a missing or
    non-finite nullable value as None.  A required value that is missing raises ValueError."""
    out: dict[str, Any] = {}
    for name, base, nullable in specs:
        value = values.get(name)
        if value is not None and base in ("float", "double"):
            value = float(value)
            if not math.isfinite(value):
                value = None
            elif base == "float":
                value = float(np.float32(value))
        elif value is not None and base in ("int", "long"):
            value = int(value)
        elif value is not None and base == "boolean":
            value = bool(value)
        if value is None and not nullable:
            raise ValueError(f"field {name!r} is required, got None")
        out[name] = value
    return out


def _finite(values: Iterable[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _weighted(flux: np.ndarray, err: np.ndarray) -> tuple[float | None, float | None]:
    """Inverse-variance weighted mean and its standard error over the finite points."""
    ok = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    if not ok.any():
        ok = np.isfinite(flux)
        if not ok.any():
            return None, None
        return float(flux[ok].mean()), None
    w = 1.0 / err[ok] ** 2
    return float((w * flux[ok]).sum() / w.sum()), float(1.0 / math.sqrt(w.sum()))


def _position(sources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ra = np.radians(_finite(s["ra"] for s in sources))
    dec = np.radians(_finite(s["dec"] for s in sources))
    ra_err = _finite(s.get("raErr") for s in sources)
    dec_err = _finite(s.get("decErr") for s in sources)
    good = np.isfinite(ra_err) & np.isfinite(dec_err) & (ra_err > 0) & (dec_err > 0)
    # Weighted only when every source has errors: a mix would let the error-less dominate.
    w = 1.0 / (0.5 * (ra_err**2 + dec_err**2)) if good.all() else np.ones(len(sources))
    vec = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    mean = (vec * w).sum(axis=1)
    mean_ra = math.degrees(math.atan2(mean[1], mean[0])) % 360.0
    mean_dec = math.degrees(math.atan2(mean[2], math.hypot(mean[0], mean[1])))
    out: dict[str, Any] = {"ra": mean_ra, "dec": mean_dec, "raErr": None, "decErr": None}
    if good.all():
        out["raErr"] = 1.0 / math.sqrt(float((1.0 / ra_err**2).sum()))
        out["decErr"] = 1.0 / math.sqrt(float((1.0 / dec_err**2).sum()))
    return out


def dia_object_summary(
    dia_object_id: int,
    sources: Sequence[Mapping[str, Any]],
    forced: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The 11.1 diaObject record of ``dia_object_id`` from its diaSources (at least one) and
    forced sources (records with the schema's field names; any order)."""
    if not sources:
        raise ValueError(f"diaObject {dia_object_id} needs at least one diaSource, got none")
    if len(sources) == 1 and not forced:
        return _single(dia_object_id, sources[0])
    values: dict[str, Any] = {"diaObjectId": int(dia_object_id)}
    values.update(_position(sources))
    mjd = _finite(s["midpointMjdTai"] for s in sources)
    values["firstDiaSourceMjdTai"] = float(mjd.min())
    values["lastDiaSourceMjdTai"] = float(mjd.max())
    # This version of the summary became valid with its latest diaSource (not the wall-clock
    # time of processing, so a replay writes the same record).
    values["validityStartMjdTai"] = float(mjd.max())
    values["nDiaSources"] = len(sources)
    for band in BANDS:
        mine = [s for s in sources if s.get("band") == band]
        values[f"{band}_psfFluxNdata"] = 0
        if mine:
            mine = sorted(mine, key=lambda s: (s["midpointMjdTai"], s["diaSourceId"]))
            flux = _finite(s.get("psfFlux") for s in mine)
            err = _finite(s.get("psfFluxErr") for s in mine)
            t = _finite(s["midpointMjdTai"] for s in mine)
            ok = np.isfinite(flux)
            mean, mean_err = _weighted(flux, err)
            values[f"{band}_psfFluxMean"], values[f"{band}_psfFluxMeanErr"] = mean, mean_err
            values[f"{band}_psfFluxNdata"] = int(ok.sum())
            if ok.sum() >= 2:
                values[f"{band}_psfFluxSigma"] = float(np.std(flux[ok], ddof=1))
                dt = np.diff(t[ok])
                with np.errstate(divide="ignore", invalid="ignore"):
                    slope = np.abs(np.diff(flux[ok]) / dt)
                slope = slope[np.isfinite(slope)]
                if slope.size:
                    values[f"{band}_psfFluxMaxSlope"] = float(slope.max())
            if ok.any():
                values[f"{band}_psfFluxMin"] = float(flux[ok].min())
                values[f"{band}_psfFluxMax"] = float(flux[ok].max())
            if np.isfinite(err).any():
                values[f"{band}_psfFluxErrMean"] = float(np.nanmean(err))
        fmine = [f for f in forced if f.get("band") == band]
        if fmine:
            for prefix, key in (("fpFlux", "psfFlux"), ("scienceFlux", "scienceFlux")):
                flux = _finite(f.get(key) for f in fmine)
                err = _finite(f.get(key + "Err") for f in fmine)
                mean, mean_err = _weighted(flux, err)
                values[f"{band}_{prefix}Mean"], values[f"{band}_{prefix}MeanErr"] = mean, mean_err
    return record_of(DIA_OBJECT_SPECS, values)


def _single(dia_object_id: int, src: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`dia_object_summary` of one diaSource without forced sources, without NumPy
    (every alert of an exposure without an APDB takes this path: ~10x faster)."""
    mjd = float(src["midpointMjdTai"])
    values: dict[str, Any] = {
        "diaObjectId": int(dia_object_id),
        "ra": float(src["ra"]) % 360.0,
        "dec": float(src["dec"]),
        "raErr": src.get("raErr"),
        "decErr": src.get("decErr"),
        "firstDiaSourceMjdTai": mjd,
        "lastDiaSourceMjdTai": mjd,
        "validityStartMjdTai": mjd,
        "nDiaSources": 1,
    }
    for band in BANDS:
        values[f"{band}_psfFluxNdata"] = 0
    src_band = src.get("band")
    flux = src.get("psfFlux")
    if src_band in BANDS and flux is not None and math.isfinite(flux):
        band = str(src_band)
        err = src.get("psfFluxErr")
        good_err = err is not None and math.isfinite(err) and err > 0
        values[f"{band}_psfFluxMean"] = flux
        values[f"{band}_psfFluxMeanErr"] = err if good_err else None
        values[f"{band}_psfFluxNdata"] = 1
        values[f"{band}_psfFluxMin"] = flux
        values[f"{band}_psfFluxMax"] = flux
        values[f"{band}_psfFluxErrMean"] = err
    return record_of(DIA_OBJECT_SPECS, values)
