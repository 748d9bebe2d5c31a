"""available_cpus: the CPU affinity capped by a cgroup v1/v2 quota (a container's --cpus)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.core.config import Settings, available_cpus

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(root: Path, files: dict[str, str]) -> Path:
    """A stand-in for /sys/fs/cgroup holding `files` (relative path -> content)."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({}, AFFINITY),  # no cgroup files at all
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2 without a limit
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU still needs one thread
    ({"cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),  # 1.5 CPUs: rounded up
    ({"cpu.max": "6400000 100000\n"}, min(AFFINITY, 64)),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     1),
    ({"cpu.max": "garbage\n"}, AFFINITY),  # unreadable: no limit assumed
])
def test_available_cpus_takes_the_cgroup_quota_into_account(tmp_path, files, expected):
    assert available_cpus(cgroup(tmp_path, files)) == expected


def test_available_cpus_never_exceeds_the_affinity(tmp_path):
    root = cgroup(tmp_path, {"cpu.max": f"{(AFFINITY + 8) * 100000} 100000\n"})
    assert available_cpus(root) == AFFINITY


def test_onnxruntime_threads_default_to_the_available_cpus(monkeypatch):
    monkeypatch.delenv("STOCKCAST_ORT_INTRA_OP_THREADS", raising=False)
    assert Settings(_env_file=None).ort_intra_op_threads == available_cpus()
