"""NERSC Perlmutter GPU nodes: Slurm ``-C gpu`` + srun, 4 A100 and 64 cores per node, Slingshot ``hsn0``.

Placeholders (recipe ``site:`` keys): ``account`` (required: your NERSC project, e.g. ``m1234``; GPU hours
are charged to it), ``qos`` (``regular``, ``debug``, ``preempt`` …; Perlmutter routes jobs by QOS, not by
partition), ``walltime``, ``nodes_per_block``, ``init_blocks``/``min_blocks``/``max_blocks``, ``worker_init``
(load the PyTorch module and activate the environment holding ``campaign``), ``scheduler_options``.

One single-node worker per GPU (``CUDA_VISIBLE_DEVICES`` 0-3), 16 cores each.
"""

from __future__ import annotations

from typing import Any

from parsl.config import Config

from sites.facts import get_site
from sites.slurm import slurm_config


def perlmutter_config(
    *,
    account: str,
    qos: str = "regular",
    constraint: str = "gpu",
    walltime: str = "01:00:00",
    nodes_per_block: int = 1,
    worker_init: str | None = None,
    partition: str | None = None,
    **slurm_options: Any,
) -> Config:
    """Perlmutter's ``Config``.

    Args:
        account: NERSC project charged (``#SBATCH --account``).
        qos: Slurm QOS (``regular``, ``debug``, ``preempt``).
        constraint: Node type (``gpu``; ``gpu&hbm80g`` for the 80 GB A100 nodes).
        walltime: Walltime of one block.
        nodes_per_block: Nodes per batch job.
        worker_init: Environment activation (default: the site's documented one).
        partition: Normally unset on Perlmutter.
        **slurm_options: Any other keyword of :func:`sites.slurm.slurm_config`.
    """
    facts = get_site("perlmutter")
    return slurm_config(
        site="perlmutter",
        account=account,
        partition=partition,
        qos=qos,
        constraint=constraint,
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
