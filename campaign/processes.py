"""Whether a process is alive, told apart from a later process that reused its pid (standard library only:
the workers import it)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_exists(pid: int | None) -> bool:
    """Whether some process has id ``pid`` on this host (``kill(pid, 0)``: no ``/proc`` read)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, to tell a reused pid apart."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def process_alive(pid: int | None, start_ticks: int | None = None) -> bool:
    """Whether process ``pid`` runs on this host and, when ``start_ticks`` is given, is the one that started
    then (a zombie counts as dead)."""
    if not pid_exists(pid):
        return False
    assert pid is not None
    fields = _stat_fields(pid)
    if fields is None:
        return start_ticks is None
    return fields[0] != "Z" and (start_ticks is None or int(fields[19]) == start_ticks)
