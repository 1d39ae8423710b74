"""Live Rich displays: the progress of a running campaign (one row per stage with task counts) and
``campaign status --watch`` (a status snapshot re-read every few seconds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table


class LiveDisplay:
    """Context manager showing stage progress; ``update`` is the steering loop's progress callback."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.rows: dict[str, Any] = {}
        self._live: Live | None = None

    def _table(self) -> Table:
        table = Table(title="campaign progress")
        for col in ("stage", "done", "running", "ready", "failed", "best"):
            table.add_column(col)
        for p in self.rows.values():
            best = p.extra.get("best")
            table.add_row(p.name, str(p.done), str(p.running), str(p.ready), str(p.failed),
                          "" if best is None else f"{best:.4g}")
        return table

    def update(self, progress: Any) -> None:
        """Record a stage's progress and refresh the display."""
        self.rows[progress.name] = progress
        if self._live is not None:
            self._live.update(self._table())

    def __enter__(self) -> LiveDisplay:
        if self.enabled:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(et, ev, tb)
            self._live = None


def watch(console: Console, render: Callable[[], RenderableType], *, interval: float = 2.0,
          max_updates: int | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """Show ``render()`` and refresh it every ``interval`` seconds until Ctrl-C (or ``max_updates`` renders).

    Returns:
        How many times the display was rendered.
    """
    shown = 0
    with Live(render(), console=console, refresh_per_second=4, transient=False, auto_refresh=False) as live:
        shown = 1
        try:
            while max_updates is None or shown < max_updates:
                sleep(interval)
                live.update(render(), refresh=True)
                shown += 1
        except KeyboardInterrupt:
            pass
    return shown
