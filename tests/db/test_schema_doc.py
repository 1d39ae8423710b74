"""docs/database.md describes every table and column of the campaign database and is up to date."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from campaign.cli.app import app
from db import models as m
from db.schema_doc import schema_markdown

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "database.md"


def test_database_doc_is_up_to_date() -> None:
    assert DOC.read_text() == schema_markdown(), (
        "docs/database.md is stale: run `campaign sql --schema --out docs/database.md`")


def test_every_table_and_column_is_described() -> None:
    text = schema_markdown()
    for name, table in m.Base.metadata.tables.items():
        assert f"## `{name}`" in text
        for col in table.columns:
            assert f"| `{col.name}` |" in text, f"{name}.{col.name}"


def test_sql_schema_prints_it_without_a_database(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["sql", "--schema"])
    assert res.exit_code == 0 and res.stdout == schema_markdown()
    res = CliRunner().invoke(app, ["sql", "--schema", "--out", str(tmp_path / "no" / "d.md")])
    assert res.exit_code == 2 and "does not exist" in res.output
