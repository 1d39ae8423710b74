"""The live Rich display of a running campaign: one row per stage with task counts."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
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
