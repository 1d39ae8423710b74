"""Every shipped recipe validates (with each of its profiles), says what its header promises, and the exascale
campaign renders the Frontier batch scripts Parsl would submit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from campaign import api
from campaign.recipe import FAMILIES, Recipe, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))


def _cases() -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for path in SHIPPED:
        profiles = (yaml.safe_load(path.read_text()) or {}).get("profiles") or {}
        out += [(path.name, None)] + [(path.name, name) for name in profiles]
    return out


def test_the_recipes_we_promise_are_shipped() -> None:
    assert {"hpo.yaml", "train.yaml", "full.yaml", "exascale.yaml"} <= {p.name for p in SHIPPED}


@pytest.mark.parametrize(("name", "profile"), _cases())
def test_every_shipped_recipe_and_profile_validates(name: str, profile: str | None) -> None:
    recipe = load_recipe(RECIPES / name, profile=profile, check_files=name != "exascale.yaml")
    assert isinstance(recipe, Recipe) and len(recipe.hash()) == 64
    train = recipe.stages.train
    if train is not None and train.chunk_walltime_s is not None and recipe.site.name != "local":
        # a chunk (plus the worker's grace) must fit in one batch job of the site
        assert train.chunk_walltime_s < recipe.site.walltime_s


def test_full_runs_the_whole_workflow_locally() -> None:
    r = load_recipe(RECIPES / "full.yaml")
    assert r.site.name == "local" and r.database is None
    st = r.stages
    assert all(getattr(st, k) for k in ("preprocess", "hpo", "promote", "train", "screen", "finetune"))
    assert sorted(h.family for h in st.hpo or []) == sorted(FAMILIES)
    assert all(d.name.startswith("demo-") for d in r.datasets)  # generated here: no download
    assert st.train is not None and st.train.models == "promoted" and st.train.from_campaign is None
    assert st.train.ranks_per_node == 2 and st.train.nodes == 1 and st.train.chunk_walltime_s is not None
    assert st.screen is not None and st.screen.from_campaign is None
    assert st.finetune is not None and st.finetune.from_campaign is None


def test_train_picks_up_the_models_promoted_by_the_main_job() -> None:
    main = load_recipe(RECIPES / "hpo.yaml")
    r = load_recipe(RECIPES / "train.yaml")
    assert r.stages.train is not None and r.stages.train.from_campaign == main.campaign
    assert main.stages.promote is not None and r.stages.hpo is None and r.stages.promote is None
    frontier = load_recipe(RECIPES / "train.yaml", profile="frontier")
    assert frontier.stages.train is not None and frontier.stages.train.nodes == 2048


def test_exascale_describes_the_seed_campaign() -> None:
    from models.registry import load_registry

    r = load_recipe(RECIPES / "exascale.yaml", check_files=False)
    reg = load_registry()
    names = [d.name for d in r.datasets]
    assert len(names) == 16 and all(not n.startswith("demo-") and n in reg.names() for n in names)
    assert all(d.files for d in r.datasets)  # real data: raw files, nothing generated
    assert all(d.preprocess_shards >= 64 for d in r.datasets)  # preprocessed in parallel parts
    hpo = r.stages.hpo or []
    assert sorted(h.family for h in hpo) == sorted(FAMILIES)
    assert all(h.nodes_per_trial == 256 and h.precision == "fp64" and h.datasets is None for h in hpo)
    assert r.stages.promote is not None
    train = r.stages.train
    assert train is not None and train.nodes == 2048 and train.chunk_walltime_s is not None
    assert train.chunk_walltime_s < r.site.walltime_s
    assert r.stages.screen is not None and r.stages.screen.structures == 1_100_000_000
    assert r.stages.screen.max_atoms == 500 and r.stages.screen.min_atoms == 2
    assert r.stages.finetune is not None and len(r.stages.finetune.tasks) == 12
    assert r.site.name == "frontier" and r.database and r.database.startswith("postgresql")


@pytest.mark.parametrize("executor", ["htex", "mpi"])
def test_exascale_renders_its_frontier_batch_script(executor: str) -> None:
    r = load_recipe(RECIPES / "exascale.yaml", check_files=False)
    script = api.render_site_scripts(recipe=RECIPES / "exascale.yaml", executors=[executor])[executor]
    assert script.startswith("#!/bin/bash")
    assert "#SBATCH --nodes=2048" in script and "#SBATCH --account=ABC123" in script
    assert "#SBATCH --partition=batch" in script and "#SBATCH --gpus-per-node=8" in script
    minutes = re.search(r"#SBATCH --time=(\d+)", script)
    assert minutes is not None and int(minutes.group(1)) * 60 == r.site.walltime_s
    assert r.site.worker_init in script
    if executor == "mpi":  # multi-node apps (trials, training) are launched by srun inside the block
        assert "--enable_mpi_mode" in script and "--mpi-launcher=srun" in script


def test_sites_show_renders_a_recipe_with_its_profile_both_executors() -> None:
    """`campaign sites show --recipe R --profile P`: the site, walltime, account and worker_init of the profile,
    the single-node (htex) and the multi-node (mpi) executors' scripts."""
    from typer.testing import CliRunner

    from campaign.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["sites", "show", "--recipe", str(RECIPES / "hpo.yaml"), "--profile", "frontier"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "# ---- executor htex" in out and "# ---- executor mpi" in out
    assert out.count("#SBATCH --account=ABC123") == 2 and out.count("#SBATCH --time=120") == 2
    assert out.count("module load PrgEnv-gnu rocm") == 2 and "--enable_mpi_mode" in out
    one = runner.invoke(app, ["sites", "show", "--recipe", str(RECIPES / "hpo.yaml"), "--profile", "frontier",
                              "--executor", "htex", "--walltime", "00:30:00"])
    assert "#SBATCH --time=30" in one.stdout and "executor mpi" not in one.stdout
    local = runner.invoke(app, ["sites", "show", "--recipe", str(RECIPES / "hpo.yaml")])
    assert local.exit_code == 2 and "submits no batch script" in local.output
    other = runner.invoke(app, ["sites", "show", "aurora", "--recipe", str(RECIPES / "hpo.yaml"), "--profile",
                                "frontier"])
    assert other.exit_code == 2 and "runs on site 'frontier'" in other.output


def test_scaling_times_the_best_model_the_main_job_promoted() -> None:
    from campaign.plan import plan

    main = load_recipe(RECIPES / "hpo.yaml")
    r = load_recipe(RECIPES / "scaling.yaml")
    sc = r.stages.scaling
    assert sc is not None and sc.model == "best" and sc.from_campaign == main.campaign
    (p,) = plan(r)
    assert (p.stage, p.count, p.ranks) == ("scaling", len(sc.ranks) * len(sc.modes) * len(sc.precision), 2)
    frontier = load_recipe(RECIPES / "scaling.yaml", profile="frontier").stages.scaling
    assert frontier is not None and max(frontier.ranks) // frontier.ranks_per_node == 512
