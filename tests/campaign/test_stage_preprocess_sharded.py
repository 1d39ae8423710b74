"""The preprocess stage with ``preprocess_shards``: part tasks, then a merge, over a real local dispatcher.

The recorded dataset must equal what one ``models.preprocess`` task gives on the same files (same graphs per
split, same reference energies), and its store must open as one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from campaign.dispatch import make_dispatcher
from campaign.dispatch.failures import RetryPolicy
from campaign.ledger import Ledger
from campaign.recipe import RecipeError, parse_recipe
from campaign.stages.base import StageContext
from campaign.stages.preprocess import PreprocessStage
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import ExitCause, TaskResult, TaskState
from db import models as m


@pytest.fixture(scope="module")
def emt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.demo import run as run_demo

    d = tmp_path_factory.mktemp("raw")
    res = run_demo({"dataset": "demo-emt", "output": "emt.extxyz", "seed": 4, "count": 14}, d / "c.json")
    return Path(res["output"])


def _recipe(emt_file: Path, shards: int) -> str:
    return (
        "campaign: sharded\n"
        f"datasets:\n  - {{name: demo-emt, files: [{emt_file}], preprocess_shards: {shards}}}\n"
        "stages:\n  preprocess: {cutoff: 4.5, max_neighbours: 12, seed: 3}\n"
    )


def test_recipe_rejects_zero_preprocess_shards(emt_file: Path) -> None:
    with pytest.raises(RecipeError, match="preprocess_shards"):
        parse_recipe(_recipe(emt_file, 0))


def _drive_in_process(stage: PreprocessStage, ctx: StageContext) -> str:
    """Run the stage's tasks one by one in this process, through the ledger as the steering loop does."""
    from models.preprocess import run as run_preprocess

    led, cid = ctx.ledger, ctx.campaign_id
    pending = stage.start(ctx)
    while pending:
        led.create_tasks(cid, ctx.stage_id, [(p.key, p.spec) for p in pending])
        follow = []
        for p in pending:
            task = led.get_task_by_key(cid, p.key)
            if task.state == TaskState.DONE:
                continue
            workdir = Path(p.spec.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            out = run_preprocess(dict(p.spec.config), workdir / "config.json")
            attempt = led.begin_attempt(task.id, site="local")
            result = TaskResult(task_id=task.id, attempt=attempt, exit_cause=ExitCause.OK, returncode=0,
                                result=json.loads(json.dumps(out)))  # fmt: skip
            led.record_attempt(result, policy=RetryPolicy(0, 0))
            follow += stage.on_done(ctx, led.get_task_by_key(cid, p.key), result)
        known = {t.key for t in led.tasks(cid, stage_id=ctx.stage_id)}
        pending = [f for f in follow if f.key not in known]
    return stage.finish(ctx)


def _drive_with_steerer(stage: PreprocessStage, ctx: StageContext, run_dir: Path) -> str:
    dispatcher = make_dispatcher("local", {"max_workers": 2, "retries": 0}, run_dir)
    try:
        steer = Steerer(TaskQueue(ctx.ledger, ctx.campaign_id, site="local", executor=dispatcher.name), dispatcher, max_in_flight=2)
        return steer.run_stage(stage, ctx)
    finally:
        dispatcher.shutdown()


@pytest.mark.parametrize("driver", ["in-process", pytest.param("local-dispatcher", marks=pytest.mark.slow)])
def test_sharded_preprocess_stage_records_one_dataset_equal_to_single_task(
    engine, emt_file: Path, tmp_path: Path, driver: str
) -> None:  # type: ignore[no-untyped-def]
    from models.data.store import open_split
    from models.preprocess import run as run_preprocess

    recipe = parse_recipe(_recipe(emt_file, 2))
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="s", recipe_text="campaign: s", recipe_hash="h", site="local").id
    stage_row = ledger.stage(cid, "preprocess", "preprocess")
    ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=cid, stage_id=stage_row.id,
                       workdir=tmp_path / "run", site="local")  # fmt: skip
    stage = PreprocessStage(recipe)
    planned = stage.start(ctx)
    assert [p.key for p in planned] == ["preprocess/demo-emt/part-00000", "preprocess/demo-emt/part-00001"]
    if driver == "in-process":
        assert _drive_in_process(stage, ctx) == "done"
    else:
        assert _drive_with_steerer(stage, ctx, tmp_path / "dispatch") == "done"
    tasks = {t.key: t for t in ledger.tasks(cid, stage_id=stage_row.id)}
    assert sorted(tasks) == ["preprocess/demo-emt", "preprocess/demo-emt/part-00000",
                             "preprocess/demo-emt/part-00001"]  # fmt: skip
    assert all(t.state == TaskState.DONE for t in tasks.values())
    merge = tasks["preprocess/demo-emt"]
    with ledger.Session() as s:
        rows = list(s.scalars(select(m.Dataset)))
        assert [(r.name, r.task_id) for r in rows] == [("demo-emt", merge.id)]
        row = rows[0]
        arts = {a.path for a in s.scalars(select(m.Artifact).where(m.Artifact.kind == "graph-store"))}
    assert any("/parts/00001-of-00002/" in p for p in arts) and any(
        p.endswith("train/index.json") for p in arts
    )
    # the same files through one task
    single_cfg = dict(merge.result["config"]["part_config"], output_dir=str(tmp_path / "single"))
    single_cfg["datasets"] = [{"name": d["name"], "inputs": d["inputs"]} for d in single_cfg["datasets"]]
    single_cfg.pop("part", None)
    cfg_path = tmp_path / "single.json"
    cfg_path.write_text(json.dumps(single_cfg))
    single = run_preprocess(single_cfg, cfg_path)["datasets"]["demo-emt"]
    assert row.counts == single["counts"]
    refs = row.summary["reference_energies"]
    assert refs.keys() == single["reference_energies"].keys()
    for z, e in single["reference_energies"].items():
        assert refs[z] == pytest.approx(e, abs=1e-6)
    shared = ctx.shared["datasets"]["demo-emt"]
    for split in ("train", "val", "test"):
        a = open_split(shared["root"], "demo-emt", split)
        b = open_split(tmp_path / "single", "demo-emt", split)
        assert sorted(a.graph_values("sid").tolist()) == sorted(b.graph_values("sid").tolist())
        assert len(a) == row.counts[split]
