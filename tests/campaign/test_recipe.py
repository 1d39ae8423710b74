"""Recipe loading: shipped recipes validate; every error names the file, YAML path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign.recipe import FAMILIES, RecipeError, load_recipe, parse_recipe, recipe_schema

REPO = Path(__file__).resolve().parents[2]
MINIMAL = """\
campaign: t
datasets:
  - name: demo-emt
stages:
  hpo:
    - name: p
      family: painn
      search_space:
        lr: {type: float, low: 0.0001, high: 0.01, log: true}
"""


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    here = path.name != "exascale.yaml"  # its raw files are on Frontier's file system
    recipe = load_recipe(path, check_files=here)
    for name in recipe.profiles:
        load_recipe(path, profile=name, check_files=here)


def test_hpo_recipe_has_six_families() -> None:
    recipe = load_recipe(REPO / "recipes" / "hpo.yaml")
    assert sorted(h.family for h in recipe.stages.hpo or []) == sorted(FAMILIES)
    assert all(h.precision == "fp64" for h in recipe.stages.hpo or [])
    frontier = load_recipe(REPO / "recipes" / "hpo.yaml", profile="frontier")
    assert frontier.site.name == "frontier"
    assert {h.nodes_per_trial for h in frontier.stages.hpo or []} == {256}


def _errors(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    return info.value.errors


def test_errors_carry_path_and_line() -> None:
    errs = _errors(MINIMAL.replace("family: painn", "family: gcn").replace("high: 0.01", "high: 0.00001"))
    assert ("stages.hpo[0].family", 7, "unknown family 'gcn'; known families: " + ", ".join(FAMILIES)) in errs
    assert any(loc == "stages.hpo[0].search_space.lr" and line == 9 and "inverted" in msg for loc, line, msg in errs)


@pytest.mark.parametrize(("text", "loc", "line", "words"), [
    (MINIMAL + "bogus: 1\n", "bogus", 10, "unknown key"),
    (MINIMAL.replace("- name: demo-emt", "- name: nope"), "datasets[0].name", 3, "unknown dataset"),
    (MINIMAL + "site: {name: mars}\n", "site.name", 10, "unknown site"),
    (MINIMAL + "site: {nodes_per_block: 0}\n", "site.nodes_per_block", 10, "greater than or equal to 1"),
    (MINIMAL + "site: {name: globus}\n", "site", 10, "endpoint_id"),
    (MINIMAL.replace("campaign: t", "campaign: 3"), "campaign", 1, "string"),
    (MINIMAL.replace("lr: {type: float, low: 0.0001, high: 0.01, log: true}", "{}"), "stages.hpo[0].search_space",
     8, "at least 1 item"),
])
def test_bad_inputs(text: str, loc: str, line: int | None, words: str) -> None:
    errs = _errors(text)
    assert any(e[0] == loc and e[1] == line and words in e[2] for e in errs), errs


LR = "lr: {type: float, low: 0.0001, high: 0.01, log: true}"


@pytest.mark.parametrize(("family", "space", "fixed", "words"), [
    ("mace", "correlation: {type: int, low: 1, high: 3}", "{}", "search_space.correlation = 3: field 'correlation'"),
    ("mace", LR, "{correlation: 3}", "fixed: field 'correlation': Input should be 1 or 2"),
    ("pna", "towers: {type: categorical, choices: [1, 3]}", "{hidden: 64}", "towers (3) must divide hidden (64)"),
    ("painn", "hidden: {type: float, low: 8, high: 64}", "{}", "field 'hidden': Input should be a valid integer"),
    ("painn", "num_filters: {type: int, low: 8, high: 64}", "{}", "unknown hyperparameter 'num_filters'"),
    ("painn", LR, "{heads: [0, 1]}", "unknown hyperparameter 'heads'"),
    ("schnet", LR, "{forces: sideways}", "fixed: field 'forces'"),
])
def test_model_hyperparameters_checked_against_the_family_schema(family: str, space: str, fixed: str,
                                                                  words: str) -> None:
    """A value the model builder would refuse fails when the recipe is checked, not in a trial."""
    text = MINIMAL.replace("family: painn", f"family: {family}").replace(LR, space) + f"      fixed: {fixed}\n"
    errs = _errors(text)
    assert any(e[0] == "stages.hpo[0]" and words in e[2] for e in errs), errs


def test_valid_family_hyperparameters_pass() -> None:
    text = (MINIMAL.replace("family: painn", "family: mace").replace(LR, "max_ell: {type: int, low: 1, high: 3}")
            + "      fixed: {correlation: 1, cutoff: 4, hidden: 32}\n")
    (spec,) = parse_recipe(text, "r.yaml").stages.hpo or []
    assert spec.fixed == {"correlation": 1, "cutoff": 4, "hidden": 32}


@pytest.mark.parametrize(("text", "line", "words"), [
    ("campaign: t\n  bad indent: [\n", 2, "malformed YAML"),
    ("campaign: t\ncampaign: u\n", 2, "duplicate key"),
    ("", 1, "empty"),
    ("- a list\n", 1, "mapping"),
])
def test_malformed_yaml(text: str, line: int, words: str) -> None:
    (err,) = _errors(text)
    assert err[1] == line and words in err[2]


def test_message_names_the_file() -> None:
    with pytest.raises(RecipeError, match=r"^r\.yaml:7: stages\.hpo\[0\]\.family"):
        parse_recipe(MINIMAL.replace("painn", "gcn"), "r.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "none.yaml")


def test_hash_ignores_formatting_but_not_content() -> None:
    a = parse_recipe(MINIMAL)
    b = parse_recipe("# comment\n" + MINIMAL.replace("campaign: t", "campaign:   t"))
    c = parse_recipe(MINIMAL.replace("0.01", "0.02"))
    assert a.hash() == b.hash() != c.hash()


def test_schema_is_json_schema() -> None:
    schema = recipe_schema()
    assert schema["type"] == "object" and "campaign" in schema["properties"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=12))
def test_arbitrary_documents_never_crash(doc: object) -> None:
    import yaml

    try:
        parse_recipe(yaml.safe_dump({"campaign": "t", "stages": doc}), "fuzz.yaml")
    except RecipeError as exc:
        assert str(exc).startswith("fuzz.yaml:")


@pytest.mark.parametrize(("site", "expected"), [
    ("name: local\n  workers: 3", 3),
    ("name: frontier\n  account: ABC123\n  nodes_per_block: 4\n  max_blocks: 2", 8 * 4 * 2),  # 8 GCDs per node
    ("name: aurora\n  account: ABC123\n  nodes_per_block: 2", 12 * 2),  # 12 tiles per node
    ("name: perlmutter\n  account: m1234\n  nodes_per_block: 16\n  workers: 10", 10),
    ("name: globus\n  endpoint_id: 2f9d4e2c-9a6e-4b8e-8e55-7a0f5b3c1d21", 64),
])
def test_site_concurrency_and_tasks_in_flight(site: str, expected: int) -> None:
    """The steering loop keeps every worker of the site busy (not the login node's CPU count) plus queued_tasks."""
    recipe = parse_recipe(f"campaign: c\nsite:\n  {site}\n")
    assert recipe.site.concurrency() == expected
    assert recipe.site.max_in_flight() == expected + 32
    assert "queued_tasks" not in recipe.site.dispatch_params()
    assert parse_recipe(f"campaign: c\nsite:\n  {site}\n  queued_tasks: 0\n").site.max_in_flight() == expected


def test_profiles_that_are_not_a_mapping_are_named_when_a_site_is_given() -> None:
    """``profiles: true`` with ``--site``: the recipe error names the field (it was a TypeError)."""
    with pytest.raises(RecipeError, match=r"^r\.yaml:2: profiles: .*dictionary"):
        parse_recipe("campaign: x\nprofiles: true\n", "r.yaml", site="local")


def test_early_stopping_is_refused_where_workers_do_not_share_the_workdir() -> None:
    """Early stopping watches a running trial's files in the campaign's workdir: behind a Globus Compute endpoint
    the workers do not see it, so the recipe is refused with the field named instead of never pruning."""
    from campaign.recipe import RecipeError, parse_recipe

    hpo = ("datasets:\n  - {{name: demo-emt, count: 10}}\nstages:\n  preprocess: {{cutoff: 5.0}}\n  hpo:\n"
           "    - name: painn\n      family: painn\n{extra}"
           "      search_space:\n        lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}\n")
    globus = "campaign: g\nsite: {name: globus, endpoint_id: 0f8a1b2c-0000-0000-0000-000000000000}\n"
    with pytest.raises(RecipeError, match=r"early_stopping.rule 'median'.*do not share.*rule: none"):
        parse_recipe(globus + hpo.format(extra=""), "g.yaml")
    assert parse_recipe(globus + hpo.format(extra="      early_stopping: {rule: none}\n"), "g.yaml").campaign == "g"
    assert parse_recipe("campaign: l\n" + hpo.format(extra=""), "l.yaml").site.shared_filesystem()


def test_a_typo_in_hpo_defaults_is_reported_once_where_it_is_written_with_a_suggestion() -> None:
    text = MINIMAL.replace("stages:", "hpo_defaults:\n  max_trail: 4\nstages:") + (
        "    - name: s\n      family: schnet\n      search_space:\n"
        "        lr: {type: float, low: 0.0001, high: 0.01}\n")
    errs = _errors(text)
    assert errs == [("hpo_defaults.max_trail", 5, "unknown key (did you mean 'max_trials'?)")]


def test_no_suggestion_for_a_key_unlike_any() -> None:
    errs = _errors(MINIMAL + "zzzqqq: 1\n")
    assert errs == [("zzzqqq", 10, "unknown key")]


def test_multi_task_parallelism_is_a_recipe_setting() -> None:
    """head_groups reaches the trial's training config; too few ranks for the heads is refused at validation."""
    from campaign.stages.hpo_trials import train_config

    two = MINIMAL.replace("  - name: demo-emt\n", "  - name: demo-emt\n  - name: demo-gfn2\n")
    grouped = two.replace("      family: painn\n", "      family: painn\n      head_groups: true\n"
                          "      ranks_per_node: 2\n")
    spec = parse_recipe(grouped).stages.hpo[0]
    datasets = {"demo-emt": {"root": "/d/emt", "head_id": 100}, "demo-gfn2": {"root": "/d/gfn2", "head_id": 200}}
    cfg = train_config(spec, {"lr": 1e-3}, datasets, out_dir=Path("/tmp/t"), seed=0, threads=1)
    assert cfg.head_groups and cfg.model is not None and cfg.model.heads == [100, 200]
    with pytest.raises(RecipeError, match="head_groups needs a rank per head: 1 ranks per trial for 2 datasets"):
        parse_recipe(grouped.replace("      ranks_per_node: 2\n", ""))
    train = two + "  promote: {}\n  train: {head_groups: true, nodes: 1, ranks_per_node: 1}\n"
    with pytest.raises(RecipeError, match=r"stages\.train: head_groups needs a rank per head"):
        parse_recipe(train)
