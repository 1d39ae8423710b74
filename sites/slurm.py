"""Any Slurm cluster: the factory Frontier and Perlmutter specialise, and the one the CI cluster uses.

Two executors share one ``Config``:

* ``htex`` — a HighThroughputExecutor for single-node tasks (preprocessing shards, small trials, screening
  shards): one worker pool per node started by ``srun``, one worker per accelerator, bound through
  ``available_accelerators`` (Parsl sets ``CUDA_VISIBLE_DEVICES``/``ROCR_VISIBLE_DEVICES``/
  ``ZE_AFFINITY_MASK`` per worker).
* ``mpi`` — Parsl's MPIExecutor (HTEX in ``enable_mpi_mode``) for multi-node apps: one pool on the first node
  of a block, each task launched with ``$PARSL_MPI_PREFIX`` (``srun --ntasks … --nodelist …``) on the nodes
  the pool hands it. Its blocks start only when an MPI task arrives (``init_blocks=0``).

Placeholders, all keyword arguments a recipe's ``site:`` section supplies: ``partition``, ``account``, ``qos``,
``constraint``, ``walltime``, ``nodes_per_block``, ``init_blocks``/``min_blocks``/``max_blocks``,
``worker_init`` (the shell that activates the campaign's environment on a compute node: it must put the
environment's ``bin/`` on ``PATH``), ``scheduler_options`` (extra ``#SBATCH`` lines), and for the MPI executor
``mpi_nodes_per_block``/``mpi_max_blocks``/``mpi_tasks_per_block``/``mpi_walltime``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, MPIExecutor
from parsl.executors.base import ParslExecutor
from parsl.launchers import SimpleLauncher, SrunLauncher
from parsl.providers import SlurmProvider

from sites.assemble import assemble_config
from sites.network import resolve_address


def slurm_config(
    *,
    site: str = "slurm",
    partition: str | None = "debug",
    account: str | None = None,
    qos: str | None = None,
    constraint: str | None = None,
    walltime: str = "01:00:00",
    nodes_per_block: int = 1,
    init_blocks: int = 0,
    min_blocks: int = 0,
    max_blocks: int = 1,
    worker_init: str = "",
    scheduler_options: str = "",
    exclusive: bool = True,
    gpus_per_node: int = 0,
    accelerators: Sequence[str] = (),
    cores_per_node: int | None = None,
    cores_per_worker: float = 1.0,
    max_workers_per_node: int | None = None,
    cpu_affinity: str = "none",
    srun_overrides: str = "",
    interface: str | None = None,
    address: str | None = None,
    mpi: bool = True,
    mpi_nodes_per_block: int | None = None,
    mpi_max_blocks: int = 1,
    mpi_tasks_per_block: int = 1,
    mpi_walltime: str | None = None,
    mpi_signal_s: int = 120,
    heartbeat_period: int = 30,
    heartbeat_threshold: int = 120,
    cmd_timeout: int = 60,
    run_dir: str = "runinfo",
    retries: int = 0,
    retry_handler: Callable[[Exception, Any], float] | None = None,
    monitoring: bool = False,
) -> Config:
    """A Slurm site: ``htex`` (single-node tasks) and, with ``mpi=True``, ``mpi`` (multi-node apps).

    Args:
        site: Site name (labels and error messages).
        partition: ``#SBATCH --partition``; ``None`` leaves it to the cluster's default.
        account: ``#SBATCH --account`` (the allocation charged).
        qos: ``#SBATCH --qos``.
        constraint: ``#SBATCH --constraint`` (``gpu`` on Perlmutter).
        walltime: Walltime of one block, ``HH:MM:SS``.
        nodes_per_block: Nodes per batch job of the single-node executor.
        init_blocks: Blocks submitted at start.
        min_blocks: Blocks kept while idle.
        max_blocks: Upper bound of concurrent blocks.
        worker_init: Shell run in the batch script before the workers start (activate the environment).
        scheduler_options: Extra ``#SBATCH`` lines.
        exclusive: ``#SBATCH --exclusive`` (whole nodes).
        gpus_per_node: ``#SBATCH --gpus-per-node`` (0: not requested).
        accelerators: Accelerator ids, one worker each (``available_accelerators``).
        cores_per_node: Cores the provider requests per node (``--cpus-per-task``); ``None``: not set.
        cores_per_worker: Cores per single-node worker.
        max_workers_per_node: Cap on single-node workers per node.
        cpu_affinity: Parsl ``cpu_affinity`` of the workers (``none``, ``block``, ``alternating``, ``list:…``).
        srun_overrides: Extra ``srun`` options for the step that starts the worker pools.
        interface: Network interface workers reach the interchange on (``hsn0``); ``None``: Parsl probes.
        address: Explicit interchange address (wins over ``interface``).
        mpi: Add the ``mpi`` executor for multi-node apps.
        mpi_nodes_per_block: Nodes per batch job of the MPI executor (default ``nodes_per_block``).
        mpi_max_blocks: Concurrent batch jobs of the MPI executor.
        mpi_tasks_per_block: MPI apps run at once inside one MPI block.
        mpi_walltime: Walltime of an MPI block (default ``walltime``).
        mpi_signal_s: Seconds before an MPI block's time limit at which Slurm sends SIGUSR1 to its job steps
            (``#SBATCH --signal=USR1@N``): the apps ``srun`` launched checkpoint at their next step and stop, and
            the attempt is recorded ``walltime`` and continues in the next block. SIGUSR1, not SIGTERM:
            slurmstepd treats a SIGTERM to a step as its cancellation (SIGKILL after ``KillWait``). Slurm may
            send it up to 60 s earlier than asked. 0: no signal. Not set on the ``htex`` blocks, whose worker
            pools are job steps themselves.
        heartbeat_period: Seconds between heartbeats.
        heartbeat_threshold: Seconds without heartbeat before a node counts as lost.
        cmd_timeout: Seconds allowed for ``sbatch``/``squeue``/``scancel``.
        run_dir: Parsl's run directory (logs and submit scripts).
        retries: Retry budget per task.
        retry_handler: Parsl retry handler, installed by the dispatcher.
        monitoring: Parsl monitoring (off by default: ~10x slower).
    """
    addr = resolve_address(site, interface, address)

    def provider(nodes: int, launcher: Any, init: int, lo: int, hi: int, wall: str,
                 options: str = scheduler_options) -> SlurmProvider:
        return SlurmProvider(
            partition=partition,
            account=account,
            qos=qos,
            constraint=constraint,
            nodes_per_block=nodes,
            cores_per_node=cores_per_node,
            gpus_per_node=gpus_per_node or None,
            init_blocks=init,
            min_blocks=lo,
            max_blocks=hi,
            walltime=wall,
            scheduler_options=options,
            worker_init=worker_init,
            exclusive=exclusive,
            cmd_timeout=cmd_timeout,
            launcher=launcher,
        )

    executors: list[ParslExecutor] = [
        HighThroughputExecutor(
            label="htex",
            address=addr,
            available_accelerators=list(accelerators),
            cores_per_worker=cores_per_worker,
            max_workers_per_node=max_workers_per_node,
            cpu_affinity=cpu_affinity,
            prefetch_capacity=0,
            heartbeat_period=heartbeat_period,
            heartbeat_threshold=heartbeat_threshold,
            provider=provider(
                nodes_per_block, SrunLauncher(overrides=srun_overrides), init_blocks, min_blocks, max_blocks,
                walltime,
            ),
        )
    ]
    if mpi:
        executors.append(
            MPIExecutor(
                label="mpi",
                address=addr,
                mpi_launcher="srun",
                max_workers_per_block=mpi_tasks_per_block,
                heartbeat_period=heartbeat_period,
                heartbeat_threshold=heartbeat_threshold,
                provider=provider(
                    mpi_nodes_per_block or nodes_per_block, SimpleLauncher(), 0, 0, mpi_max_blocks,
                    mpi_walltime or walltime,
                    "\n".join(filter(None, [scheduler_options,
                                            f"#SBATCH --signal=USR1@{mpi_signal_s}" if mpi_signal_s else ""])),
                ),
            )
        )
    return assemble_config(
        executors, run_dir=run_dir, retries=retries, retry_handler=retry_handler, monitoring=monitoring
    )
