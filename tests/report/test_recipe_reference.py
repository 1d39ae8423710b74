"""docs/recipe-reference.md is generated from the recipe schema and must be up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from campaign.cli.app import app
from campaign.cli.recipe_reference import render_reference
from campaign.recipe import recipe_schema

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "recipe-reference.md"


def test_committed_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        "docs/recipe-reference.md is stale: run `campaign recipe reference --out docs/recipe-reference.md`")


def test_reference_covers_every_key_of_every_section() -> None:
    schema = recipe_schema()
    text = render_reference(schema)
    for name, sub in [("Recipe (top level)", schema), *schema["$defs"].items()]:
        assert f"## {name}\n" in text
        for key in sub.get("properties", {}):
            assert f"| `{key}` |" in text, (name, key)
    assert "| `campaign` | str | **required** |" in text
    assert "| `walltime` | str | `\"01:00:00\"` | matches `^\\d{1,3}:\\d{2}:\\d{2}$` |" in text


def test_cli_writes_the_reference_atomically_without_heavy_imports(tmp_path: Path) -> None:
    out = tmp_path / "ref.md"
    res = CliRunner().invoke(app, ["recipe", "reference", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == render_reference() and list(tmp_path.iterdir()) == [out]
    res = CliRunner().invoke(app, ["recipe", "reference", "--out", str(tmp_path / "no" / "ref.md")])
    assert res.exit_code == 2 and "does not exist" in res.output
    code = ("import sys\nfrom campaign.cli.app import app\ntry:\n    app(['recipe', 'reference'])\n"
            "except SystemExit:\n    pass\nprint('HEAVY=' + ','.join(m for m in ('torch', 'parsl') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert "HEAVY=\n" in proc.stdout
