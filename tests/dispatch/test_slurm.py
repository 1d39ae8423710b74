"""End to end on the real Slurm cluster ``.ci/slurm.sh start`` runs: the same factory Frontier/Perlmutter use.

Every node of the CI cluster is a network namespace with its own hostname and address, so workers reach the
interchange on the cluster's bridge address, not on 127.0.0.1. Parsl submits the MPI executor's block through
``sbatch``; its worker pool starts inside the allocation; a 2-rank app runs through ``srun`` (``$PARSL_MPI_PREFIX``); the TaskResult carries the Slurm job id and host.
Then a campaign stage runs through the steering loop into the campaign database: single-node tasks on the
``htex`` block's workers, a 2-rank training run (``models.train``, DDP over gloo) through ``srun`` in the ``mpi``
block, and every attempt recorded with the Slurm job id Parsl got back from ``sbatch``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from campaign.dispatch import RetryPolicy, make_dispatcher
from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.base import PlannedTask, StageContext
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import ExitCause, TaskResult, TaskSpec, TaskState
from db import models as m
from db.engine import make_engine
from db.migrate import ensure_schema

pytestmark = pytest.mark.slurm


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.mark.timeout(240)
def test_two_rank_app_through_sbatch_and_srun(tmp_path: Path, make_spec, slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    if not _slurm_up():
        pytest.skip("no running Slurm (run .ci/slurm.sh start)")
    params = {
        "partition": "debug",
        "walltime": "00:05:00",
        "address": slurm_cluster.address,
        "max_blocks": 0,  # no single-node block: this test holds the only node for the MPI block
        "heartbeat_period": 2,
        "heartbeat_threshold": 10,
        "retries": 0,
    }
    spec = make_spec(app="campaign.apps.ranks", resources={"nodes": 1, "ranks_per_node": 2})
    with make_dispatcher("slurm", params, tmp_path) as d:
        res = d.submit(spec).result(timeout=200)
    assert res.exit_cause is ExitCause.OK, res.error
    assert res.executor == "parsl:mpi"
    assert res.result["ntasks"] == 2
    assert sorted(r["rank"] for r in res.result["ranks"]) == [0, 1]
    assert {r["launcher"] for r in res.result["ranks"]} == {"slurm"}
    assert res.batch_job_id and res.batch_job_id == res.result["job_id"]
    assert res.host in slurm_cluster.nodes  # the node the block's batch script ran on, by its own name
    assert {r["host"] for r in res.result["ranks"]} == {res.host}  # one node: both ranks on it
    scripts = list((tmp_path / "parsl").rglob("parsl.mpi.block-0*"))
    batch = [p for p in scripts if p.is_file() and not p.name.endswith((".stdout", ".stderr"))]
    assert any("#SBATCH --partition=debug" in p.read_text() for p in batch)


class SlurmStage:
    """Two single-node tasks and one 2-rank training run (tiny PaiNN on two EMT datasets, one epoch)."""

    name = "slurm-e2e"
    kind = "noop"

    def __init__(self, workdir: Path, data_root: Path) -> None:
        self.workdir = workdir
        self.data_root = data_root
        self.told: dict[str, TaskResult] = {}

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        from tests.models.train.conftest import TINY_PAINN

        shards = [PlannedTask(f"shard/{i}", TaskSpec(kind="noop", app="campaign.apps.noop", config={"payload": i},
                                                     workdir=str(self.workdir / f"shard{i}"))) for i in range(2)]
        out = self.workdir / "train"
        train = TaskSpec(
            kind="train", app="models.train", workdir=str(out),
            config={"data_root": str(self.data_root), "datasets": ["metals", "molecules"], "batch_size": 4,
                    "model": dict(TINY_PAINN), "epochs": 1, "precision": "fp64", "device": "cpu",
                    "optimizer": {"lr": 0.005}, "output_dir": str(out / "out"), "seed": 3, "threads": 1},
            resources={"nodes": 1, "ranks_per_node": 2, "walltime_s": 300}, env={"OMP_NUM_THREADS": "1"},
        )
        return [*shards, PlannedTask("train/ddp", train)]

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        self.told[task.key] = result
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        raise AssertionError(f"{task.key} failed: {result.error if result else ''}")

    def poll(self, ctx: StageContext, running: list[Any]) -> list[PlannedTask]:
        return []

    def finish(self, ctx: StageContext) -> str:
        return "done"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_campaign_stage_through_slurm_into_the_database(tmp_path: Path, slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    if not _slurm_up():
        pytest.skip("no running Slurm (run .ci/slurm.sh start)")
    from tests.models.train.emt_data import demo_root

    data_root = demo_root(tmp_path / "stores", n_train=8, n_val=4, n_test=4)
    engine = make_engine(f"sqlite:///{tmp_path / 'campaign.db'}")
    ensure_schema(engine)
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="slurm-e2e", recipe_text="campaign: slurm-e2e", recipe_hash="s" * 64,
                               site="slurm").id
    sid = ledger.stage(cid, "slurm-e2e", "noop").id
    ctx = StageContext(recipe=parse_recipe("campaign: slurm-e2e\n"), ledger=ledger, campaign_id=cid,
                       stage_id=sid, workdir=tmp_path, site="slurm")
    params = {
        "partition": "debug",
        "walltime": "00:10:00",
        "address": slurm_cluster.address,
        # each block holds a whole node of the CI cluster (--exclusive): the htex block one, the mpi block another
        "exclusive": True,
        "max_blocks": 1,
        "heartbeat_period": 2,
        "heartbeat_threshold": 30,
        "retries": 0,
    }
    dispatcher = make_dispatcher("slurm", params, tmp_path / "dispatch")
    stage = SlurmStage(tmp_path / "tasks", data_root)
    try:
        tasks = TaskQueue(ledger, cid, site="slurm", executor=dispatcher.name, policy=RetryPolicy(max_retries=0))
        assert Steerer(tasks, dispatcher, max_in_flight=4).run_stage(stage, ctx) == "done"
        jobs = {label: {str(j) for j in ex.blocks_to_job_id.values()}
                for label, ex in dispatcher.dfk.executors.items() if hasattr(ex, "blocks_to_job_id")}
    finally:
        dispatcher.shutdown()
    assert jobs["htex"] and jobs["mpi"] and not jobs["htex"] & jobs["mpi"], jobs

    with ledger.Session() as s:
        tasks = {t.key: t for t in s.scalars(select(m.Task).where(m.Task.campaign_id == cid))}
        attempts = {k: list(t.attempts) for k, t in tasks.items()}
    assert {k: t.state for k, t in tasks.items()} == dict.fromkeys(("shard/0", "shard/1", "train/ddp"),
                                                                   TaskState.DONE)
    assert all(len(a) == 1 and a[0].exit_cause == m.ExitCause.OK for a in attempts.values()), attempts
    for key in ("shard/0", "shard/1"):
        att = attempts[key][0]
        assert att.batch_job_id in jobs["htex"], (key, att.batch_job_id, jobs)  # started by sbatch, recorded
        assert att.site == "slurm" and att.host in slurm_cluster.nodes
        assert tasks[key].result["payload"] == int(key[-1])
    train = attempts["train/ddp"][0]
    assert train.batch_job_id in jobs["mpi"], (train.batch_job_id, jobs)
    assert train.executor == "parsl:mpi" and train.ranks == 2 and train.nodes == 1
    assert train.node_list in slurm_cluster.nodes and train.node_list != attempts["shard/0"][0].host
    res = tasks["train/ddp"].result
    assert res["status"] == "ok" and res["world_size"] == 2 and res["completed"], res
    assert Path(res["metrics_path"]).is_file()
    assert stage.told["train/ddp"].batch_job_id == train.batch_job_id  # the stage saw what was recorded
    batch = [p for p in (tmp_path / "dispatch" / "parsl").rglob("parsl.*.block-0*")
             if p.is_file() and not p.name.endswith((".stdout", ".stderr"))]
    assert any("#SBATCH --partition=debug" in p.read_text() for p in batch), batch
