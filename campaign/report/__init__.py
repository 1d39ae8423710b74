"""Campaign reports: a static HTML page with matplotlib figures, readable offline.

``build_report(campaign, out, db=...)`` (``campaign report CAMPAIGN --out DIR``) reads the campaign database
read-only (:mod:`campaign.report.data`), draws the figures (:mod:`campaign.report.figures`) and writes
``DIR/index.html`` with its PNGs next to it (:mod:`campaign.report.build`, :mod:`campaign.report.page`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReportOutcome", "build_report"]


def __getattr__(name: str) -> Any:
    """``build_report`` and ``ReportOutcome`` on first use: the package's other modules (the read-only engine
    that ``campaign status`` uses) load without matplotlib."""
    if name in __all__:
        from campaign.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'campaign.report' has no attribute {name!r}")
