"""Sums of the leaves that rows reach in an ensemble of binary decision trees, allocation-free.

No checks here (diffstream.jitcore.trees checks and allocates).  The trees are flat arrays
(all trees' nodes concatenated, ``roots`` the first node of each): node k splits on feature
``feature[k]`` at ``threshold[k]`` (left when x <= threshold, and when x is NaN where
``missing_left[k]``), or is a leaf of value ``value[k]``.
"""

from __future__ import annotations

import math

from diffstream.jitcore._jit import njit

__all__ = ["leaf_sums"]


def _leaf_sums(x, roots, feature, threshold, missing_left, left, right, is_leaf, value, depth,
               leaves):  # fmt: skip
    """leaves[i, t] <- the value of the node row i reaches in tree t in at most ``depth``
    steps (a leaf, in a well-formed model).  The caller sums the rows with NumPy (pairwise),
    so that the sums equal the NumPy formulation bit for bit."""
    n_trees = roots.shape[0]
    for i in range(x.shape[0]):
        for t in range(n_trees):
            node = roots[t]
            for _ in range(depth):
                if is_leaf[node]:
                    break
                v = x[i, feature[node]]
                go_left = missing_left[node] if math.isnan(v) else v <= threshold[node]
                node = left[node] if go_left else right[node]
            leaves[i, t] = value[node]


leaf_sums = njit(
    "void(float64[:, ::1], int64[::1], int64[::1], float64[::1], boolean[::1], int64[::1], "
    "int64[::1], boolean[::1], float64[::1], int64, float64[:, ::1])"
)(_leaf_sums)
