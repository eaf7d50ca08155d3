"""How many CPUs this process may really use: affinity and the container's CPU quota.

Why: ``fft_workers = -1`` means "all cores", and ``os.cpu_count()`` (what scipy.fft and a bare
thread pool use for it) counts the host's.  A worker in a container limited to 2 CPUs on a
64-core node would then run 64 FFT and tile threads, and the kernel's CFS quota would throttle
them in bursts: slower than 2 threads, and with erratic latency.  So "all cores" is resolved
here, once, as mature runtimes do (the JVM's container support, Go's automaxprocs, loky):

* the CPU affinity mask (``taskset``, cpusets, Kubernetes' static CPU manager);
* the cgroup CPU bandwidth quota, rounded up: cgroup v2 ``cpu.max`` of the process's cgroup
  and every ancestor below the mount point, or cgroup v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us``.

The ``cpus`` setting (``DIFFSTREAM_CPUS``) overrides both, for hosts where neither tells the
truth (e.g. several workers sharing one VM: give each its share).  jitcore never looks: it
receives explicit thread counts (it does no I/O).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from diffstream.stream.ops.errors import ConfigError

__all__ = ["available_cpus", "cgroup_cpu_limit", "resolve_workers"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(text: str | None) -> float | None:
    """``cpu.max``: "<quota> <period>" or "max <period>"."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int(_read(directory / "cpu.cfs_quota_us") or "")
        period = int(_read(directory / "cpu.cfs_period_us") or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # quota -1: unlimited


def cgroup_cpu_limit(
    *, root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
) -> float | None:
    """The CPU bandwidth limit of this process's cgroup in CPUs (e.g. 1.5), or None."""
    root = Path(root)
    limits: list[float] = []
    membership = _read(Path(proc_cgroup)) or ""
    for line in membership.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        rel_parts = [p for p in rel.split("/") if p and p != ".."]
        if controllers == "":  # cgroup v2: walk from the process's group up to the mount
            for depth in range(len(rel_parts), -1, -1):
                limit = _v2_limit(_read(root.joinpath(*rel_parts[:depth], "cpu.max")))
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):  # cgroup v1
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                base = root / name
                # Inside a container the group is usually mounted as the root itself.
                for directory in (base.joinpath(*rel_parts), base):
                    limit = _v1_limit(directory)
                    if limit is not None:
                        limits.append(limit)
    return min(limits) if limits else None


@functools.cache
def available_cpus() -> int:
    """CPUs this process may use: the affinity mask capped by the cgroup quota (rounded up),
    at least 1.  Computed once per process."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def resolve_workers(workers: int, *, cpus: int | None = None) -> int:
    """scipy.fft's ``workers`` convention (-1: every available CPU, -2: all but one, ...)
    resolved against ``cpus`` (None: :func:`available_cpus`) to a thread count >= 1."""
    n_cpu = available_cpus() if cpus is None else cpus
    if workers > 0:
        return int(workers)
    if workers == 0:
        raise ConfigError("fft_workers must be >= 1 or negative (-1: all available CPUs), got 0")
    return max(1, n_cpu + 1 + int(workers))
