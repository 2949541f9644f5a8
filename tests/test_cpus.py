"""The CPUs a process may use: affinity, capped by a cgroup's CPU quota (v2 and v1), which
os.cpu_count() ignores."""

from __future__ import annotations

import os

from jpegweights.cpus import available, cgroup_quota


def cgroup(tmp_path, lines: str):
    (tmp_path / "self").write_text(lines)
    return tmp_path / "fs", tmp_path / "self"


def test_a_v2_quota_is_the_smallest_of_the_cgroup_and_its_ancestors(tmp_path):
    root, me = cgroup(tmp_path, "0::/pod/app\n")
    (root / "pod" / "app").mkdir(parents=True)
    (root / "pod" / "cpu.max").write_text("150000 100000\n")
    (root / "pod" / "app" / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(root, me) == 1.5
    assert available(root, me) == 1  # rounded down: a second thread would be throttled
    (root / "pod" / "app" / "cpu.max").write_text("50000 100000\n")
    assert cgroup_quota(root, me) == 0.5 and available(root, me) == 1  # never less than one


def test_a_v1_quota_and_no_quota(tmp_path):
    root, me = cgroup(tmp_path, "4:memory:/x\n2:cpu,cpuacct:/job\n")
    (root / "cpu,cpuacct" / "job").mkdir(parents=True)
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(root, me) == 3.0
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert cgroup_quota(root, me) is None
    assert available(root, me) == len(os.sched_getaffinity(0))


def test_without_cgroups_the_affinity_decides(tmp_path):
    assert cgroup_quota(tmp_path, tmp_path / "missing") is None
    assert available(tmp_path, tmp_path / "missing") == len(os.sched_getaffinity(0))
    pinned = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(pinned)})  # a process pinned to one CPU
        assert available(tmp_path, tmp_path / "missing") == 1
    finally:
        os.sched_setaffinity(0, pinned)


def test_torch_threads_holds_a_count_while_it_runs_and_restores_it(monkeypatch):
    import torch

    from jpegweights import cpus

    before = torch.get_num_threads()
    with cpus.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr(cpus, "available", lambda: 1)  # a pod limited to one CPU, say

    @cpus.torch_threads()
    def inside() -> int:
        return torch.get_num_threads()

    assert inside() == 1 and torch.get_num_threads() == before
