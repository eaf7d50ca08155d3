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


# -- HostShare: workers on the same CPUs divide them ---------------------------------------
_HOLDER = """
import sys
from diffstream.stream.ops.cpus import HostShare
share = HostShare(cpus=4, directory=sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
"""


def _holder(directory):
    """A separate process holding a slot in ``directory`` until its stdin closes or it dies."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_host_share_divides_the_cpus_among_live_workers_and_forgets_dead_ones(tmp_path):
    from diffstream.stream.ops.cpus import HostShare

    with HostShare(cpus=4, directory=tmp_path) as me:
        assert (me.peers(), me.cpus()) == (1, 4)
        a, b = _holder(tmp_path), _holder(tmp_path)
        try:
            assert (me.peers(), me.cpus()) == (3, 1)  # 4 // 3
            a.kill()  # kill -9: no clean-up code runs, the kernel drops the lock
            a.wait(30)
            assert len(list(tmp_path.glob("*.slot"))) == 3  # its file is still there ...
            assert (me.peers(), me.cpus()) == (2, 2)  # ... but not counted, and swept
            assert len(list(tmp_path.glob("*.slot"))) == 2
        finally:
            for p in (a, b):
                p.kill()
                p.wait(30)
        assert (me.peers(), me.cpus()) == (1, 4)
    assert list(tmp_path.glob("*.slot")) == []  # close removes its own slot


def test_host_share_counts_two_slots_of_one_process_and_never_goes_below_one_cpu(tmp_path):
    from diffstream.stream.ops.cpus import HostShare

    shares = [HostShare(cpus=2, directory=tmp_path) for _ in range(3)]
    try:
        assert [s.peers() for s in shares] == [3, 3, 3]
        assert [s.cpus() for s in shares] == [1, 1, 1]  # 2 // 3 = 0, but at least 1
    finally:
        for s in shares:
            s.close()
    shares[0].close()  # twice: a no-op


def test_host_share_stale_file_without_a_holder_is_not_a_worker(tmp_path):
    from diffstream.stream.ops.cpus import HostShare

    (tmp_path / "12345-0.slot").write_text("")  # left by a worker that is gone
    with HostShare(cpus=2, directory=tmp_path) as me:
        assert me.cpus() == 2
        assert not (tmp_path / "12345-0.slot").exists()


def test_host_share_refuses_a_directory_others_may_write(tmp_path):
    from diffstream.stream.ops.cpus import HostShare

    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="not ours alone"):
        HostShare(cpus=2, directory=shared)
    with pytest.raises(ConfigError, match="cpus must be >= 1"):
        HostShare(cpus=0, directory=tmp_path)


def test_host_share_default_directory_is_keyed_on_user_and_affinity(monkeypatch, tmp_path):
    from diffstream.stream.ops.cpus import HostShare

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with HostShare(cpus=2) as a:
        monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0}, raising=False)
        with HostShare(cpus=2) as b:  # pinned to other CPUs: another directory
            assert a.directory.parent == b.directory.parent == tmp_path
            assert a.directory != b.directory
            assert f"-{os.getuid()}-" in a.directory.name
            assert (a.peers(), b.peers()) == (1, 1)
