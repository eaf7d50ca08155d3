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

import dataclasses
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffstream.schemas import load_parsed

__all__ = [
    "BANDS",
    "DIA_OBJECT_SPECS",
    "DIA_FORCED_SOURCE_SPECS",
    "DIA_OBJECT_FIELDS",
    "DIA_FORCED_SOURCE_FIELDS",
    "FLUX_SUM_KINDS",
    "FluxSums",
    "dia_object_summary",
    "flux_sums_of",
    "with_flux_sums",
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


_F32 = struct.Struct("<f")


class _Plan:
    """What :func:`record_of` needs of one spec tuple: the record of all None in schema
    order, each field's Avro type, and the required fields."""

    def __init__(self, specs: Sequence[tuple[str, str, bool]]) -> None:
        self.specs = specs
        self.empty: dict[str, Any] = dict.fromkeys(name for name, _, _ in specs)
        self.base = {name: base for name, base, _ in specs}
        self.required = tuple(name for name, _, nullable in specs if not nullable)


_PLANS: dict[int, _Plan] = {}


def _plan(specs: Sequence[tuple[str, str, bool]]) -> _Plan:
    # By identity: the specs are module constants, and hashing ~100 tuples per call would
    # cost a third of what the plan saves.
    plan = _PLANS.get(id(specs))
    if plan is None or plan.specs is not specs:
        plan = _PLANS[id(specs)] = _Plan(specs)
    return plan


def record_of(specs: Sequence[tuple[str, str, bool]], values: Mapping[str, Any]) -> dict[str, Any]:
    """A record of ``specs`` from ``values``: plain Python types, floats rounded to float32
    where the schema says ``float`` (so it equals what a reader decodes), a missing or
    non-finite nullable value as None.  A required value that is missing raises ValueError.
    Keys of ``values`` that are not fields are ignored.

    It converts the values given, over a copy of the all-None record (schema order): an
    alert's one-source diaObject gives ~20 of its ~100 fields, and a loop over every field
    was ~35 us of each alert."""
    plan = _plan(specs)
    out = plan.empty.copy()
    base_of = plan.base
    for name, value in values.items():
        base = base_of.get(name)
        if base is None or value is None:
            continue
        if base in ("float", "double"):
            value = float(value)
            if not math.isfinite(value):
                value = None
            elif base == "float":
                # struct's float32 round trip: 5x faster than np.float32 per value, and the
                # same rounding (IEEE round-to-nearest); beyond float32 it overflows as numpy.
                try:
                    value = _F32.unpack(_F32.pack(value))[0]
                except OverflowError:
                    value = float(np.float32(value))
        elif base in ("int", "long"):
            value = int(value)
        elif base == "boolean":
            value = bool(value)
        out[name] = value
    for name in plan.required:
        if out[name] is None:
            raise ValueError(f"field {name!r} is required, got None")
    return out


def _num(value: Any) -> float | None:
    """A finite float, or None (None and NaN are "not measured")."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _weighted(pairs: Sequence[tuple[float | None, float | None]]) -> tuple[Any, Any]:
    """Inverse-variance weighted mean of (value, error) pairs and its standard error; the
    plain mean (no error) when no point has a usable error; (None, None) with no value."""
    good = [(v, e) for v, e in pairs if v is not None and e is not None and e > 0]
    if not good:
        values = [v for v, _ in pairs if v is not None]
        return (math.fsum(values) / len(values), None) if values else (None, None)
    weights = [1.0 / (e * e) for _, e in good]
    total = math.fsum(weights)
    mean = math.fsum(w * v for w, (v, _) in zip(weights, good, strict=True)) / total
    return mean, 1.0 / math.sqrt(total)


# The forced-photometry means of a diaObject: prefix in the record -> the forced source's
# value field (its error is the same name + "Err").
FLUX_SUM_KINDS = {"fpFlux": "psfFlux", "scienceFlux": "scienceFlux"}


def _grow(partials: list[float], x: float) -> None:
    """Add ``x`` to ``partials`` exactly: Shewchuk's step, the one ``math.fsum`` runs inside.
    The partials stay non-overlapping doubles whose exact sum is the exact sum of every term
    added, so ``math.fsum(partials)`` is the correctly rounded sum of those terms, which is
    what ``math.fsum`` over the terms themselves returns."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


@dataclass
class FluxSums:
    """Running sums of one band's forced (value, error) pairs, from which :func:`_weighted`'s
    mean and error follow without the pairs: the APDB updates a diaObject's fpFlux and
    scienceFlux means with each visit's forced source instead of re-reading its whole
    forced history (stream/pipeline/apdb/step.py).

    Exact, not floating point: each sum is kept as fsum's partials (:func:`_grow`, a few
    doubles), so :meth:`mean` equals ``_weighted`` over the same pairs bit for bit, in
    whatever order they were added (a reprocessed old visit included).  Rejected: float
    running sums or Welford (within an ulp of the recompute, not equal to it), and
    ``fractions.Fraction`` (exact too, but it made the summaries of a 10k-source exposure
    several times slower, benchmarks/bench_apdb.py).  tests/unit/test_apdb.py compares
    the summaries with a recompute from history."""

    n_good: int = 0  # pairs with a value and an error > 0 (inverse-variance weighted)
    sum_w: list[float] = dataclasses.field(default_factory=list)
    sum_wv: list[float] = dataclasses.field(default_factory=list)
    n_values: int = 0  # pairs with a value (the plain mean when none has an error)
    sum_v: list[float] = dataclasses.field(default_factory=list)

    def add(self, value: Any, error: Any) -> None:
        v, e = _num(value), _num(error)
        if v is None:
            return
        self.n_values += 1
        _grow(self.sum_v, v)
        if e is not None and e > 0:
            w = 1.0 / (e * e)  # the same double _weighted computes, then exactly summed
            self.n_good += 1
            _grow(self.sum_w, w)
            _grow(self.sum_wv, w * v)

    def mean(self) -> tuple[float | None, float | None]:
        """(mean, error) as :func:`_weighted` gives them for the pairs added."""
        if self.n_good:
            total = math.fsum(self.sum_w)
            return math.fsum(self.sum_wv) / total, 1.0 / math.sqrt(total)
        if self.n_values:
            return math.fsum(self.sum_v) / self.n_values, None
        return None, None

    @staticmethod
    def dump(partials: list[float]) -> str:
        """A sum as text: its partials' reprs (exact round trip), comma-separated."""
        return ",".join(repr(p) for p in partials)

    @staticmethod
    def load(text: str) -> list[float]:
        return [float(p) for p in text.split(",")] if text else []


def flux_sums_of(
    forced: Iterable[Mapping[str, Any]], into: dict[tuple[str, str], FluxSums] | None = None
) -> dict[tuple[str, str], FluxSums]:
    """(band, prefix) -> :class:`FluxSums` of these forced sources (prefix: fpFlux or
    scienceFlux), added to ``into`` (updated in place) when given."""
    out: dict[tuple[str, str], FluxSums] = {} if into is None else into
    for row in forced:
        band = row.get("band") or ""
        for prefix, key in FLUX_SUM_KINDS.items():
            out.setdefault((band, prefix), FluxSums()).add(row.get(key), row.get(key + "Err"))
    return out


def with_flux_sums(
    record: Mapping[str, Any], sums: Mapping[tuple[str, str], FluxSums]
) -> dict[str, Any]:
    """``record`` (a diaObject) with its forced-photometry means taken from ``sums``; every
    other field, all derived from its diaSources, kept."""
    values = dict(record)
    for band in BANDS:
        for prefix in FLUX_SUM_KINDS:
            found = sums.get((band, prefix))
            mean, err = (None, None) if found is None else found.mean()
            values[f"{band}_{prefix}Mean"], values[f"{band}_{prefix}MeanErr"] = mean, err
    return record_of(DIA_OBJECT_SPECS, values)


def _position(sources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    errs = [(_num(s.get("raErr")), _num(s.get("decErr"))) for s in sources]
    # Weighted only when every source has errors: a mix would let the error-less dominate.
    weighted = all(a is not None and b is not None and a > 0 and b > 0 for a, b in errs)
    x = y = z = 0.0
    for s, (ra_err, dec_err) in zip(sources, errs, strict=True):
        w = 1.0 / (0.5 * (ra_err**2 + dec_err**2)) if weighted else 1.0  # type: ignore[operator]
        ra, dec = math.radians(float(s["ra"])), math.radians(float(s["dec"]))
        x += w * math.cos(dec) * math.cos(ra)
        y += w * math.cos(dec) * math.sin(ra)
        z += w * math.sin(dec)
    out: dict[str, Any] = {
        "ra": math.degrees(math.atan2(y, x)) % 360.0,
        "dec": math.degrees(math.atan2(z, math.hypot(x, y))),
        "raErr": None,
        "decErr": None,
    }
    if weighted:
        out["raErr"] = 1.0 / math.sqrt(math.fsum(1.0 / a**2 for a, _ in errs))  # type: ignore[operator]
        out["decErr"] = 1.0 / math.sqrt(math.fsum(1.0 / b**2 for _, b in errs))  # type: ignore[operator]
    return out


def _band_stats(values: dict[str, Any], band: str, mine: list[Mapping[str, Any]]) -> None:
    """The per-band psfFlux statistics of one band's diaSources, sorted by time."""
    points = [(_num(s.get("psfFlux")), _num(s.get("psfFluxErr"))) for s in mine]
    flux = [f for f, _ in points if f is not None]
    mean, mean_err = _weighted(points)
    values[f"{band}_psfFluxMean"], values[f"{band}_psfFluxMeanErr"] = mean, mean_err
    values[f"{band}_psfFluxNdata"] = len(flux)
    if len(flux) >= 2:
        avg = math.fsum(flux) / len(flux)
        values[f"{band}_psfFluxSigma"] = math.sqrt(
            math.fsum((f - avg) ** 2 for f in flux) / (len(flux) - 1)
        )
        timed = [
            (float(s["midpointMjdTai"]), f)
            for s, (f, _) in zip(mine, points, strict=True)
            if f is not None
        ]
        slopes = [
            abs((f1 - f0) / (t1 - t0))
            for (t0, f0), (t1, f1) in zip(timed[:-1], timed[1:], strict=True)
            if t1 != t0
        ]
        if slopes:
            values[f"{band}_psfFluxMaxSlope"] = max(slopes)
    if flux:
        values[f"{band}_psfFluxMin"] = min(flux)
        values[f"{band}_psfFluxMax"] = max(flux)
    errors = [e for _, e in points if e is not None]
    if errors:
        values[f"{band}_psfFluxErrMean"] = math.fsum(errors) / len(errors)


def dia_object_summary(
    dia_object_id: int,
    sources: Sequence[Mapping[str, Any]],
    forced: Sequence[Mapping[str, Any]] = (),
    *,
    flux_sums: Mapping[tuple[str, str], FluxSums] | None = None,
) -> dict[str, Any]:
    """The 11.1 diaObject record of ``dia_object_id`` from its diaSources (at least one) and
    forced sources (records with the schema's field names; any order).  ``flux_sums``
    (:func:`flux_sums_of` of the forced sources, kept up to date by the APDB) replaces
    ``forced``: the same record without the forced history.

    Plain Python, not NumPy: an object has tens of points, where NumPy's per-call overhead
    made this 5x slower (the APDB step summarises thousands of objects per exposure,
    benchmarks/bench_apdb.py)."""
    if not sources:
        raise ValueError(f"diaObject {dia_object_id} needs at least one diaSource, got none")
    if len(sources) == 1 and not forced and flux_sums is None:
        return _single(dia_object_id, sources[0])
    values: dict[str, Any] = {"diaObjectId": int(dia_object_id)}
    values.update(_position(sources))
    mjd = [float(s["midpointMjdTai"]) for s in sources]
    values["firstDiaSourceMjdTai"] = min(mjd)
    values["lastDiaSourceMjdTai"] = max(mjd)
    # This version of the summary became valid with its latest diaSource (not the wall-clock
    # time of processing, so a replay writes the same record).
    values["validityStartMjdTai"] = max(mjd)
    values["nDiaSources"] = len(sources)
    by_band: dict[str, list[Mapping[str, Any]]] = {}
    for s in sorted(sources, key=lambda s: (s["midpointMjdTai"], s["diaSourceId"])):
        by_band.setdefault(s.get("band") or "", []).append(s)
    forced_by_band: dict[str, list[Mapping[str, Any]]] = {}
    for f in forced:
        forced_by_band.setdefault(f.get("band") or "", []).append(f)
    for band in BANDS:
        values[f"{band}_psfFluxNdata"] = 0
        if band in by_band:
            _band_stats(values, band, by_band[band])
        if flux_sums is not None:
            continue  # with_flux_sums below
        for prefix, key in FLUX_SUM_KINDS.items():
            if band in forced_by_band:
                rows = forced_by_band[band]
                points = [(_num(f.get(key)), _num(f.get(key + "Err"))) for f in rows]
                mean, mean_err = _weighted(points)
                values[f"{band}_{prefix}Mean"], values[f"{band}_{prefix}MeanErr"] = mean, mean_err
    if flux_sums is not None:
        return with_flux_sums(values, flux_sums)
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
