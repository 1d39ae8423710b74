"""OLCF Frontier: Slurm + srun, 4 MI250X (8 GCDs) and 56 usable cores per node, Slingshot ``hsn0``.

Placeholders (recipe ``site:`` keys): ``account`` (required: your OLCF project, e.g. ``ABC123``),
``partition`` (``batch``; ``extended`` for long small jobs), ``qos`` (``debug`` for the debug queue),
``walltime`` (``HH:MM:SS``, at most 24 h in ``batch`` on large jobs — see OLCF's scheduling policy),
``nodes_per_block``, ``init_blocks``/``min_blocks``/``max_blocks``, ``worker_init`` (load ROCm and
activate the environment holding ``campaign``; its ``bin/`` must be on ``PATH``), ``scheduler_options``.

One single-node worker per GCD (``available_accelerators`` 0-7 sets ``ROCR_VISIBLE_DEVICES``), 7 cores each
(``cpu_affinity="block"``); the pool of each node is started by ``srun`` with the whole node's cores and GPUs.
"""

from __future__ import annotations

from typing import Any

from parsl.config import Config

from sites.facts import get_site
from sites.slurm import slurm_config


def frontier_config(
    *,
    account: str,
    partition: str | None = None,
    qos: str | None = None,
    walltime: str = "01:00:00",
    nodes_per_block: int = 1,
    worker_init: str | None = None,
    **slurm_options: Any,
) -> Config:
    """Frontier's ``Config``.

    Args:
        account: OLCF project charged (``#SBATCH --account``).
        partition: Slurm partition (default ``batch``).
        qos: Slurm QOS (e.g. ``debug``), optional.
        walltime: Walltime of one block.
        nodes_per_block: Nodes per batch job.
        worker_init: Environment activation (default: the site's documented one).
        **slurm_options: Any other keyword of :func:`sites.slurm.slurm_config` (blocks, MPI executor,
            ``address``, ``scheduler_options`` …).
    """
    facts = get_site("frontier")
    return slurm_config(
        site="frontier",
        account=account,
        partition=partition or facts.default_partition,
        qos=qos,
        walltime=walltime,
        nodes_per_block=nodes_per_block,
        worker_init=facts.default_worker_init if worker_init is None else worker_init,
        gpus_per_node=facts.gpus_per_node,
        accelerators=facts.accelerators,
        cores_per_worker=facts.cores_per_worker,
        cpu_affinity=facts.cpu_affinity,
        srun_overrides=f"--cpus-per-task={facts.cores_per_node} --gpus-per-node={facts.gpus_per_node}",
        interface=slurm_options.pop("interface", facts.interface),
        **slurm_options,
    )
