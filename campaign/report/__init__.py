"""Campaign reports: a static HTML page with matplotlib figures, readable offline.

``build_report(campaign, out, db=...)`` (``campaign report CAMPAIGN --out DIR``) reads the campaign database
read-only (:mod:`campaign.report.data`), draws the figures (:mod:`campaign.report.figures`) and writes
``DIR/index.html`` with its PNGs next to it (:mod:`campaign.report.build`, :mod:`campaign.report.page`).
"""

from __future__ import annotations

from campaign.report.build import ReportOutcome, build_report

__all__ = ["ReportOutcome", "build_report"]
