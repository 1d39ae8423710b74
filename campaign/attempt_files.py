"""Where a worker records an attempt on the shared filesystem: the one definition of those file names.

Standard library only, so that ``campaign status`` can read an attempt's start record without importing the
worker (and through it pydantic's task messages).
"""

from __future__ import annotations

from pathlib import Path

#: Apps of this package may run inside the worker's own process (light, single-rank): such an attempt writes no
#: files at all, so the absence of its start record says nothing.
IN_PROCESS_PACKAGE = "campaign.apps."


def process_file(workdir: Path, attempt: int) -> Path:
    """``attempt<N>.proc.json``: host and process group of a running attempt; its mtime is the heartbeat.

    The worker writes it when the attempt starts (before launching the app), so it is also the attempt's start
    record: an attempt in flight without one is still queued.
    """
    return workdir / f"attempt{attempt}.proc.json"


def attempt_result_file(workdir: Path, attempt: int) -> Path:
    """``attempt<N>.result.json``: the attempt's :class:`TaskResult`, written before the worker returns it."""
    return workdir / f"attempt{attempt}.result.json"
