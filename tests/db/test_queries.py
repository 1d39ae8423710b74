"""Named queries run on both backends against a small, hand-built provenance graph."""

from __future__ import annotations

from datetime import timedelta

import pytest

from campaign import api
from campaign.dispatch.failures import RetryPolicy
from campaign.ledger import Ledger
from campaign.tasks import ExitCause, TaskResult, TaskSpec, utcnow
from db import models as m
from db.queries import QueryParamError, UnknownQuery, get_query, list_queries


@pytest.fixture
def graph(engine, db_url):  # type: ignore[no-untyped-def]
    """campaign c: dataset d -> trial task -> trial -> promoted model -> screening hits."""
    led = Ledger(engine)
    cid = led.open_campaign(name="c", recipe_text="x", recipe_hash="h", site="local").id
    hpo = led.stage(cid, "hpo", "hpo")
    scr = led.stage(cid, "screen", "screen")
    t0 = utcnow()
    tasks = {}
    for key, stage, kind in (("trial0", hpo, "trial"), ("trial1", hpo, "trial"), ("scr", scr, "screen")):
        spec = TaskSpec(kind=kind, app="models.train", workdir="/tmp/w",
                        resources={"nodes": 2, "ranks_per_node": 4, "gpus_per_rank": 1})
        tasks[key] = led.create_task(cid, stage.id, key, spec).id
        led.begin_attempt(tasks[key], site="frontier")
    led.record_attempt(TaskResult(task_id=tasks["trial0"], attempt=1, exit_cause=ExitCause.OK, started_at=t0,
                                  ended_at=t0 + timedelta(hours=1)), policy=RetryPolicy(0, 0))
    led.record_attempt(TaskResult(task_id=tasks["trial1"], attempt=1, exit_cause=ExitCause.NODE_LOST,
                                  error="node died", started_at=t0, ended_at=t0 + timedelta(minutes=30)), policy=RetryPolicy(0, 0))
    led.record_attempt(TaskResult(task_id=tasks["scr"], attempt=1, exit_cause=ExitCause.OK, started_at=t0,
                                  ended_at=t0 + timedelta(hours=2)), policy=RetryPolicy(0, 0))
    ds = led.add_dataset(name="demo-emt", head_id=100, store_path="/s", content_hash="c")
    with led.Session() as s, s.begin():
        trials = [m.Trial(campaign_id=cid, hpo="painn", family="painn", number=i, config={"lr": 10.0 ** -i},
                          objective=obj, status="done", task_id=tasks["trial0"]) for i, obj in enumerate((0.3, 0.1, 0.2))]
        s.add_all(trials)
        s.flush()
        model = m.Model(campaign_id=cid, name="painn-1", role="promoted", family="painn", hyperparameters={},
                        trial_id=trials[1].id, task_id=tasks["trial0"])
        s.add(model)
        s.flush()
        s.add_all(m.ScreeningHit(task_id=tasks["scr"], model_id=model.id, rank=r, structure_id=f"s{r}",
                                 formula="Cu4", natoms=4, score=-3.0 + r) for r in (1, 2))
        ids = {"model": model.id, "trial": trials[1].id}
    led.link("input_of", ("dataset", ds.id), ("task", tasks["trial0"]), cid)
    led.link("output_of", ("trial", ids["trial"]), ("task", tasks["trial0"]), cid)
    led.link("promoted_from", ("model", ids["model"]), ("trial", ids["trial"]), cid)
    return {"url": db_url, "engine": engine, **ids, "tasks": tasks}


def test_every_query_has_a_description_on_both_dialects() -> None:
    for dialect in ("sqlite", "postgresql"):
        qs = list_queries(dialect)
        assert {q.name for q in qs} >= {"top_trials", "model_lineage", "resource_hours", "failed_attempts",
                                         "screening_hits"}
        assert all(q.description for q in qs)


def test_top_trials_ranks_by_objective(graph) -> None:  # type: ignore[no-untyped-def]
    res = api.named_query("top_trials", {"k": "2"}, db=graph["url"]).as_dicts()
    assert [(r["rank"], r["objective"]) for r in res] == [(1, 0.1), (2, 0.2)]


def test_model_lineage_reaches_the_dataset(graph) -> None:  # type: ignore[no-untyped-def]
    rows = api.named_query("model_lineage", {"model": str(graph["model"])}, db=graph["url"]).as_dicts()
    nodes = {(r["node_kind"], r["node_id"]) for r in rows}
    assert ("trial", str(graph["trial"])) in nodes
    assert ("task", graph["tasks"]["trial0"]) in nodes
    assert any(kind == "dataset" for kind, _ in nodes)


def test_resource_hours_per_site_and_stage(graph) -> None:  # type: ignore[no-untyped-def]
    rows = {r["stage"]: r for r in api.named_query("resource_hours", {}, db=graph["url"]).as_dicts()}
    # hpo: 1 h + 0.5 h on 2 nodes with 8 GPUs each attempt
    assert rows["hpo"]["node_hours"] == pytest.approx(3.0, rel=1e-3)
    assert rows["hpo"]["gpu_hours"] == pytest.approx(12.0, rel=1e-3)
    assert rows["screen"]["gpu_hours"] == pytest.approx(16.0, rel=1e-3)


def test_failed_attempts_by_cause(graph) -> None:  # type: ignore[no-untyped-def]
    rows = api.named_query("failed_attempts", {}, db=graph["url"]).as_dicts()
    assert [(r["exit_cause"], r["attempts"], r["last_error"]) for r in rows] == [("node_lost", 1, "node died")]


def test_screening_hits_carry_model_and_datasets(graph) -> None:  # type: ignore[no-untyped-def]
    rows = api.named_query("screening_hits", {}, db=graph["url"]).as_dicts()
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["model"] == "painn-1" and rows[0]["hpo"] == "painn" and rows[0]["datasets"] == "demo-emt"


def test_parameter_errors_are_clear() -> None:
    q = get_query("model_lineage")
    with pytest.raises(QueryParamError, match="needs --param model"):
        q.bind({})
    with pytest.raises(QueryParamError, match="no parameter 'bogus'"):
        q.bind({"model": "1", "bogus": "2"})
    with pytest.raises(UnknownQuery, match="top_trials"):
        get_query("nope")


def test_active_learning_queries_on_both_backends(graph) -> None:  # type: ignore[no-untyped-def]
    """A one-round loop, recorded as the active stage records it: the selection hit labelled, the dataset version
    built from the labels, the model fine-tuned on it and evaluated, a discovery hit screened with it."""
    led = Ledger(graph["engine"])
    cid = led.campaign_id("c")
    st = led.stage(cid, "active", "active")
    t = {k: led.create_task(cid, st.id, f"active/{k}", TaskSpec(kind="x", app="models.x", workdir="/tmp/w")).id
         for k in ("r01/screen/000", "r01/label", "r01/data", "r01/finetune/m0", "r01/evaluate/m0",
                   "r00/evaluate/m0", "final/screen/000")}
    sel, found = led.add_hits(cid, [
        {"task_id": t["r01/screen/000"], "rank": 1, "structure_id": "gen-0-3", "formula": "Cu2", "natoms": 2,
         "score": -1.0, "data": {"purpose": "selection", "round": 1}},
        {"task_id": t["final/screen/000"], "rank": 1, "structure_id": "gen-0-5", "formula": "Cu2", "natoms": 2,
         "score": -3.5}])
    led.add_labels(cid, t["r01/label"], [
        {"hit_id": sel, "round": 1, "structure_id": "gen-0-3", "sid": 3, "formula": "Cu2", "natoms": 2,
         "method": "emt", "status": "ok", "energy_ev": -7.0, "seconds": 0.1},
        {"hit_id": None, "round": 1, "structure_id": "gen-0-4", "sid": 4, "formula": "Cu2", "natoms": 2,
         "method": "emt", "status": "failed", "cause": "unphysical", "seconds": 0.1}])
    ds = led.add_dataset(name="demo-emt-active", head_id=100, store_path="/v1", content_hash="v1" * 32, version=1)
    model = led.save_model({"task_id": t["r01/finetune/m0"], "role": "finetuned"},
                           create={"campaign_id": cid, "name": "demo-emt-active-r01-m0", "family": "painn",
                                   "hyperparameters": {}, "parent_id": graph["model"]})
    for kind, src, dst in (("input_of", ("hit", sel), ("task", t["r01/label"])),
                           ("input_of", ("task", t["r01/label"]), ("task", t["r01/data"])),
                           ("output_of", ("dataset", ds.id), ("task", t["r01/data"])),
                           ("input_of", ("dataset", ds.id), ("task", t["r01/finetune/m0"])),
                           ("output_of", ("model", model), ("task", t["r01/finetune/m0"])),
                           ("finetuned_from", ("model", model), ("model", graph["model"])),
                           ("input_of", ("model", model), ("task", t["final/screen/000"]))):
        led.link(kind, src, dst, cid)
    for r, mae in ((0, 900.0), (1, 500.0)):
        led.add_metrics(t[f"r{r:02d}/evaluate/m0"], [
            {"epoch": r, "split": "heldout", "head": "demo-emt-heldout", "name": "force_mae_mev_per_a", "value": mae},
            {"epoch": r, "split": "test", "head": "demo-emt", "name": "force_mae_mev_per_a", "value": 100.0}])
    rounds = api.named_query("active_rounds", {"campaign": "c"}, db=graph["url"]).as_dicts()
    assert [(r["round"], r["heldout_force_mae_mev_per_a"], r["labelled"], r["failed_labels"]) for r in rounds] == [
        (0, 900.0, 0, 0), (1, 500.0, 1, 1)]
    assert rounds[1]["dataset_version"] == "demo-emt-active v1 " + "v1" * 6
    up = {r["step"]: r for r in api.named_query("active_hit_lineage", {"hit": found}, db=graph["url"]).as_dicts()}
    assert up["r01/finetune/m0"]["model_made"] == "demo-emt-active-r01-m0" and up["r01/finetune/m0"]["round"] == 1
    assert up["r01/data"]["dataset_made"] == "demo-emt-active v1"
    assert (up["r01/label"]["labels_ok"], up["r01/label"]["labels_failed"]) == (1, 1)
    assert "trial0" in up  # back to the pre-training trial through the parent model
