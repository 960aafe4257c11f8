"""Thread budgets follow the cores a process may use, not the host's core count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.cpus import available_cpus, threads_per_worker


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == _affinity()


@pytest.mark.parametrize(
    ("cpu_max", "expected_cap"),
    [("max 100000", None), ("100000 100000", 1), ("150000 100000", 2), ("50000 100000", 1)],
)
def test_cgroup_v2_quota_caps_the_count(tmp_path: Path, cpu_max: str, expected_cap: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    expected = _affinity() if expected_cap is None else min(_affinity(), expected_cap)
    assert available_cpus(tmp_path) == expected


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert available_cpus(tmp_path) == _affinity()


def test_threads_split_between_workers() -> None:
    assert threads_per_worker(8, 2) == 4
    assert threads_per_worker(3, 2) == 1
    assert threads_per_worker(1, 4) == 1  # never zero
    assert threads_per_worker(0, 1) == available_cpus()
