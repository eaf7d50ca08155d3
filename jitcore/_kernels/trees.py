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
               leaves, out):  # fmt: skip
    """out[i] <- the sum over trees of the node row i reaches in at most ``depth`` steps (a
    leaf, in a well-formed model), summed as NumPy sums a contiguous row of them (pairwise:
    8 accumulators; ``leaves`` is scratch of one per tree), so that it equals the NumPy
    formulation bit for bit."""
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
            leaves[t] = value[node]
        out[i] = _pairwise(leaves, 0, n_trees)


@njit
def _pairwise(a, start, n):
    """NumPy's pairwise sum of a[start:start + n] (numpy/_core/src/umath/loops_utils.h),
    here without recursion (Numba's cache cannot hold a recursive function): blocks of at
    most 128 summed with 8 accumulators, combined as NumPy's halving would, for n <= 2^16."""
    if n <= 128:
        return _block(a, start, n)
    half = n // 2
    half -= half % 8
    return _halves(a, start, half) + _halves(a, start + half, n - half)


@njit
def _halves(a, start, n):
    if n <= 128:
        return _block(a, start, n)
    half = n // 2
    half -= half % 8
    return _quarters(a, start, half) + _quarters(a, start + half, n - half)


@njit
def _quarters(a, start, n):
    if n <= 128:
        return _block(a, start, n)
    half = n // 2
    half -= half % 8
    return _block_or_more(a, start, half) + _block_or_more(a, start + half, n - half)


@njit
def _block_or_more(a, start, n):
    if n <= 128:
        return _block(a, start, n)
    # Deeper than 2^16 leaves: not NumPy's order any more, still a sum.
    res = 0.0
    for k in range(n):
        res += a[start + k]
    return res


@njit
def _block(a, start, n):
    if n < 8:
        res = -0.0
        for k in range(n):
            res += a[start + k]
        return res
    r0 = a[start]
    r1 = a[start + 1]
    r2 = a[start + 2]
    r3 = a[start + 3]
    r4 = a[start + 4]
    r5 = a[start + 5]
    r6 = a[start + 6]
    r7 = a[start + 7]
    k = 8
    while k < n - (n % 8):
        r0 += a[start + k]
        r1 += a[start + k + 1]
        r2 += a[start + k + 2]
        r3 += a[start + k + 3]
        r4 += a[start + k + 4]
        r5 += a[start + k + 5]
        r6 += a[start + k + 6]
        r7 += a[start + k + 7]
        k += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while k < n:
        res += a[start + k]
        k += 1
    return res


leaf_sums = njit(
    "void(float64[:, ::1], int64[::1], int64[::1], float64[::1], boolean[::1], int64[::1], "
    "int64[::1], boolean[::1], float64[::1], int64, float64[::1], float64[::1])"
)(_leaf_sums)
