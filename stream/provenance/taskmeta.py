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

__all__ = ["TaskMetadata", "peak_rss_mb", "time_method"]

F = TypeVar("F", bound=Callable[..., Any])


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, B on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _check_name(kind: str, name: str, forbidden: str) -> None:
    # ":" separates task levels and "." the item in full_metadata() keys; a name holding
    # either would make a key ambiguous (the seed's TaskMetadata refuses them too).
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    bad = [c for c in forbidden if c in name]
    if bad:
        raise ValueError(
            f"{kind} name must not contain {' or '.join(map(repr, bad))}, got {name!r}"
        )


class TaskMetadata:
    """Metadata of one run of the top-level task and its steps."""

    def __init__(self, name: str = "imageDifference") -> None:
        _check_name("task", name, ".:")
        self.name = name
        self._stack: list[str] = [name]
        self._items: dict[str, dict[str, Any]] = {name: {}}
        self._order: list[str] = [name]

    # -- names ------------------------------------------------------------------------------
    @property
    def current(self) -> str:
        return self._stack[-1]

    def full_name(self, step: str | None = None) -> str:
        """Full name of ``step`` nested under the running step (``None``: the running step)."""
        return self.current if step is None else f"{self.current}.{step}"

    def get_full_name(self) -> str:
        """The seed's getFullName: the running step's name with its parents', e.g. ``top.sub``."""
        return self.current

    def get_name(self) -> str:
        """The seed's getName: the running step's own name, e.g. ``sub`` of ``top.sub``."""
        return self.current.rsplit(".", 1)[-1]

    # -- items ------------------------------------------------------------------------------
    def set(self, item: str, value: Any, *, step: str | None = None) -> None:
        """Record ``item`` for the current step (or for the named full step)."""
        _check_name("item", item, ".:")
        target = step or self.current
        if target not in self._items:
            self._order.append(target)
        self._items.setdefault(target, {})[item] = value

    def get(self, item: str, *, step: str | None = None) -> Any:
        return self._items[step or self.current][item]

    # -- timers -----------------------------------------------------------------------------
    @contextmanager
    def timer(self, step: str | None = None) -> Iterator[str]:
        """Time a step nested under the current one (``None``: the current step itself).

        ``step`` may itself be dotted (``"warp.grid"``) to name a grandchild directly.
        Entering the same step again adds to its wall and CPU time; the start/end items
        are those of the latest entry, and ``nCalls`` counts the entries.
        """
        if step is not None:
            _check_name("step", step, ":")
        full = self.full_name(step)
        self._stack.append(full)
        if full not in self._items:
            self._order.append(full)
        items = self._items.setdefault(full, {})
        items["nCalls"] = items.get("nCalls", 0) + 1
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
        """Every step's items, keyed by full step name, in the order the steps first ran."""
        return {n: dict(self._items[n]) for n in self._order}

    def step(self, full: str) -> dict[str, Any]:
        """A copy of one step's items (``full``: the full step name, e.g. ``top.warp``)."""
        try:
            return dict(self._items[full])
        except KeyError:
            raise KeyError(f"no step named {full!r}; steps are {self._order}") from None

    def step_summary(self) -> dict[str, dict[str, float | int]]:
        """Per timed step: wall and CPU seconds, peak RSS (MiB) at its end, and entry count.

        The compact per-step record for stream summaries and dashboards (the full start/end
        items stay in :meth:`full_metadata`).
        """
        out: dict[str, dict[str, float | int]] = {}
        for n in self._order:
            items = self._items[n]
            if "wallTime" not in items:
                continue
            out[n] = {
                "wallTime": round(float(items["wallTime"]), 6),
                "cpuTime": round(float(items["cpuTime"]), 6),
                "maxResidentSetSizeMb": round(float(items["endMaxResidentSetSize"]), 3),
                "nCalls": int(items.get("nCalls", 1)),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain form (task name + steps in order); :meth:`from_dict` rebuilds the object."""
        return {"name": self.name, "steps": self.steps()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskMetadata:
        """Rebuild from :meth:`to_dict` output (e.g. a record read back from the stream)."""
        try:
            name, steps = data["name"], data["steps"]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"task metadata dict needs 'name' and 'steps', got {data!r:.80}"
            ) from exc
        meta = cls(name)
        for full, items in steps.items():
            if full != name and not full.startswith(name + "."):
                raise ValueError(f"step {full!r} is not under task {name!r}")
            if full not in meta._items:
                meta._order.append(full)
            meta._items.setdefault(full, {}).update(items)
        return meta


def time_method(step: str | None = None) -> Callable[[F], F]:
    """Decorator timing a method under ``self.metadata`` (a :class:`TaskMetadata`).

    Like lsst.utils.timer.timeMethod: the step is named after the method unless ``step`` is
    given; an object whose ``metadata`` is None runs the method untimed.
    """

    def deco(fn: F) -> F:
        name = step or fn.__name__

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            meta = getattr(self, "metadata", None)
            if meta is None:
                return fn(self, *args, **kwargs)
            with meta.timer(name):
                return fn(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
