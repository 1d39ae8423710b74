"""Facts about the machines the campaign runs on, importable without Parsl.

Recipe validation on a login node must be instant, so this module uses the standard library only. The Parsl
``Config`` factories live in :mod:`sites.configs` (which imports Parsl) and read their defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Scheduler = Literal["slurm", "pbspro", "local", "globus"]
Launcher = Literal["srun", "mpiexec", "local"]
SiteKind = Literal["parsl", "local", "globus"]

#: CPU binding ALCF documents for 12 ranks per Aurora node (one per GPU tile), physical cores plus their
#: hyperthreads (+104); cores 0 and 52 are left to the OS. Same string as Parsl's Aurora configuration.
AURORA_CPU_AFFINITY = (
    "list:1-8,105-112:9-16,113-120:17-24,121-128:25-32,129-136:33-40,137-144:41-48,145-152"
    ":53-60,157-164:61-68,165-172:69-76,173-180:77-84,181-188:85-92,189-196:93-100,197-204"
)

#: Aurora's 12 GPU tiles, named as ``ZE_AFFINITY_MASK`` expects (``<gpu>.<tile>``).
AURORA_TILES: tuple[str, ...] = tuple(f"{gpu}.{tile}" for gpu in range(6) for tile in range(2))


@dataclass(frozen=True)
class SiteFacts:
    """What the campaign knows about one site without asking it.

    Attributes:
        name: Site name used in recipes (``site: {name: frontier}``).
        kind: ``parsl`` (a Parsl ``Config`` from :mod:`sites.configs`), ``local`` (a process pool or Parsl on
            loopback) or ``globus`` (a Globus Compute endpoint).
        description: One line for ``campaign sites list``.
        scheduler: Batch scheduler: slurm, pbspro, local (none) or globus (the endpoint's own).
        launcher: Parallel launcher of multi-node apps: srun, mpiexec or local (torchrun on one node).
        gpus_per_node: Accelerators a node exposes to workers (GCDs on Frontier, tiles on Aurora).
        accelerators: Names of those accelerators as the binding variable expects them.
        cores_per_node: Physical cores per node usable by workers.
        cores_per_worker: Cores given to each single-node worker.
        cpu_affinity: Parsl ``cpu_affinity`` for the single-node workers.
        interface: Network interface the workers reach the interchange on (``None``: loopback).
        default_worker_init: Shell run before workers start (activate the environment).
        default_partition: Partition (Slurm) or queue (PBS) used when the recipe names none.
        required: Parameters a recipe must give for this site (e.g. ``account``).
        max_walltime: Longest walltime the default partition/queue allows, ``HH:MM:SS``.
        scheduler_options: Extra scheduler lines every batch script of this site carries.
        shared_filesystem: Whether the workers see the steering process's files (the campaign's workdir): true on
            the local machine and on a batch site run from its login node, false behind a Globus Compute
            endpoint. Features that watch a running task's files (early stopping of HPO trials through their
            metrics and stop files, the workers' lease-file fence) need it.
    """

    name: str
    kind: SiteKind
    description: str
    scheduler: Scheduler
    launcher: Launcher
    gpus_per_node: int = 0
    accelerators: tuple[str, ...] = ()
    cores_per_node: int = 1
    cores_per_worker: float = 1.0
    cpu_affinity: str = "none"
    interface: str | None = None
    default_worker_init: str = ""
    default_partition: str | None = None
    required: tuple[str, ...] = ()
    max_walltime: str | None = None
    scheduler_options: tuple[str, ...] = field(default_factory=tuple)
    shared_filesystem: bool = True

    def node_share(self, nodes: int, cpus: int, gpus: int) -> float:
        """Nodes an attempt held, for node-hour accounting: a multi-node attempt holds its nodes; one on a single
        node holds the larger of its share of the node's accelerators and of its cores (eight one-GPU trials
        packed on a Frontier node hold 1/8 of it each), at most the whole node. A site whose node size is not
        known (the local machine: ``cores_per_node`` 0) counts whole nodes."""
        if nodes != 1:
            return float(max(nodes, 0))
        shares = [gpus / self.gpus_per_node] if self.gpus_per_node else []
        if self.cores_per_node:
            shares.append(cpus / self.cores_per_node)
        return min(1.0, max(shares)) if shares and max(shares) > 0 else 1.0

    @property
    def workers_per_node(self) -> int:
        """Single-node workers per node: one per accelerator, else one per ``cores_per_worker`` cores."""
        if self.gpus_per_node:
            return self.gpus_per_node
        return max(1, int(self.cores_per_node // self.cores_per_worker))


_SITES: dict[str, SiteFacts] = {
    "local": SiteFacts(
        name="local",
        kind="local",
        description="This machine: Parsl HighThroughputExecutor on 127.0.0.1 (or a process pool)",
        scheduler="local",
        launcher="local",
        cores_per_node=0,  # 0: os.cpu_count() at config time
    ),
    "threads": SiteFacts(
        name="threads",
        kind="local",
        description="This machine: Parsl ThreadPoolExecutor (fast start, for tests)",
        scheduler="local",
        launcher="local",
        cores_per_node=0,
    ),
    "slurm": SiteFacts(
        name="slurm",
        kind="parsl",
        description="Any Slurm cluster (the same factory as Frontier/Perlmutter), e.g. the three-node CI cluster",
        scheduler="slurm",
        launcher="srun",
        cores_per_node=0,
        default_partition="debug",
    ),
    "frontier": SiteFacts(
        name="frontier",
        kind="parsl",
        description="OLCF Frontier: Slurm, 4 MI250X = 8 GCDs per node, 56 usable cores, srun",
        scheduler="slurm",
        launcher="srun",
        gpus_per_node=8,
        accelerators=tuple(str(i) for i in range(8)),
        cores_per_node=56,
        cores_per_worker=7,
        cpu_affinity="block",
        interface="hsn0",
        default_worker_init="module load PrgEnv-gnu rocm; source activate campaign",
        default_partition="batch",
        required=("account",),
        max_walltime="24:00:00",
    ),
    "perlmutter": SiteFacts(
        name="perlmutter",
        kind="parsl",
        description="NERSC Perlmutter GPU: Slurm (-C gpu), 4 A100 per node, 64 cores, srun",
        scheduler="slurm",
        launcher="srun",
        gpus_per_node=4,
        accelerators=tuple(str(i) for i in range(4)),
        cores_per_node=64,
        cores_per_worker=16,
        cpu_affinity="block",
        interface="hsn0",
        default_worker_init="module load pytorch; source activate campaign",
        default_partition=None,  # Perlmutter routes by qos, not partition
        required=("account",),
        max_walltime="48:00:00",
    ),
    "aurora": SiteFacts(
        name="aurora",
        kind="parsl",
        description="ALCF Aurora: PBS Pro, 6 PVC = 12 tiles per node, mpiexec",
        scheduler="pbspro",
        launcher="mpiexec",
        gpus_per_node=12,
        accelerators=AURORA_TILES,
        cores_per_node=208,
        cores_per_worker=16,
        cpu_affinity=AURORA_CPU_AFFINITY,
        interface="hsn0",
        default_worker_init="module load frameworks; source activate campaign",
        default_partition="prod",
        required=("account",),
        max_walltime="24:00:00",
        scheduler_options=("#PBS -l filesystems=home:flare",),
    ),
    "globus": SiteFacts(
        name="globus",
        kind="globus",
        shared_filesystem=False,
        description="Any Globus Compute endpoint (endpoint_id): tasks cross the cloud service",
        scheduler="globus",
        launcher="local",
        required=("endpoint_id",),
    ),
}


def list_sites() -> list[SiteFacts]:
    """All known sites, in a stable order (for ``campaign sites list``)."""
    return list(_SITES.values())


def site_names() -> list[str]:
    """Names a recipe may use in ``site.name``."""
    return list(_SITES)


def node_share(site: str, nodes: int, cpus: int, gpus: int) -> float:
    """:meth:`SiteFacts.node_share` of ``site``; whole nodes for a site this version does not know."""
    facts = _SITES.get(site)
    return facts.node_share(nodes, cpus, gpus) if facts is not None else float(max(nodes, 1))


def get_site(name: str) -> SiteFacts:
    """Facts for ``name``.

    Raises:
        KeyError: naming the unknown site and the known ones.
    """
    try:
        return _SITES[name]
    except KeyError:
        raise KeyError(f"unknown site {name!r}; known sites: {', '.join(_SITES)}") from None
