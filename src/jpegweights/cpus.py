"""How many CPUs this process may use: the CPUs it may run on (its affinity), capped by its
cgroup's CPU quota (a container's or a pod's CPU limit), which ``os.cpu_count()`` ignores.

>>> available()            # 2 on a 2-core machine; 1 in a container limited to 1.5 CPUs
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def available(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """CPUs this process may keep busy: its affinity, capped by the quota rounded down (a
    thread more than the quota allows is throttled, and waits on the others), at least 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(root, self_cgroup)
    if quota is not None:
        n = min(n, math.floor(quota))
    return max(1, n)


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """torch's intra-op threads at ``n`` (None: ``available()``, so never more than the quota
    allows) while the block, or the decorated function, runs; then as they were.

    The calibrated search takes ``torch_threads(1)`` and runs a forward pass per CPU, each in a
    thread of its own, as the server does: the threads of one pass wait for each other at every
    layer, and on a CPU shared with other work they wait for the others' turns too. Training,
    one pass at a time, takes ``torch_threads()``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(available() if n is None else n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cgroup_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The smallest CPU quota, in CPUs, of this process's cgroup and its ancestors: cgroup v2's
    ``cpu.max``, or v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``. None without one,
    or where there are no cgroups to read."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:  # v2: one tree
            folders = [root]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's tree
            folders = [root / c for c in ("cpu,cpuacct", "cpuacct,cpu", "cpu")]
        else:
            continue
        for base in folders:
            folder = base / path.lstrip("/")
            while True:
                quotas.append(_quota(folder))
                if folder == base or base not in folder.parents:
                    break
                folder = folder.parent
    known = [q for q in quotas if q is not None]
    return min(known) if known else None


def _quota(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").is_file():
            limit, period = (folder / "cpu.max").read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        limit = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if limit <= 0 or period <= 0 else limit / period
