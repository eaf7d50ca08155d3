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
truth.  Several ``diffstream run`` workers on the same CPUs need no setting: each holds a slot
in a per-user directory keyed on its affinity mask and cgroup (:class:`HostShare`), and takes
``cpus // live workers`` threads (at least 1), re-read before every event.  Why: two workers
with 2 threads each on 2 cores (each taking "all cores") spent the same core-seconds per 4k
CCD as two with 1 thread each, but delivered fewer CCDs per second with a higher latency on a
busy host (benchmarks/bench_scaling.py, three alternating rounds, 2026-12-06: 0.160-0.285
against 0.229-0.303 CCD/s, p50 7.1-12.4 s against 6.6-7.5 s): oversubscribed tile threads
preempt one another mid-tile.  A lone worker still gets every core for its latency.  jitcore
never looks: it receives explicit thread counts (it does no I/O).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import math
import os
import tempfile
from pathlib import Path

from diffstream.stream.ops.errors import ConfigError

__all__ = ["HostShare", "available_cpus", "cgroup_cpu_limit", "resolve_workers"]


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


def _share_key() -> str:
    """Workers share CPUs when they have the same affinity mask and cgroup (a container, a
    systemd slice): a hash of both names their directory.  Workers pinned to disjoint CPUs,
    or in other containers, never divide each other's share."""
    try:
        mask = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        mask = str(os.cpu_count())
    group = _read(Path("/proc/self/cgroup")) or ""
    return hashlib.sha256(f"{mask}|{group}".encode()).hexdigest()[:12]


class HostShare:
    """This process's slot among the workers sharing its CPUs; :meth:`cpus` is its share.

    A slot is a file ``<directory>/<pid>.slot`` held under an exclusive ``flock`` for the
    life of the process.  The kernel drops the lock when the process ends, however it ends
    (kill -9 included), so a slot whose lock can be taken belongs to no live worker: it is
    not counted, and is removed.  ``directory`` defaults to one per user and share key under
    ``$XDG_RUNTIME_DIR`` or the temporary directory; one that is not ours alone is refused
    (ConfigError).

    Not thread-safe; one per process (the ``run`` command makes it).  ``close`` releases it.
    """

    def __init__(self, *, cpus: int | None = None, directory: str | Path | None = None) -> None:
        self.total = available_cpus() if cpus is None else int(cpus)
        if self.total < 1:
            raise ConfigError(f"cpus must be >= 1, got {self.total}")
        if directory is None:
            base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
            directory = Path(base) / f"diffstream-cpus-{os.getuid()}-{_share_key()}"
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.directory.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            # A directory someone else made (or may write to) could fake or hide workers.
            msg = (
                f"CPU share directory {self.directory} is not ours alone (owner uid "
                f"{st.st_uid}, mode {st.st_mode & 0o777:o})"
            )
            raise ConfigError(msg)
        self.path = self.directory / f"{os.getpid()}-{id(self):x}.slot"
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def peers(self) -> int:
        """Live workers holding a slot here, this one included (>= 1)."""
        live = 0
        for slot in self.directory.glob("*.slot"):
            if slot == self.path:
                live += 1
                continue
            try:
                fd = os.open(slot, os.O_RDWR)
            except FileNotFoundError:
                continue  # removed meanwhile by another worker's sweep
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                live += 1  # its owner holds the lock: a live worker
            else:
                with contextlib.suppress(FileNotFoundError):
                    slot.unlink()  # a stale slot (its owner is gone)
            finally:
                os.close(fd)
        return max(1, live)

    def share(self) -> tuple[int, int]:
        """(live workers, this worker's share: ``total // peers``, at least 1)."""
        peers = self.peers()
        return peers, max(1, self.total // peers)

    def cpus(self) -> int:
        """This worker's share: ``total // peers``, at least 1."""
        return self.share()[1]

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # releases the lock
        self._fd = None

    def __enter__(self) -> HostShare:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
