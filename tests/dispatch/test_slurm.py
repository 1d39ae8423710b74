"""End to end on a real one-node Slurm (``.ci/slurm.sh start``): the same factory Frontier/Perlmutter use.

Parsl submits the MPI executor's block through ``sbatch``; its worker pool starts inside the allocation; a
2-rank app runs through ``srun`` (``$PARSL_MPI_PREFIX``); the TaskResult carries the Slurm job id and host.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from campaign.dispatch import make_dispatcher
from campaign.tasks import ExitCause, TaskResult

pytestmark = pytest.mark.slurm


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.mark.timeout(240)
def test_two_rank_app_through_sbatch_and_srun(tmp_path: Path, make_spec) -> None:  # type: ignore[no-untyped-def]
    if not _slurm_up():
        pytest.skip("no running Slurm (run .ci/slurm.sh start)")
    params = {
        "partition": "debug",
        "walltime": "00:05:00",
        "address": "127.0.0.1",
        "max_blocks": 0,  # no single-node block: this test holds the only node for the MPI block
        "heartbeat_period": 2,
        "heartbeat_threshold": 10,
        "retries": 0,
    }
    attempts: list[TaskResult] = []
    spec = make_spec(app="campaign.apps.ranks", resources={"nodes": 1, "ranks_per_node": 2})
    with make_dispatcher("slurm", params, tmp_path, on_attempt=attempts.append) as d:
        res = d.submit(spec).result(timeout=200)
    assert res.exit_cause is ExitCause.OK, res.error
    assert res.executor == "parsl:mpi"
    assert res.result["ntasks"] == 2
    assert sorted(r["rank"] for r in res.result["ranks"]) == [0, 1]
    assert {r["launcher"] for r in res.result["ranks"]} == {"slurm"}
    assert res.batch_job_id and res.batch_job_id == res.result["job_id"]
    assert res.host == socket.gethostname()
    scripts = list((tmp_path / "parsl").rglob("parsl.mpi.block-0*"))
    batch = [p for p in scripts if p.is_file() and not p.name.endswith((".stdout", ".stderr"))]
    assert any("#SBATCH --partition=debug" in p.read_text() for p in batch)
    assert not attempts
