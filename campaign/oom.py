"""Out-of-memory evidence for an attempt: the kernel's OOM-kill counter of this process's memory cgroup, and the
app's own out-of-memory failures.

A kernel OOM kill shows only as SIGKILL to the parent; the cgroup that enforced the limit counts it:
``memory.events`` (cgroup v2, line ``oom_kill N``) or ``memory.oom_control`` (cgroup v1, line ``oom_kill N``).
The worker reads the counter of its own memory cgroup before and after an attempt: an attempt that died by
SIGKILL while the counter rose is recorded as ``oom`` (on a batch node the cgroup is the job's or the step's,
set up by Slurm, and holds the worker and its apps). An app that catches its own failure to allocate
(``MemoryError``, a device's ``OutOfMemoryError``) reports the reason ``oom``
(:data:`models.appio.OOM_REASON`, written by :func:`models.appio.main_for`).
"""

from __future__ import annotations

import re
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_COUNTER = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)


def memory_cgroup_dir(pid: int | str = "self", root: Path = _CGROUP_ROOT) -> Path | None:
    """The directory of ``pid``'s memory cgroup (v1 ``memory`` controller, else the v2 unified hierarchy), or
    None when neither can be found."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            v1 = path
        elif controllers == "":
            v2 = path
    candidates = []
    if v1 is not None:
        candidates.append((root / "memory" / v1.lstrip("/"), "memory.oom_control"))
    if v2 is not None:
        candidates += [(root / v2.lstrip("/"), "memory.events"), (root / "unified" / v2.lstrip("/"), "memory.events")]
    for directory, name in candidates:
        if (directory / name).is_file():
            return directory
    return None


def oom_kills(directory: Path | None) -> int | None:
    """The OOM-kill count of the memory cgroup ``directory`` (None when it cannot be read)."""
    if directory is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        try:
            match = _COUNTER.search((directory / name).read_text())
        except OSError:
            continue
        if match:
            return int(match.group(1))
    return None
