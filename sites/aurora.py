"""ALCF Aurora: PBS Pro + mpiexec, 6 Intel GPU Max (12 tiles) and 104 cores (208 hardware threads) per node.

Placeholders (recipe ``site:`` keys): ``account`` (required: your ALCF project), ``queue`` (``prod``, or
``debug``/``debug-scaling`` for small tests), ``walltime``, ``nodes_per_block``,
``init_blocks``/``min_blocks``/``max_blocks``, ``worker_init`` (load the ``frameworks`` module and activate
the environment holding ``campaign``), ``filesystems`` (``-l filesystems=…``: every filesystem the job reads or
writes, e.g. ``home:flare``), ``scheduler_options`` (extra ``#PBS`` lines).

One single-node worker per GPU tile (``available_accelerators`` ``0.0 … 5.1`` sets ``ZE_AFFINITY_MASK``), each
bound to the 8 cores + 8 hyperthreads ALCF documents for 12 ranks per node (``cpu_affinity="list:…"``). The
pool of each node is started by ``mpiexec --ppn 1 --cpu-bind …``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, MPIExecutor
from parsl.executors.base import ParslExecutor
from parsl.launchers import MpiExecLauncher, SimpleLauncher
from parsl.providers import PBSProProvider

from sites.assemble import assemble_config
from sites.facts import get_site
from sites.network import resolve_address


def aurora_config(
    *,
    account: str,
    queue: str | None = None,
    walltime: str = "01:00:00",
    nodes_per_block: int = 1,
    init_blocks: int = 0,
    min_blocks: int = 0,
    max_blocks: int = 1,
    worker_init: str | None = None,
    filesystems: str = "home:flare",
    scheduler_options: str = "",
    select_options: str = "",
    interface: str | None = None,
    address: str | None = None,
    mpi: bool = True,
    mpi_nodes_per_block: int | None = None,
    mpi_max_blocks: int = 1,
    mpi_tasks_per_block: int = 1,
    mpi_walltime: str | None = None,
    heartbeat_period: int = 30,
    heartbeat_threshold: int = 120,
    run_dir: str = "runinfo",
    retries: int = 0,
    retry_handler: Callable[[Exception, Any], float] | None = None,
    monitoring: bool = False,
) -> Config:
    """Aurora's ``Config``: ``htex`` (one worker per tile) and ``mpi`` (multi-node apps via mpiexec).

    Args:
        account: ALCF project charged (``qsub -A``).
        queue: PBS queue (default ``prod``).
        walltime: Walltime of one block, ``HH:MM:SS``.
        nodes_per_block: Nodes per batch job of the single-node executor.
        init_blocks: Blocks submitted at start.
        min_blocks: Blocks kept while idle.
        max_blocks: Upper bound of concurrent blocks.
        worker_init: Environment activation (default: the site's documented one).
        filesystems: ``#PBS -l filesystems=`` value.
        scheduler_options: Extra ``#PBS`` lines.
        select_options: Appended to ``-l select=N:ncpus=208`` (e.g. ``ngpus=6``).
        interface: Network interface of the interchange (default ``hsn0``).
        address: Explicit interchange address (wins over ``interface``).
        mpi: Add the ``mpi`` executor for multi-node apps.
        mpi_nodes_per_block: Nodes per MPI batch job (default ``nodes_per_block``).
        mpi_max_blocks: Concurrent MPI batch jobs.
        mpi_tasks_per_block: MPI apps run at once inside one MPI block.
        mpi_walltime: Walltime of an MPI block (default ``walltime``).
        heartbeat_period: Seconds between heartbeats.
        heartbeat_threshold: Seconds without heartbeat before a node counts as lost.
        run_dir: Parsl's run directory.
        retries: Retry budget per task.
        retry_handler: Parsl retry handler, installed by the dispatcher.
        monitoring: Parsl monitoring (off by default: ~10x slower).
    """
    facts = get_site("aurora")
    addr = resolve_address("aurora", interface or facts.interface, address)
    init = facts.default_worker_init if worker_init is None else worker_init
    options = "\n".join([f"#PBS -l filesystems={filesystems}", *([scheduler_options] if scheduler_options else [])])

    def provider(nodes: int, launcher: Any, init_b: int, lo: int, hi: int, wall: str) -> PBSProProvider:
        return PBSProProvider(
            account=account,
            queue=queue or facts.default_partition,
            scheduler_options=options,
            select_options=select_options,
            worker_init=init,
            nodes_per_block=nodes,
            cpus_per_node=facts.cores_per_node,
            init_blocks=init_b,
            min_blocks=lo,
            max_blocks=hi,
            walltime=wall,
            launcher=launcher,
        )

    executors: list[ParslExecutor] = [
        HighThroughputExecutor(
            label="htex",
            address=addr,
            available_accelerators=list(facts.accelerators),
            max_workers_per_node=facts.gpus_per_node,
            cpu_affinity=facts.cpu_affinity,
            prefetch_capacity=0,
            heartbeat_period=heartbeat_period,
            heartbeat_threshold=heartbeat_threshold,
            provider=provider(
                nodes_per_block,
                MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--ppn 1"),
                init_blocks, min_blocks, max_blocks, walltime,
            ),
        )
    ]
    if mpi:
        executors.append(
            MPIExecutor(
                label="mpi",
                address=addr,
                mpi_launcher="mpiexec",
                max_workers_per_block=mpi_tasks_per_block,
                heartbeat_period=heartbeat_period,
                heartbeat_threshold=heartbeat_threshold,
                provider=provider(
                    mpi_nodes_per_block or nodes_per_block, SimpleLauncher(), 0, 0, mpi_max_blocks,
                    mpi_walltime or walltime,
                ),
            )
        )
    return assemble_config(
        executors, run_dir=run_dir, retries=retries, retry_handler=retry_handler, monitoring=monitoring
    )
