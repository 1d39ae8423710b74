"""docs/python-api.md runs as written: every ``python`` block, in order, in one namespace, in the directory of a
campaign database holding HPO studies, promoted and trained models and screening hits."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.report.campaign_fixture import build_campaign

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_examples() -> None:
    assert len(blocks()) >= 5


def test_the_worked_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from db.engine import make_engine
    from db.migrate import ensure_schema

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    engine = make_engine(f"sqlite:///{tmp_path / 'campaign.db'}")
    ensure_schema(engine)
    facts = build_campaign(engine, tmp_path)
    engine.dispose()
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for k, code in enumerate(blocks()):
            exec(compile(code, f"{DOC.name} block {k + 1}", "exec"), namespace)
    text = out.getvalue()
    assert f"{facts['name']} done" in text and "best family:" in text and "eV/atom" in text
    promoted = namespace["promoted"]
    assert promoted and all(m.role == "promoted" for m in promoted)  # type: ignore[attr-defined]
    hits = namespace["hits"]
    assert [h.rank for h in hits] == [1, 2, 3]  # type: ignore[attr-defined]
    assert len(namespace["atoms"]) == hits[0].natoms  # type: ignore[arg-type, index]
