"""`campaign validate --profile`: placeholders and a scale that does not fit the data are warned about (once,
at the line that sets them), and never fail validation."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from campaign.cli.app import app
from campaign.recipe import load_recipe
from campaign.recipe_advice import advise

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_the_shipped_frontier_profile_is_warned_about_at_its_lines() -> None:
    path = ROOT / "recipes" / "hpo.yaml"
    text = path.read_text()
    lines = text.splitlines()
    res = runner.invoke(app, ["validate", str(path), "--profile", "frontier", "--elsewhere"],
                        env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 3, warnings  # account, database host, one scale warning for all six studies
    advice = advise(load_recipe(path, profile="frontier", check_files=False), text, profile="frontier")
    by_where = {a.where: a for a in advice}
    assert set(by_where) == {"profiles.frontier.site.account", "profiles.frontier.database",
                             "profiles.frontier.hpo_defaults.nodes_per_trial"}
    for a in advice:  # the line named is the one that sets the field
        field = a.where.rsplit(".", 1)[1]
        assert a.line is not None and lines[a.line - 1].strip().startswith(f"{field}:"), (a, lines[a.line - 1])
    scale = by_where["profiles.frontier.hpo_defaults.nodes_per_trial"].message
    assert "painn, schnet, egnn, dimenetpp, mace, pna" in scale and "2048 ranks" in scale and "400 structures" in scale


def test_no_warning_for_the_laptop_recipe_or_a_real_allocation(tmp_path: Path) -> None:
    path = ROOT / "recipes" / "hpo.yaml"
    assert advise(load_recipe(path, check_files=False), path.read_text()) == []
    text = path.read_text().replace("account: ABC123", "account: CHM136").replace(
        "db.example.org", "db01.olcf.ornl.gov").replace("nodes_per_trial: 256", "nodes_per_trial: 1").replace(
        "ranks_per_node: 8", "ranks_per_node: 1").replace("batch_size: 128", "batch_size: 16")
    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    assert advise(load_recipe(mine, profile="frontier", check_files=False), text, profile="frontier") == []


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`campaign run --dry-run`: the stages' task counts (the tiny recipe's 7 are what its real runs create: see
    the reliability suite), node-hours bounded by the batch walltime on a batch site, the batch scripts; no
    database, no work directory."""
    from campaign.plan import plan
    from tests.reliability.conftest import TINY_RECIPE, TINY_TASKS

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE.format(name="tiny"))
    assert sum(p.count for p in plan(load_recipe(tmp_path / "tiny.yaml"))) == TINY_TASKS
    res = runner.invoke(app, ["run", "tiny.yaml", "--dry-run"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "plan of campaign 'tiny' on local (nothing is run)" in res.output and "preprocess" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]

    res = runner.invoke(app, ["run", str(ROOT / "recipes" / "hpo.yaml"), "--dry-run", "--profile", "frontier"],
                        env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "256 nodes, 2,048 ranks, ≤ 2h00m00s" in res.output and "32,768" in res.output  # 64 x 256 x 2 h
    assert "at most 196,642 node-hours" in res.output  # 6 x 32,768 + (9 preprocessing + 8 evaluations) x 2 h
    assert "batch script of executor htex" in res.output and "#SBATCH --account=ABC123" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]
