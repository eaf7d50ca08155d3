"""diffstream.jitcore.trees against the NumPy formulation it replaced (all trees walked a level
at a time, leaves summed with ndarray.sum): equal bit for bit, on random ensembles of 1 to
300 trees (NumPy's pairwise sum splits past 128), NaN features, the shipped real/bogus
model; and its checks."""

from __future__ import annotations

import numpy as np
import pytest

from diffstream.jitcore.trees import leaf_sums
from diffstream.stream.alerts.reliability import FEATURE_NAMES, load_model


def ref_leaf_sums(x, roots, feature, threshold, missing_left, left, right, is_leaf, value, depth):
    n = x.shape[0]
    node = np.broadcast_to(roots, (n, roots.size)).copy()
    rows = np.arange(n)[:, None]
    for _ in range(depth):
        leaf = is_leaf[node]
        if leaf.all():
            break
        v = x[rows, feature[node]]
        with np.errstate(invalid="ignore"):
            go_left = np.where(np.isnan(v), missing_left[node], v <= threshold[node])
        node = np.where(leaf, node, np.where(go_left, left[node], right[node]))
    return value[node].sum(axis=1)


def _forest(rng, n_trees, n_features, max_depth):
    """Random complete-ish binary trees, flat, global indices."""
    arrays = {k: [] for k in ("feature", "threshold", "missing_left", "left", "right",
                              "is_leaf", "value")}  # fmt: skip
    roots = []

    def grow(d):
        k = len(arrays["is_leaf"])
        for name in arrays:
            arrays[name].append(0)
        if d >= max_depth or (d > 0 and rng.random() < 0.25):
            arrays["is_leaf"][k] = True
            arrays["value"][k] = rng.normal() * 10 ** rng.uniform(-3, 1)
            return k
        arrays["feature"][k] = rng.integers(n_features)
        arrays["threshold"][k] = rng.normal()
        arrays["missing_left"][k] = rng.random() < 0.5
        arrays["left"][k] = grow(d + 1)
        arrays["right"][k] = grow(d + 1)
        return k

    for _ in range(n_trees):
        roots.append(grow(0))
    model = {
        "roots": np.array(roots, np.int64),
        "feature": np.array(arrays["feature"], np.int64),
        "threshold": np.array(arrays["threshold"], float),
        "missing_left": np.array(arrays["missing_left"], bool),
        "left": np.array(arrays["left"], np.int64),
        "right": np.array(arrays["right"], np.int64),
        "is_leaf": np.array(arrays["is_leaf"], bool),
        "value": np.array(arrays["value"], float),
    }
    return model


@pytest.mark.parametrize(("n_trees", "seed"), [(1, 0), (7, 1), (120, 2), (129, 3), (300, 4)])
def test_matches_numpy_bit_for_bit(n_trees, seed):
    rng = np.random.default_rng(seed)
    model = _forest(rng, n_trees, 5, 6)
    x = rng.normal(size=(200, 5))
    x[rng.random(x.shape) < 0.1] = np.nan
    for depth in (6, 3, 0):  # a walk cut short stops where NumPy's does
        got = leaf_sums(x, **model, depth=depth)
        want = ref_leaf_sums(x, **model, depth=depth)
        np.testing.assert_array_equal(got, want)


def test_shipped_model_matches_numpy():
    m = load_model()
    rng = np.random.default_rng(9)
    x = rng.normal(size=(500, len(FEATURE_NAMES))) * 3
    x[rng.random(x.shape) < 0.05] = np.nan
    arrays = {k: getattr(m, k) for k in ("roots", "feature", "threshold", "missing_left", "left",
                                         "right", "is_leaf", "value")}  # fmt: skip
    got = leaf_sums(x, **arrays, depth=m.depth)
    np.testing.assert_array_equal(got, ref_leaf_sums(x, **arrays, depth=m.depth))


def test_checks():
    model = _forest(np.random.default_rng(1), 3, 4, 3)
    x = np.zeros((2, 4))
    with pytest.raises(ValueError, match="x must be 2-D"):
        leaf_sums(np.zeros(4), **model, depth=3)
    with pytest.raises(ValueError, match="feature holds indices outside"):
        leaf_sums(np.zeros((2, 1)), **model, depth=3)
    bad = {**model, "left": model["left"] + 10_000}
    with pytest.raises(ValueError, match="left holds indices outside"):
        leaf_sums(x, **bad, depth=3)
    with pytest.raises(ValueError, match="value must be 1-D with one entry per node"):
        leaf_sums(x, **{**model, "value": model["value"][:-1]}, depth=3)
    with pytest.raises(ValueError, match="depth must be an int >= 0"):
        leaf_sums(x, **model, depth=-1)
