"""Association: each diaSource to the nearest diaObject within a radius, or to a new one.

Pure NumPy/SciPy over positions (no database): :func:`associate` is what the APDB step runs
inside its transaction, and what the unit tests drive directly.

Rules (ap_association's, made deterministic):

- a source already associated (a replay: its diaSourceId is stored) keeps its diaObject;
- otherwise candidates are the diaObjects within ``radius_arcsec`` (great-circle), and pairs
  are taken nearest first, ties broken by (diaSourceId, diaObjectId);
- 2-to-1 clash: a diaObject takes at most one source of an exposure (one exposure sees an
  object once); a source that loses its nearest goes to its next candidate, else a new object;
- a new diaObject's id is the diaSourceId that creates it (LSST's convention): a replay, or a
  worker that retries after a crash, creates the same id, so writes key on it.
Dipoles and negative sources are positions like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Association", "associate", "unit_vectors", "separation_arcsec"]

_MAX_CANDIDATES = 8  # per source: more than one object within 1" is already rare


def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors of positions in degrees."""
    ra_r = np.radians(np.asarray(ra, dtype=np.float64))
    dec_r = np.radians(np.asarray(dec, dtype=np.float64))
    cos_d = np.cos(dec_r)
    return np.stack([cos_d * np.cos(ra_r), cos_d * np.sin(ra_r), np.sin(dec_r)], axis=-1)


def separation_arcsec(ra1: Any, dec1: Any, ra2: Any, dec2: Any) -> np.ndarray:
    """Great-circle separation [arcsec] (Vincenty's formula: exact at small angles)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (ra1, dec1, ra2, dec2))
    dra = r2 - r1
    num = np.hypot(
        np.cos(d2) * np.sin(dra), np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(dra)
    )
    den = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(dra)
    return np.asarray(np.degrees(np.arctan2(num, den)) * 3600.0)


@dataclass
class Association:
    dia_object_id: np.ndarray  # per source
    is_new: np.ndarray  # per source: created a diaObject
    distance_arcsec: np.ndarray  # per source: to its object (0 for new, NaN for kept)
    n_kept: int  # sources already associated (replay)
    n_clashes: int  # sources that lost their nearest object to a nearer source


def associate(
    source_id: np.ndarray,
    source_ra: np.ndarray,
    source_dec: np.ndarray,
    object_id: np.ndarray,
    object_ra: np.ndarray,
    object_dec: np.ndarray,
    *,
    radius_arcsec: float,
    known: dict[int, int] | None = None,
) -> Association:
    """Assign every source a diaObjectId (module docstring: the rules).

    ``known`` maps diaSourceIds already stored to their diaObjectId (kept as they are)."""
    if not radius_arcsec > 0:
        raise ValueError(f"radius_arcsec must be > 0, got {radius_arcsec!r}")
    sid = np.asarray(source_id, dtype=np.int64)
    oid = np.asarray(object_id, dtype=np.int64)
    n = sid.size
    if np.unique(sid).size != n:
        raise ValueError("source ids must be unique")
    known = known or {}
    out = np.full(n, -1, dtype=np.int64)
    dist = np.full(n, np.nan)
    kept = np.array([int(s) in known for s in sid], dtype=bool)
    out[kept] = [known[int(s)] for s in sid[kept]]
    taken = {int(o) for o in out[kept]}
    todo = np.flatnonzero(~kept)
    clashes: int = 0
    if todo.size and oid.size:
        from scipy.spatial import cKDTree

        tree = cKDTree(unit_vectors(object_ra, object_dec))
        # Chord length of the radius; candidates are then ranked by exact separation.
        chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
        k = min(_MAX_CANDIDATES, oid.size)
        _, idx = tree.query(
            unit_vectors(source_ra[todo], source_dec[todo]), k=k, distance_upper_bound=chord
        )
        idx = np.asarray(idx).reshape(todo.size, k)
        # Every (source, candidate) pair at once: a scalar separation per pair in a Python
        # loop cost ~1 s per 10^4 sources (benchmarks/bench_apdb.py, 100k diaSources).
        row, col = np.nonzero(idx < oid.size)
        src_at, obj_at = todo[row], idx[row, col]
        sep_all = separation_arcsec(
            source_ra[src_at], source_dec[src_at], object_ra[obj_at], object_dec[obj_at]
        )
        ok = sep_all <= radius_arcsec
        pairs = list(
            zip(
                sep_all[ok].tolist(), sid[src_at[ok]].tolist(), oid[obj_at[ok]].tolist(),
                src_at[ok].tolist(), strict=True,
            )
        )  # fmt: skip
        pairs.sort()
        first_choice: dict[int, int] = {}
        for _sep, s, o, _src in sorted(pairs, key=lambda p: (p[1], p[0], p[2])):
            first_choice.setdefault(s, o)
        for sep, s, o, at in pairs:
            if out[at] >= 0 or o in taken:
                continue
            out[at] = o
            dist[at] = sep
            taken.add(o)
            clashes += int(first_choice[s] != o)
        # Sources whose candidates all went to nearer sources start objects of their own.
        row_of = {int(s): i for i, s in enumerate(sid)}
        clashes += sum(1 for s in first_choice if out[row_of[s]] < 0)
    new = out < 0
    out[new] = sid[new]
    dist[new] = 0.0
    return Association(
        dia_object_id=out, is_new=new, distance_arcsec=dist, n_kept=int(kept.sum()),
        n_clashes=int(clashes),
    )  # fmt: skip
