"""Task metadata: hierarchical step names, timers, and the seed task's full-metadata keys.

A step is named by its path from the top task, e.g. ``imageDifference.warp``; its items are
reported by :meth:`TaskMetadata.full_metadata` as ``imageDifference:warp.wallTime`` (the
seed's getFullMetadata convention: ``:`` separates task levels, ``.`` the item).  Each timer
records wall time, CPU time and peak RSS at the start and at the end of its step, like
lsst.utils.timer.timeMethod.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

__all__ = ["TaskMetadata", "peak_rss_mb"]

F = TypeVar("F", bound=Callable[..., Any])


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, B on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class TaskMetadata:
    """Metadata of one run of the top-level task and its steps."""

    def __init__(self, name: str = "imageDifference") -> None:
        self.name = name
        self._stack: list[str] = [name]
        self._items: dict[str, dict[str, Any]] = {name: {}}
        self._order: list[str] = [name]

    # -- names ------------------------------------------------------------------------------
    @property
    def current(self) -> str:
        return self._stack[-1]

    def full_name(self, step: str | None = None) -> str:
        return self.current if step is None else f"{self.current}.{step}"

    # -- items ------------------------------------------------------------------------------
    def set(self, item: str, value: Any, *, step: str | None = None) -> None:
        """Record ``item`` for the current step (or for the named full step)."""
        target = step or self.current
        self._items.setdefault(target, {})[item] = value

    def get(self, item: str, *, step: str | None = None) -> Any:
        return self._items[step or self.current][item]

    # -- timers -----------------------------------------------------------------------------
    @contextmanager
    def timer(self, step: str | None = None) -> Iterator[str]:
        """Time a step nested under the current one (``None``: the current step itself)."""
        full = self.full_name(step)
        self._stack.append(full)
        if full not in self._items:
            self._order.append(full)
        items = self._items.setdefault(full, {})
        items["startUtc"] = datetime.now(UTC).isoformat()
        items["startCpuTime"] = time.process_time()
        items["startMaxResidentSetSize"] = peak_rss_mb()
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            yield full
        finally:
            items["wallTime"] = items.get("wallTime", 0.0) + (time.perf_counter() - t0)
            items["cpuTime"] = items.get("cpuTime", 0.0) + (time.process_time() - c0)
            items["endUtc"] = datetime.now(UTC).isoformat()
            items["endCpuTime"] = time.process_time()
            items["endMaxResidentSetSize"] = peak_rss_mb()
            self._stack.pop()

    def timed(self, step: str) -> Callable[[F], F]:
        """Decorator form of :meth:`timer`."""

        def deco(fn: F) -> F:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.timer(step):
                    return fn(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return deco

    # -- views ------------------------------------------------------------------------------
    def timings(self) -> dict[str, float]:
        """Wall seconds per full step name, in the order the steps first ran."""
        return {
            n: round(float(self._items[n]["wallTime"]), 6)
            for n in self._order
            if "wallTime" in self._items.get(n, {})
        }

    def full_metadata(self) -> dict[str, Any]:
        """Flat ``top:sub.item`` keys, as the seed's getFullMetadata."""
        out: dict[str, Any] = {}
        for step in self._order:
            prefix = step.replace(".", ":")
            for item, value in self._items.get(step, {}).items():
                out[f"{prefix}.{item}"] = value
        return out

    def steps(self) -> dict[str, dict[str, Any]]:
        return {n: dict(self._items[n]) for n in self._order}
