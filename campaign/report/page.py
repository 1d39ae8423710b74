"""The report's HTML page: static, self-contained (inline CSS, no script, no network), images as relative PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Any

from campaign.report.data import ReportData

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.meta { color: #555; font-size: 0.9rem; }
nav a { margin-right: 0.8rem; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4rem 0; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.nodata { color: #777; font-style: italic; background: #fafafa; border: 1px dashed #ccc; padding: 0.6rem; }
.note { color: #555; font-size: 0.85rem; }
"""


@dataclass
class Section:
    """One section: a title, an explanation, figures (relative PNG paths with captions) and HTML tables."""

    anchor: str
    title: str
    intro: str
    figures: list[tuple[str, str]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    empty: str | None = None  # the "no data yet" note when there is nothing to show
    notes: list[str] = field(default_factory=list)


def _cell(v: Any) -> str:
    if v is None:
        return '<td class="num">–</td>'
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    return f"<td>{escape(str(v))}</td>"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table (cells escaped; floats to 4 significant digits)."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def fmt_config(cfg: dict[str, Any]) -> str:
    """``{"hidden": 32, "lr": 0.00123}`` -> ``hidden=32 lr=0.00123``."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))


def _ts(ts: datetime | None) -> str:
    return "–" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%S UTC")


def render(data: ReportData, sections: Sequence[Section]) -> str:
    """The whole page."""
    h = data.header
    nav = " ".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>campaign {escape(h.name)}: report</title><style>{CSS}</style></head><body>",
        f"<h1>campaign {escape(h.name)}</h1>",
        f'<p class="meta">status <b>{escape(h.status)}</b> · site {escape(h.site)} · started {_ts(h.started_at)}'
        f" · ended {_ts(h.ended_at)} · recipe {escape(h.recipe_hash[:12])} · campaign {escape(h.code_version)}"
        f"{' · git ' + escape(h.git_sha[:10]) if h.git_sha else ''} · report generated {_ts(data.as_of)}</p>",
        f"<nav>{nav}</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{escape(s.title)}</h2>')
        parts.append(f'<p class="note">{escape(s.intro)}</p>')
        if s.empty is not None:
            parts.append(f'<p class="nodata">No data yet: {escape(s.empty)}</p>')
        for src, caption in s.figures:
            parts.append(f'<figure><img src="{escape(src)}" alt="{escape(caption)}">'
                         f"<figcaption class=\"note\">{escape(caption)}</figcaption></figure>")
        parts.extend(s.tables)
        parts.extend(f'<p class="note">{escape(n)}</p>' for n in s.notes)
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
