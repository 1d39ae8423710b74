"""How much more memory a training rank may fill: the lower of the machine's available memory and the room left in
its memory cgroup (Slurm's ``--mem``, containers and batch systems cap processes this way), shared by the ranks
of the node.

The cgroup's room is its limit less what it is charged for, plus the file pages it may reclaim (``inactive_file``):
page cache counts against a cgroup's limit but the kernel drops it before it kills anything.
"""

from __future__ import annotations

from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
#: A limit at or above this is "no limit" (cgroup v1 writes 2^63 rounded to a page).
_UNLIMITED = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text()[:64].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text()[:65536].splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_room_bytes(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int | None:
    """Bytes this process's memory cgroup may still be charged before the kernel reclaims its memory, or None
    when it has no limit (or none can be read)."""
    try:
        lines = proc_cgroup.read_text()[:65536].splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = [*line.split(":", 2), "", ""][:3]
        rel = rel.lstrip("/")
        if "memory" in controllers.split(","):  # cgroup v1
            d = root / "memory" / rel
            limit, used = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
            reclaimable = _stat(d / "memory.stat", "total_inactive_file")
        elif controllers == "" and (root / rel / "memory.max").is_file():  # cgroup v2
            d = root / rel
            limit, used = _read_int(d / "memory.max"), _read_int(d / "memory.current")  # "max": None
            reclaimable = _stat(d / "memory.stat", "inactive_file")
        else:
            continue
        if limit is None or used is None or limit >= _UNLIMITED:
            return None
        return max(0, limit - used + reclaimable)
    return None


def available_bytes(meminfo: Path = MEMINFO) -> int | None:
    """The machine's ``MemAvailable`` (memory that can be had without swapping), or None."""
    try:
        for line in meminfo.read_text()[:65536].splitlines():
            if line.startswith("MemAvailable:"):  # "MemAvailable:   22386268 kB"
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rank_room_bytes(local_ranks: int) -> int | None:
    """Bytes one of ``local_ranks`` ranks on this node may still fill (the lower of the machine's available memory
    and the cgroup's room, split evenly), or None when neither can be read."""
    rooms = [r for r in (available_bytes(), cgroup_room_bytes()) if r is not None]
    return min(rooms) // max(1, local_ranks) if rooms else None
