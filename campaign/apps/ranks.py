"""A multi-rank app that proves the parallel launch path: every rank reports its rank, size, host and job.

Each rank writes ``rank<R>.json`` into the workdir; rank 0 waits for all of them (``timeout_s``, default 60)
and returns ``{"ntasks", "ranks": [{"rank", "size", "host", "job_id", "launcher"} …], "job_id", "hosts"}``.
Rank, size and launcher are parsed by :mod:`models.launch`, the one parser of launch environments.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from models.appio import RunFailed, main_for, write_json_atomic
from models.launch import detect


def rank_and_size(environ: dict[str, str] | None = None) -> tuple[int, int, str]:
    """(rank, size, launcher) of this process, as the training app reads them (:func:`models.launch.detect`):
    ``launcher`` is ``torchrun``, ``mpi``, ``slurm`` or ``single``."""
    env = detect(os.environ if environ is None else environ)
    return env.rank, env.world_size, env.launcher


def run(config: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """Record this rank; on rank 0 gather every rank's record.

    Raises:
        RunFailed: when some rank did not report within ``timeout_s``.
    """
    workdir = config_path.parent
    rank, size, launcher = rank_and_size()
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
    me = {"rank": rank, "size": size, "host": socket.gethostname(), "job_id": job_id, "launcher": launcher}
    write_json_atomic(workdir / f"rank{rank}.json", me)
    if rank != 0:
        return me
    deadline = time.monotonic() + float(config.get("timeout_s", 60))
    paths = [workdir / f"rank{r}.json" for r in range(size)]
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [r for r, p in enumerate(paths) if not p.exists()]
            raise RunFailed(f"ranks {missing} did not report", reason="missing_ranks")
        time.sleep(0.05)
    ranks = [json.loads(p.read_text()) for p in paths]
    return {
        "ntasks": size,
        "ranks": ranks,
        "job_id": job_id,
        "hosts": sorted({r["host"] for r in ranks}),
    }


if __name__ == "__main__":
    main_for(run, "campaign rank-report app (multi-rank launch check)")
