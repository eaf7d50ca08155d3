"""Decision-tree ensembles evaluated in one Numba pass: the real/bogus model's trees
(stream/alerts/reliability.py holds the model and its file; this is its arithmetic).

Every row walks every tree in one kernel call (diffstream.jitcore._kernels.trees): the NumPy
formulation walked all trees a level at a time over (rows x trees) arrays, ~15 ms for a 4k
exposure's 1250 diaSources and 120 trees.  The leaves are summed by NumPy, so the sums equal
the NumPy formulation's bit for bit (tests/unit/test_trees.py keeps it as the reference).
"""

from __future__ import annotations

import numbers

import numpy as np

from diffstream.jitcore._kernels import trees as _k

__all__ = ["leaf_sums"]


def leaf_sums(
    x: np.ndarray,
    *,
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    missing_left: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    is_leaf: np.ndarray,
    value: np.ndarray,
    depth: int,
) -> np.ndarray:
    """For each row of ``x`` (n, n_features), the sum over trees of the value of the node it
    reaches from the tree's root in at most ``depth`` steps: at node k, a leaf stops the
    walk, else the row goes to ``left[k]`` when x[feature[k]] <= threshold[k] (when it is
    NaN: where missing_left[k]), to ``right[k]`` otherwise.  Node arrays are flat over all
    trees (global indices).  Raises ValueError for links out of range."""
    rows = np.ascontiguousarray(x, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {rows.shape}")
    n_nodes = np.asarray(is_leaf).shape[0]
    links = (("roots", roots), ("feature", feature), ("left", left), ("right", right))
    ints = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in links}
    bools = {k: np.ascontiguousarray(v, dtype=np.bool_)
             for k, v in (("missing_left", missing_left), ("is_leaf", is_leaf))}  # fmt: skip
    floats = {k: np.ascontiguousarray(v, dtype=np.float64)
              for k, v in (("threshold", threshold), ("value", value))}  # fmt: skip
    for name, arr in {**ints, **bools, **floats}.items():
        if arr.ndim != 1 or (name != "roots" and arr.shape[0] != n_nodes):
            raise ValueError(f"{name} must be 1-D with one entry per node ({n_nodes})")
    if not isinstance(depth, numbers.Integral) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"depth must be an int >= 0, got {depth!r}")
    inner = ~bools["is_leaf"]
    # The kernel does not check indices: every link it may follow must be a node.
    for name, limit in (("roots", n_nodes), ("left", n_nodes), ("right", n_nodes),
                        ("feature", rows.shape[1])):  # fmt: skip
        arr = ints[name] if name == "roots" else ints[name][inner]
        if arr.size and (arr.min() < 0 or arr.max() >= limit):
            raise ValueError(f"{name} holds indices outside [0, {limit})")
    leaves = np.empty((rows.shape[0], ints["roots"].shape[0]))
    _k.leaf_sums(rows, ints["roots"], ints["feature"], floats["threshold"], bools["missing_left"],
                 ints["left"], ints["right"], bools["is_leaf"], floats["value"], int(depth),
                 leaves)  # fmt: skip
    # NumPy's own (pairwise) row sums: the NumPy formulation's order, with no copy of it here.
    return leaves.sum(axis=1)
