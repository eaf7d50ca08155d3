"""stream.ops.cpus: "all cores" is the CPUs this process may use (affinity, cgroup quota)."""

from __future__ import annotations

import os

import pytest

import diffstream.stream.ops.cpus as cpus
from diffstream.stream.ops.cpus import available_cpus, cgroup_cpu_limit, resolve_workers
from diffstream.stream.ops.errors import ConfigError
from diffstream.stream.ops.settings import Settings, load_settings

pytestmark = pytest.mark.unit


def _tree(tmp_path, membership: str, files: dict[str, str]):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership + "\n")
    return {"root": root, "proc_cgroup": proc}


def test_v2_quota_of_the_group_and_its_ancestors_the_smallest_wins(tmp_path):
    where = _tree(tmp_path, "0::/kubepods/pod1/ctr", {
        "kubepods/pod1/ctr/cpu.max": "max 100000",
        "kubepods/pod1/cpu.max": "150000 100000",
        "kubepods/cpu.max": "400000 100000",
    })  # fmt: skip
    assert cgroup_cpu_limit(**where) == 1.5


def test_v2_namespaced_container_reads_the_mount_root(tmp_path):
    # With a cgroup namespace the process sees "/" and its own group mounted at the root.
    where = _tree(tmp_path, "0::/", {"cpu.max": "200000 100000"})
    assert cgroup_cpu_limit(**where) == 2.0


@pytest.mark.parametrize("text", ["max 100000", "", "garbage", "0 100000", "100 0", "a b"])
def test_v2_no_limit_or_unreadable(tmp_path, text):
    where = _tree(tmp_path, "0::/x", {"x/cpu.max": text, "cpu.max": "max 100000"})
    assert cgroup_cpu_limit(**where) is None


@pytest.mark.parametrize("controllers", ["cpu,cpuacct", "cpu"])
def test_v1_cfs_quota(tmp_path, controllers):
    where = _tree(tmp_path, f"4:{controllers}:/docker/abc\n0::/", {
        f"{controllers}/docker/abc/cpu.cfs_quota_us": "250000",
        f"{controllers}/docker/abc/cpu.cfs_period_us": "100000",
    })  # fmt: skip
    assert cgroup_cpu_limit(**where) == 2.5


def test_v1_group_mounted_as_the_root_and_unlimited_quota(tmp_path):
    where = _tree(tmp_path, "3:cpu,cpuacct:/docker/abc", {
        "cpu,cpuacct/cpu.cfs_quota_us": "50000",
        "cpu,cpuacct/cpu.cfs_period_us": "100000",
    })  # fmt: skip
    assert cgroup_cpu_limit(**where) == 0.5
    where = _tree(tmp_path / "b", "3:cpu:/", {
        "cpu/cpu.cfs_quota_us": "-1",
        "cpu/cpu.cfs_period_us": "100000",
    })  # fmt: skip
    assert cgroup_cpu_limit(**where) is None


def test_no_cgroup_files_at_all(tmp_path):
    assert cgroup_cpu_limit(root=tmp_path / "none", proc_cgroup=tmp_path / "none") is None


def test_available_cpus_is_the_affinity_capped_by_the_quota_rounded_up(monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for limit, want in [(1.5, 2), (0.2, 1), (None, 8), (16.0, 8)]:
        monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda limit=limit: limit)
        available_cpus.cache_clear()
        assert available_cpus() == want
    available_cpus.cache_clear()


def test_available_cpus_here_is_within_the_machine():
    available_cpus.cache_clear()
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("workers", "n_cpu", "want"), [(3, 2, 3), (1, 64, 1), (-1, 2, 2), (-2, 8, 7), (-9, 2, 1)]
)
def test_resolve_workers_follows_scipys_convention(workers, n_cpu, want):
    assert resolve_workers(workers, cpus=n_cpu) == want


def test_resolve_workers_refuses_zero():
    with pytest.raises(ConfigError, match="fft_workers must be >= 1 or negative"):
        resolve_workers(0, cpus=4)


def test_settings_threads_uses_cpus_and_refuses_zero_workers(monkeypatch):
    assert Settings(cpus=6).threads() == 6
    assert Settings(cpus=6, fft_workers=-3).threads() == 4
    assert Settings(cpus=6, fft_workers=2).threads() == 2
    monkeypatch.setenv("DIFFSTREAM_CPUS", "3")
    assert load_settings().threads() == 3
    with pytest.raises(ValueError, match="fft_workers must be >= 1, or negative"):
        Settings(fft_workers=0)
    with pytest.raises(ValueError, match="cpus"):
        Settings(cpus=0)


def test_the_run_uses_and_records_the_resolved_thread_count(tmp_path):
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    sci, tmpl = write_pair(simulate_pair(seed=4, shape=(256, 256), n_stars=60), tmp_path)
    result = subtract_files(str(sci), str(tmpl), settings=Settings(cpus=1))
    assert result.metadata.get("threads") == 1
    result = subtract_files(str(sci), str(tmpl), settings=Settings(cpus=3, fft_workers=-2))
    assert result.metadata.get("threads") == 2
