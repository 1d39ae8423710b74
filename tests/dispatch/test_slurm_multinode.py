"""Multi-node runs on the CI's Slurm cluster (``.ci/slurm.sh start``: three nodes, each a network namespace).

Through the steering loop, into the campaign database, with the factory Frontier and Perlmutter use:

* a training run on 2 nodes x 2 ranks through the site's MPI executor (``srun`` inside a 2-node ``sbatch``
  block), recorded with its batch job id and node list;
* a node lost mid-run (its slurmd and every process on it SIGKILLed, as when hardware dies): the attempt is
  recorded as ``node_lost``, retried without charge on the nodes left, and continues from its last checkpoint,
  both in a new block and in the same batch job requeued by Slurm;
* a batch job reaching its time limit: warned by Slurm (``--signal``), the app checkpoints even mid-epoch, the
  attempt is recorded ``walltime`` and the next block continues exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from campaign.dispatch import RetryPolicy, make_dispatcher
from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.base import PlannedTask, StageContext
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import TaskResult, TaskSpec, TaskState
from db import models as m
from db.engine import make_engine
from db.migrate import ensure_schema
from models import checkpoint
from models.training.metrics import read_metrics
from tests.conftest import REPO
from tests.dispatch.conftest import SlurmCluster
from tests.models.train.conftest import TINY_PAINN
from tests.models.train.emt_data import demo_root

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def train_config(data_root: Path, output_dir: Path, epochs: int) -> dict[str, Any]:
    """Tiny PaiNN on the two EMT datasets, fp64 on the CPU, no early stopping, resuming its own checkpoint."""
    return {"data_root": str(data_root), "datasets": ["metals", "molecules"], "batch_size": 2,
            "model": dict(TINY_PAINN), "epochs": epochs, "patience": 0, "precision": "fp64", "device": "cpu",
            "optimizer": {"lr": 0.005}, "output_dir": str(output_dir), "seed": 3, "threads": 1, "auto_resume": True}


class TrainStage:
    """One multi-node ``models.train`` run (tiny PaiNN on the two EMT datasets, fp64 on the CPU)."""

    name = "multinode"
    kind = "train"

    def __init__(self, workdir: Path, data_root: Path, *, nodes: int, ranks_per_node: int, epochs: int) -> None:
        self.workdir = workdir
        self.data_root = data_root
        self.nodes, self.ranks_per_node = nodes, ranks_per_node
        self.config = train_config(data_root, workdir / "train" / "out", epochs)
        self.told: dict[str, TaskResult] = {}

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        out = self.workdir / "train"
        spec = TaskSpec(
            kind="train", app="models.train", workdir=str(out), config=self.config,
            resources={"nodes": self.nodes, "ranks_per_node": self.ranks_per_node, "walltime_s": 400},
            env={"OMP_NUM_THREADS": "1"},
        )
        return [PlannedTask("train", spec)]

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        self.told[task.key] = result
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        raise AssertionError(f"{task.key} failed: {result.error if result else ''}")

    def poll(self, ctx: StageContext, running: list[Any]) -> list[PlannedTask]:
        return []

    def finish(self, ctx: StageContext) -> str:
        return "done"


def _run(tmp_path: Path, cluster: SlurmCluster, stage: TrainStage, *, mpi_nodes: int,
         policy: RetryPolicy | None = None, **site: Any) -> tuple[Ledger, int]:
    """Run ``stage`` through a Slurm dispatcher whose MPI blocks hold ``mpi_nodes`` nodes (``site``: more of the
    site's parameters); by default no retry is charged (only a free one lets a failed attempt run again)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'campaign.db'}")
    ensure_schema(engine)
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="multinode", recipe_text="campaign: multinode", recipe_hash="m" * 64,
                               site="slurm").id
    sid = ledger.stage(cid, stage.name, stage.kind).id
    ctx = StageContext(recipe=parse_recipe("campaign: multinode\n"), ledger=ledger, campaign_id=cid,
                       stage_id=sid, workdir=tmp_path, site="slurm")
    params = {
        "partition": "debug",
        "walltime": "00:10:00",
        "address": cluster.address,  # the bridge: compute nodes cannot reach this host's 127.0.0.1
        "max_blocks": 0,  # no single-node block: the MPI block needs the nodes
        "mpi_nodes_per_block": mpi_nodes,
        "heartbeat_period": 2,
        "heartbeat_threshold": 12,
        "retries": 0,
        **site,
    }
    dispatcher = make_dispatcher("slurm", params, tmp_path / "dispatch")
    try:
        tasks = TaskQueue(ledger, cid, site="slurm", executor=dispatcher.name,
                          policy=policy or RetryPolicy(max_retries=0))
        assert Steerer(tasks, dispatcher, max_in_flight=2).run_stage(stage, ctx) == "done"
    finally:
        dispatcher.shutdown(wait=False)
    return ledger, cid


def _attempts(ledger: Ledger, cid: int) -> tuple[Any, list[Any]]:
    with ledger.Session() as s:
        task = s.scalars(select(m.Task).where(m.Task.campaign_id == cid)).one()
        return task, list(task.attempts)


def _epochs(history: list[dict[str, Any]]) -> list[int]:
    """The epochs of a training result's history, each once; fails when a figure was recorded twice."""
    keys = [(h["epoch"], h["name"], h["split"], h["head"]) for h in history]
    assert len(keys) == len(set(keys)), "a figure was recorded twice"
    return sorted({h["epoch"] for h in history})


def _expand(node_list: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", node_list], capture_output=True, text=True, check=True,
                         timeout=30)
    return out.stdout.split()


@pytest.mark.timeout(420)
def test_training_on_two_nodes_by_two_ranks(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    data_root = demo_root(tmp_path / "stores", n_train=8, n_val=4, n_test=4)
    stage = TrainStage(tmp_path / "tasks", data_root, nodes=2, ranks_per_node=2, epochs=2)
    ledger, cid = _run(tmp_path, slurm_cluster, stage, mpi_nodes=2)

    task, attempts = _attempts(ledger, cid)
    assert task.state == TaskState.DONE and len(attempts) == 1, [(a.exit_cause, a.error) for a in attempts]
    att = attempts[0]
    assert att.exit_cause == m.ExitCause.OK and att.executor == "parsl:mpi"
    assert att.nodes == 2 and att.ranks == 4
    assert att.batch_job_id and att.batch_job_id.isdigit()
    nodes = _expand(att.node_list)
    assert len(set(nodes)) == 2 and set(nodes) <= set(slurm_cluster.nodes), att.node_list
    assert att.host == nodes[0]  # the worker that launched srun ran on the block's first node
    res = task.result
    assert res["status"] == "ok" and res["world_size"] == 4 and res["completed"], res
    assert _epochs(res["history"]) == [0, 1]
    assert stage.told["train"].batch_job_id == att.batch_job_id and stage.told["train"].node_list == att.node_list
    err = Path(att.stderr_path).read_text()
    assert "error" not in err.lower(), err[-2000:]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("requeue", [False, True], ids=["new-block", "requeued-job"])
def test_lost_node_is_retried_free_and_resumes_from_its_checkpoint(
    tmp_path: Path, slurm_cluster: SlurmCluster, requeue: bool
) -> None:
    """Kill the second node of a running 2-node training attempt once it has written a checkpoint.

    ``new-block``: the block's job is not requeued (``--no-requeue``); it ends NODE_FAIL and Parsl starts a new
    block (one failed block must not fail the executor). ``requeued-job``: Slurm requeues the job on the nodes
    left (its default for a node failure, as for a preempted job), and the same block comes back under the same
    job id.
    """
    data_root = demo_root(tmp_path / "stores", n_train=16, n_val=4, n_test=4)
    epochs = 12
    stage = TrainStage(tmp_path / "tasks", data_root, nodes=2, ranks_per_node=1, epochs=epochs)
    last = tmp_path / "tasks" / "train" / "out" / "checkpoints" / "last.pt"
    lost: list[tuple[str, str]] = []  # (batch job id, node)
    stop = threading.Event()

    def lose_a_node() -> None:  # once the first attempt has checkpointed, lose the second node of its job
        while not stop.is_set() and not last.exists():
            time.sleep(0.2)
        if stop.is_set():
            return
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %N"], capture_output=True, text=True, timeout=30)
        job, nodes = out.stdout.split()
        victim = _expand(nodes)[1]
        slurm_cluster.kill_node(victim)
        lost.append((job, victim))

    killer = threading.Thread(target=lose_a_node, daemon=True)
    killer.start()
    try:
        ledger, cid = _run(tmp_path, slurm_cluster, stage, mpi_nodes=2,
                           scheduler_options="" if requeue else "#SBATCH --no-requeue")
    finally:
        stop.set()
        killer.join(timeout=60)
        for _, name in lost:
            slurm_cluster.revive_node(name)
    assert lost, "no node was lost: the run ended before its first checkpoint"
    (job, victim), = lost

    task, attempts = _attempts(ledger, cid)
    causes = [a.exit_cause for a in attempts]
    assert task.state == TaskState.DONE, [(a.exit_cause, (a.error or "")[-800:]) for a in attempts]
    assert causes == [m.ExitCause.NODE_LOST, m.ExitCause.OK], causes
    assert task.charged_failures == 0  # a lost node costs nothing
    first, final = attempts
    assert first.batch_job_id in (None, job)  # a worker lost with its node cannot report its job
    assert victim not in _expand(final.node_list), final.node_list  # retried on the nodes left
    assert (final.batch_job_id == job) is requeue, (final.batch_job_id, job)
    res = task.result
    assert res["completed"] and res["resumed_from_epoch"] is not None and res["resumed_from_epoch"] >= 1, res
    assert _epochs(res["history"]) == list(range(epochs))  # no epoch lost, none recorded twice


@pytest.mark.timeout(600)
def test_a_block_at_its_time_limit_checkpoints_on_the_warning_and_the_next_block_continues_exactly(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """MPI blocks of one minute, warned 30 s before their limit (``--signal=USR1@30``): each attempt checkpoints on
    the warning, mid-epoch or not, is recorded ``walltime`` and continues in the next block, and the run ends with
    the weights and figures of the same run done in one go (``torchrun`` on this host, bitwise in fp64)."""
    data_root = demo_root(tmp_path / "stores", n_train=16, n_val=4, n_test=4)
    epochs = 300  # ~45 s of training on 2 ranks here: more than a block holds after start-up (~20 s)
    stage = TrainStage(tmp_path / "tasks", data_root, nodes=1, ranks_per_node=2, epochs=epochs)
    ledger, cid = _run(tmp_path, slurm_cluster, stage, mpi_nodes=1, mpi_walltime="00:01:00", mpi_signal_s=30,
                       policy=RetryPolicy(max_retries=0, max_free_retries=10))

    task, attempts = _attempts(ledger, cid)
    causes = [a.exit_cause for a in attempts]
    assert task.state == TaskState.DONE, [(a.exit_cause, (a.error or "")[-800:]) for a in attempts]
    assert len(attempts) >= 2 and causes[-1] == m.ExitCause.OK, causes
    assert causes[0] == m.ExitCause.WALLTIME, [(a.exit_cause, (a.error or "")[-400:]) for a in attempts]
    assert "preempted: the app checkpointed at step" in (attempts[0].error or "")
    # a retry may start in the warned block's last seconds: the time limit then ends it (SIGTERM: checkpoint, or
    # the block's pool lost with it), free as well
    assert set(causes[:-1]) <= {m.ExitCause.WALLTIME, m.ExitCause.NODE_LOST}, causes
    assert task.charged_failures == 0
    assert attempts[0].batch_job_id and attempts[-1].batch_job_id
    res = task.result
    assert res["completed"] and res["resumed_from_epoch"] is not None
    assert _epochs(res["history"]) == list(range(epochs))

    reference = _torchrun(train_config(data_root, tmp_path / "reference", epochs), ranks=2, out=tmp_path)
    ours = checkpoint.load(res["checkpoints"]["last"]["path"])["model_state"]
    straight = checkpoint.load(reference["checkpoints"]["last"]["path"])["model_state"]
    for name, value in straight.items():
        assert torch.equal(value, ours[name]), name
    assert res["steps"] == reference["steps"] and res["objective"] == reference["objective"]
    assert read_metrics(res["metrics_path"]) == read_metrics(reference["metrics_path"])


def _torchrun(cfg: dict[str, Any], *, ranks: int, out: Path) -> dict[str, Any]:
    """``models.train`` with ``cfg`` on ``ranks`` CPU ranks under ``torchrun`` on this host; its result."""
    (out / "reference.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m",
           "models.train", "--config", str(out / "reference.json"), "--result", str(out / "reference.result.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "reference.result.json").read_text())
    return result
