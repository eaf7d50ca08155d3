"""The science tests' truth matcher: injected difference sources against diaSources.

Lives with the tests (issue 13): the product only prints its own summary (stream/cli/demo.py
has a few lines for that) and never decides what counts as found.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

MATCH_RADIUS_PX = 2.0


def match_truth(result, truth, *, radius: float = MATCH_RADIUS_PX) -> np.ndarray:
    """For each truth row, the index of the nearest diaSource within ``radius`` px, or -1."""
    if len(result.dia_sources) == 0 or len(truth["x"]) == 0:
        return np.full(len(truth["x"]), -1)
    xy = np.array([[s["x"], s["y"]] for s in result.dia_sources])
    dist, idx = cKDTree(xy).query(np.column_stack([truth["x"], truth["y"]]))
    return np.where(dist <= radius, idx, -1)
