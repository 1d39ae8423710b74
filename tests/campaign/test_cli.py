"""The CLI: exit codes, clear messages without tracebacks, light imports, read-only SQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from campaign.cli.app import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _light(args: list[str], cwd: Path) -> str:
    """Run the CLI in a fresh interpreter and report whether torch or parsl got imported."""
    code = (
        "import sys\nfrom campaign.cli.app import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'parsl', 'torch_geometric', 'deephyper') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=60)
    return out.stdout


@pytest.mark.parametrize("args", [["--help"], ["validate", str(REPO / "recipes" / "hpo.yaml")],
                                  ["sql", "SELECT 1"], ["sql", "--list"], ["sites", "list"]])
def test_light_commands_import_neither_torch_nor_parsl(args: list[str], tmp_path: Path) -> None:
    if args[0] == "sql" and args[1] == "SELECT 1":
        from db.engine import make_engine
        from db.migrate import ensure_schema

        ensure_schema(make_engine(f"sqlite:///{tmp_path / 'campaign.db'}"))
    assert "HEAVY=\n" in _light(args, tmp_path)


def test_validate_ok_and_bad(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate", str(REPO / "recipes" / "hpo.yaml")])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("campaign: x\nsite: {name: mars}\n")
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:2: site.name: unknown site 'mars'" in res.output.replace("\n", "")
    assert "Traceback" not in res.output


@pytest.mark.parametrize("content", [None, "campaign: [unclosed\n", "campaign: x\nunknown_key: 1\n"])
def test_run_refuses_bad_input_and_writes_nothing(tmp_path: Path, content: str | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    if content is not None:
        recipe.write_text(content)
    res = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["r.yaml"])


def test_unreachable_database_is_bad_input(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("campaign: x\n")
    res = runner.invoke(app, ["run", str(recipe), "--quiet", "--db",
                              "postgresql+psycopg://nobody@127.0.0.1:9/none"])
    assert res.exit_code == 2
    assert "cannot reach database" in res.output and "Traceback" not in res.output


def test_sql_formats_and_refusals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    res = runner.invoke(app, ["sql", "--db", url, "--format", "json", "SELECT 1 AS one, 'a' AS two"])
    assert res.exit_code == 0 and json.loads(res.stdout) == [{"one": 1, "two": "a"}]
    res = runner.invoke(app, ["sql", "--db", url, "--format", "csv", "SELECT 1 AS one"])
    assert res.stdout.splitlines() == ["one", "1"]
    res = runner.invoke(app, ["sql", "--db", url, "DROP TABLE campaigns"])
    assert res.exit_code == 2 and "read-only" in res.output
    res = runner.invoke(app, ["sql", "--db", url, "--query", "model_lineage"])
    assert res.exit_code == 2 and "needs --param model" in res.output
    res = runner.invoke(app, ["sql", "--db", url, "--query", "top_trials", "--param", "k=3"])
    assert res.exit_code == 0
    res = runner.invoke(app, ["sql", "--db", f"sqlite:///{tmp_path / 'missing.db'}", "SELECT 1"])
    assert res.exit_code == 2 and "no campaign database" in res.output
    assert not (tmp_path / "missing.db").exists()


def test_recipe_schema_prints_json() -> None:
    res = runner.invoke(app, ["recipe", "schema"])
    assert res.exit_code == 0 and json.loads(res.stdout)["title"] == "Recipe"


def test_db_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    runner.invoke(app, ["db", "upgrade", "--db", url])
    res = runner.invoke(app, ["db", "current", "--db", url])
    versions = Path(__file__).resolve().parents[2] / "db" / "migrations" / "versions"
    newest = max(p.name.split("_")[0] for p in versions.glob("[0-9]*_*.py"))
    assert res.exit_code == 0 and f"current: {newest}  head: {newest}" in res.output


def test_version_and_completion_are_offered() -> None:
    from campaign import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"campaign {__version__}"
    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout


def test_schema_pragmas_read_but_other_pragmas_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    res = runner.invoke(app, ["sql", "--db", url, "--format", "csv", "PRAGMA table_info(tasks)"])
    assert res.exit_code == 0 and ",state," in res.stdout
    res = runner.invoke(app, ["sql", "--db", url, "PRAGMA user_version = 7"])
    assert res.exit_code == 2 and "read-only" in res.output


def test_named_queries_take_python_values(tmp_path: Path) -> None:
    from campaign import api

    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    assert api.named_query("top_trials", {"k": 3}, db=url).rows == []
    assert api.named_query("top_trials", {"k": "3"}, db=url).rows == []


def test_tables_round_floats_and_shorten_task_ids_but_csv_keeps_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    stmt = "SELECT 0.123456789 AS x, '0123456789abcdef0123456789abcdef' AS task"
    table = runner.invoke(app, ["sql", "--db", url, stmt]).stdout
    assert "0.12346" in table and "0.123456789" not in table
    assert "01234567…" in table and "0123456789abcdef0123456789abcdef" not in table
    assert "shortened" in table
    csv_out = runner.invoke(app, ["sql", "--db", url, "--format", "csv", stmt]).stdout
    assert csv_out.splitlines()[1] == "0.123456789,0123456789abcdef0123456789abcdef"


def test_a_table_too_wide_for_the_terminal_becomes_one_record_per_row(tmp_path: Path) -> None:
    """Seven short columns and a long free-text one: a table at 160 columns (the text wrapped in its own column),
    one `column │ value` block per row at 80, where the table would squeeze the text to a letter per line."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    config = '{"cutoff": 4.0, "num_radial": 4, "num_spherical": 4, "int_emb_size": 16, "hidden": 32, "lr": 0.0025}'
    stmt = ("SELECT 'demo-hpo' AS campaign, 'dimenetpp' AS hpo, 1 AS rank, 'dimenet++' AS family, 2 AS trial, "
            f"23.5884 AS objective, 3 AS best_epoch, '{config}' AS config")
    wide = runner.invoke(app, ["sql", "--db", url, stmt], env={"COLUMNS": "160"}).stdout
    assert "┃ campaign ┃ hpo" in wide and "row 1" not in wide
    narrow = runner.invoke(app, ["sql", "--db", url, stmt], env={"COLUMNS": "80"}).stdout
    assert "row 1" in narrow and "┃ campaign" not in narrow
    lines = narrow.splitlines()
    assert any(ln.startswith("objective  │ 23.588") for ln in lines)
    assert max(len(ln.rstrip()) for ln in lines) <= 80
    config_lines = [ln for ln in lines if ln.startswith("config")] + [ln for ln in lines if ln.startswith("   ")]
    assert "".join(ln.split("│", 1)[-1].strip() for ln in config_lines).replace(" ", "") == config.replace(" ", "")
