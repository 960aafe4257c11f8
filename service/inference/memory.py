"""How much memory this process may still use: the tighter of the host's free memory and any
cgroup limit above it (a container's `--memory`), since the OOM killer acts on whichever is hit
first. Blocking file reads: call off the event loop, or from the inference process."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")


@dataclass(frozen=True)
class MemoryReading:
    used: int
    limit: int
    source: str  # "cgroup v2", "cgroup v1" or "host"

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else 0.0


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat_value(path: Path, key: str) -> int:
    """A `key value` line of a cgroup memory.stat file, or 0."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroup(proc: Path, controller: str) -> str | None:
    """This process's cgroup path for a v1 controller ('memory'), or the v2 one ('')."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == controller if controller else parts[0] == "0" and not parts[1]):
            return parts[2]
    return None


def _up_to(root: Path, relative: str | None) -> list[Path]:
    """The cgroup directory and its ancestors up to `root` (a limit anywhere above binds too);
    just `root` inside a container, whose cgroup namespace makes its own group the root."""
    current = root / relative.strip("/") if relative else root
    dirs = [current]
    while current != root and root in current.parents:
        current = current.parent
        dirs.append(current)
    return dirs


def _cgroup_readings(root: Path, proc: Path) -> list[MemoryReading]:
    readings = []
    for folder in _up_to(root, _own_cgroup(proc, "")):  # v2: memory.max, memory.current
        raw = (folder / "memory.max").read_text().strip() if (folder / "memory.max").is_file() else "max"
        used = _read_int(folder / "memory.current")
        if raw.isdigit() and used is not None:
            # Page cache the kernel can drop under pressure is not what the OOM killer weighs.
            used -= _stat_value(folder / "memory.stat", "inactive_file")
            readings.append(MemoryReading(max(0, used), int(raw), "cgroup v2"))
    v1 = root / "memory"
    for folder in _up_to(v1, _own_cgroup(proc, "memory")):  # v1: limit_in_bytes, usage_in_bytes
        limit = _read_int(folder / "memory.limit_in_bytes")
        used = _read_int(folder / "memory.usage_in_bytes")
        if limit is not None and used is not None:
            used -= _stat_value(folder / "memory.stat", "total_inactive_file")
            readings.append(MemoryReading(max(0, used), limit, "cgroup v1"))
    return readings


def memory_readings(cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC) -> list[MemoryReading]:
    """The host's memory and every cgroup limit that binds this process. Blocking (file reads)."""
    info: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (proc / "meminfo").read_text().splitlines():
            match = re.match(r"(\w+):\s+(\d+)", line)
            if match:
                info[match[1]] = int(match[2]) * 1024
    total = info.get("MemTotal", 0)
    # An unlimited cgroup reports a huge number (v1) or none (v2): only limits below the host count.
    readings = [
        r for r in _cgroup_readings(cgroup_root, proc) if r.limit > 0 and (not total or r.limit < total)
    ]
    if total:
        readings.append(MemoryReading(total - info.get("MemAvailable", total), total, "host"))
    return readings


def read_memory(cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC) -> MemoryReading:
    """Memory in use against the limit closest to being hit. Blocking (file reads)."""
    return max(memory_readings(cgroup_root, proc), key=lambda r: r.fraction)  # none: ValueError


def available_bytes(cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC) -> int | None:
    """Bytes that can still be allocated before some limit is reached (None: nothing readable).

    The host's available memory, or less under a cgroup limit: loading a model against the
    host's figure alone would let a container's OOM killer end the process instead of a clear
    refusal."""
    readings = memory_readings(cgroup_root, proc)
    return max(0, min(r.limit - r.used for r in readings)) if readings else None
