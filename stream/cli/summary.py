"""The summary ``diffstream subtract``, ``detect`` and ``demo`` print after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["print_summary"]


def print_summary(result: Any, paths: dict[str, Path]) -> None:
    import numpy as np

    src = result.dia_sources
    snr = np.array([abs(s["snr"] or 0.0) for s in src]) if src else np.zeros(0)
    neg = np.array([bool(s["isNegative"]) for s in src]) if src else np.zeros(0, bool)
    print(f"diaSources: {len(src)} ({int((~neg).sum())} positive, {int(neg.sum())} negative)")
    edges = [0, 7, 10, 20, 50, np.inf]
    print("  |S/N|    positive  negative")
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (snr >= lo) & (snr < hi)
        label = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}"
        print(f"  {label:<8} {int((sel & ~neg).sum()):>8}  {int((sel & neg).sum()):>8}")
    print("timings (s):")
    for name, secs in result.metadata.timings().items():
        depth = name.count(".")
        print(f"  {'  ' * depth}{name.split('.')[-1]:<{28 - 2 * depth}} {secs:8.3f}")
    print("outputs:")
    for key, path in paths.items():
        print(f"  {key:<11} {path}")
