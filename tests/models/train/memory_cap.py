"""A hard memory cap on a process: its own Linux memory cgroup (v1 ``memory.limit_in_bytes``, or v2 ``memory.max``).

The kernel charges the process's anonymous memory and the file pages it reads to the group; past the limit it
reclaims file pages and, when only the process's own memory is left, kills it (the OOM killer, SIGKILL). Swap is
capped as well where the kernel accounts it, so the cap cannot be dodged by swapping.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def why_no_cap() -> str | None:
    """Why no memory cgroup can be made here (None when one can)."""
    if (V1 / "memory.limit_in_bytes").is_file():
        root = V1
    elif (V2 / "cgroup.controllers").is_file() and "memory" in (V2 / "cgroup.subtree_control").read_text().split():
        root = V2
    else:
        return "no memory cgroup controller here (neither v1 nor a v2 tree with memory enabled)"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (memory cgroups need root)"
    return None


class MemoryCap:
    """A new memory cgroup limited to ``limit_bytes``; :meth:`join` (a ``preexec_fn``) moves a child into it."""

    def __init__(self, limit_bytes: int) -> None:
        self.v1 = (V1 / "memory.limit_in_bytes").is_file()
        self.path = (V1 if self.v1 else V2) / f"campaign-test-{uuid.uuid4().hex[:12]}"
        self.path.mkdir()
        self.limit_bytes = limit_bytes
        if self.v1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            if (self.path / "memory.memsw.limit_in_bytes").is_file():
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        else:
            (self.path / "memory.max").write_text(str(limit_bytes))
            if (self.path / "memory.swap.max").is_file():
                (self.path / "memory.swap.max").write_text("0")

    def join(self) -> None:
        """Move the calling process into the group (use as ``subprocess.Popen(preexec_fn=cap.join)``)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    @property
    def peak_bytes(self) -> int:
        """The most memory the group was charged (its processes' memory and the file pages they read)."""
        return int((self.path / ("memory.max_usage_in_bytes" if self.v1 else "memory.peak")).read_text())

    @property
    def oom_kills(self) -> int:
        """Processes of the group the kernel killed for memory."""
        text = (self.path / ("memory.oom_control" if self.v1 else "memory.events")).read_text()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        """Remove the group (its processes must have exited)."""
        self.path.rmdir()
