"""Live Rich displays: the progress of a running campaign (one row per stage with task counts) and
``campaign status --watch`` (a status snapshot re-read every few seconds).

On a terminal both redraw in place. Anywhere else (a pipe, a batch job's log file) a redrawn display would only
appear when the command ends, if at all: there the campaign's progress is written as plain lines (a stage's
line when its counts change, at most every :data:`PLAIN_EVERY_S` seconds, and always when it finishes) and each
``--watch`` snapshot is printed in full, one after the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

#: Seconds between two plain progress lines of the same stage (when not on a terminal).
PLAIN_EVERY_S = 10.0


class LiveDisplay:
    """Context manager showing stage progress; ``update`` is the steering loop's progress callback."""

    def __init__(self, console: Console, *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.plain = enabled and not console.is_terminal
        self.rows: dict[str, Any] = {}
        self._live: Live | None = None
        self._clock = clock
        self._printed: dict[str, tuple[float, tuple[int, ...]]] = {}  # stage -> (when, counts) of its last line

    def _table(self) -> Table:
        table = Table(title="campaign progress")
        for col in ("stage", "done", "in flight", "ready", "failed", "best"):  # in flight: submitted, queued or running
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
        elif self.plain:
            self._plain_line(progress)

    def _plain_line(self, p: Any) -> None:
        counts = (p.done, p.running, p.ready, p.failed)
        now = self._clock()
        last = self._printed.get(p.name)
        finished = p.running == 0 and p.ready == 0
        if last is not None and (last[1] == counts or (now - last[0] < PLAIN_EVERY_S and not finished)):
            return
        self._printed[p.name] = (now, counts)
        best = p.extra.get("best")
        self.console.print(
            f"{time.strftime('%H:%M:%S')} {p.name}: {p.done} done, {p.running} in flight, {p.ready} ready, "
            f"{p.failed} failed" + ("" if best is None else f", best {best:.4g}"), highlight=False, soft_wrap=True)

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
    if not console.is_terminal:  # print each snapshot in full: a pipe or a file cannot be redrawn
        try:
            while max_updates is None or shown < max_updates:
                if shown:
                    sleep(interval)
                    console.rule()
                console.print(render())
                console.file.flush()
                shown += 1
        except KeyboardInterrupt:
            pass
        return shown
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
