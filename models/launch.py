"""The launch environment: the ONE place that parses rank / world size / local rank / master address, for the
training app (:mod:`models.distributed`), the apps' rank-0 checks and the rank-report app alike. Standard library
only, so that a light app reads its rank without importing torch.

Launchers supported (checked in this order, most specific first):

* ``torchrun``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``.
* Open MPI ``mpiexec``: ``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` / ``_LOCAL_RANK`` / ``_LOCAL_SIZE``.
* PALS (Cray/HPE ``mpiexec`` on Aurora, Polaris): ``PALS_RANKID``, ``PALS_LOCAL_RANKID``, ``PALS_LOCAL_SIZE``
  (the world size comes from ``PMI_SIZE``).
* MPICH / Cray PMI (``PMI_RANK``, ``PMI_SIZE``, ``PMI_LOCAL_RANK``/``MPI_LOCALRANKID``) and PMIx (``PMIX_RANK``
  with ``PMIX_SIZE`` or ``OMPI_UNIVERSE_SIZE``).
* Slurm ``srun``: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``/``SLURM_NTASKS``, ``SLURM_LOCALID``,
  ``SLURM_STEP_NODELIST``/``SLURM_JOB_NODELIST``/``SLURM_NODELIST`` (first host = master address, parsed here
  from the hostlist expression, no ``scontrol`` needed).

MPI variables win over Slurm ones because ``mpirun`` inside an allocation inherits the daemon step's Slurm
variables (where ``SLURM_PROCID`` is a node index, not the rank).

The master address for MPI launches comes from ``MASTER_ADDR`` when set, else from the Slurm node list, else is
this host when every rank is on this node (the local size equals the world size), else the first line of
``$PBS_NODEFILE`` (read by :func:`resolve_master_addr`, the only impure helper). The
port comes from ``MASTER_PORT``, else is derived from the batch job id so that concurrent jobs differ.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a parallel launch.

    Attributes:
        rank: Global rank, 0-based.
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
        local_world_size: Processes on this node.
        master_addr: Host of rank 0 (``None`` when it must be resolved from a node file).
        master_port: TCP port of the rendezvous.
        launcher: ``"torchrun"``, ``"mpi"``, ``"slurm"`` or ``"single"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    launcher: str = "single"

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def _int(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip() != "":
            try:
                return int(value.strip())
            except ValueError as exc:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc
    return None


def tasks_per_node(spec: str, name: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Tasks on each node of a Slurm step or job, in node order.

    Args:
        spec: Slurm's compressed form, e.g. ``"2(x2),1"`` (two nodes with 2 tasks, then one with 1).
        name: The variable ``spec`` came from (error messages).

    Raises:
        ValueError: ``spec`` is not in that form, or expands past 100,000 nodes.
    """
    counts: list[int] = []
    for part in spec.strip().split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m is None:
            raise ValueError(f"environment variable {name}={spec!r} is not a tasks-per-node list such as '2(x3),1'")
        repeat = int(m.group(2) or 1)
        if len(counts) + repeat > 100_000:
            raise ValueError(f"environment variable {name}={spec!r} names more than 100,000 nodes")
        counts += [int(m.group(1))] * repeat
    return counts


def expand_hostlist(expr: str) -> list[str]:
    """Expand a Slurm hostlist expression into host names.

    Args:
        expr: e.g. ``"nid[001-003,007],login1"`` or ``"frontier[00010-00011]-ib"``.

    Returns:
        The hosts in order, e.g. ``["nid001", "nid002", "nid003", "nid007", "login1"]``.
    """
    hosts: list[str] = []
    # split on commas outside brackets
    tokens, depth, cur = [], 0, ""
    for ch in expr.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            tokens.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        tokens.append(cur)
    for token in tokens:
        parts = re.split(r"(\[[^\]]*\])", token.strip())
        choices: list[list[str]] = []
        for part in parts:
            if part.startswith("[") and part.endswith("]"):
                items: list[str] = []
                for rng in part[1:-1].split(","):
                    if "-" in rng:
                        lo, hi = rng.split("-", 1)
                        width = len(lo)
                        items.extend(str(k).zfill(width) for k in range(int(lo), int(hi) + 1))
                    elif rng:
                        items.append(rng)
                choices.append(items)
            elif part:
                choices.append([part])
        hosts.extend("".join(p) for p in itertools.product(*choices))
    return hosts


def _port(environ: Mapping[str, str]) -> int:
    port = _int(environ, "MASTER_PORT")
    if port is not None:
        return port
    job = environ.get("SLURM_JOB_ID") or environ.get("PBS_JOBID") or environ.get("LSB_JOBID")
    digits = re.sub(r"\D", "", job or "")
    if digits:
        return DEFAULT_PORT + int(digits[-4:]) % 10000 + 1
    return DEFAULT_PORT


def _slurm_master(environ: Mapping[str, str]) -> str | None:
    nodelist = (
        environ.get("SLURM_STEP_NODELIST")
        or environ.get("SLURM_JOB_NODELIST")
        or environ.get("SLURM_NODELIST")
    )
    if nodelist:
        hosts = expand_hostlist(nodelist)
        if hosts:
            return hosts[0]
    return None


def parse_torchrun(environ: Mapping[str, str]) -> DistEnv | None:
    """Parse a ``torchrun`` environment, or return ``None`` when it is not one."""
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    if rank is None or world is None:
        return None
    local = _int(environ, "LOCAL_RANK") or 0
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=local,
        local_world_size=_int(environ, "LOCAL_WORLD_SIZE") or world,
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_port(environ),
        launcher="torchrun",
    )


def parse_mpi(environ: Mapping[str, str]) -> DistEnv | None:
    """Parse an MPI launch (Open MPI, PALS, MPICH/Cray PMI, PMIx), or return ``None``."""
    if "OMPI_COMM_WORLD_RANK" in environ:
        rank = _int(environ, "OMPI_COMM_WORLD_RANK")
        world = _int(environ, "OMPI_COMM_WORLD_SIZE")
        local = _int(environ, "OMPI_COMM_WORLD_LOCAL_RANK")
        local_size = _int(environ, "OMPI_COMM_WORLD_LOCAL_SIZE")
    elif "PALS_RANKID" in environ:
        rank = _int(environ, "PALS_RANKID")
        world = _int(environ, "PMI_SIZE", "PALS_SIZE")
        local = _int(environ, "PALS_LOCAL_RANKID")
        local_size = _int(environ, "PALS_LOCAL_SIZE")
    elif "PMI_RANK" in environ:
        rank = _int(environ, "PMI_RANK")
        world = _int(environ, "PMI_SIZE")
        local = _int(environ, "PMI_LOCAL_RANK", "MPI_LOCALRANKID")
        local_size = _int(environ, "PMI_LOCAL_SIZE", "MPI_LOCALNRANKS")
    elif "PMIX_RANK" in environ:
        rank = _int(environ, "PMIX_RANK")
        world = _int(environ, "PMIX_SIZE", "OMPI_UNIVERSE_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
        local = _int(environ, "PMIX_LOCAL_RANK", "SLURM_LOCALID")
        local_size = _int(environ, "PMIX_LOCAL_SIZE")
    else:
        return None
    if rank is None or world is None:
        raise ValueError("MPI launch detected but the world size is not in the environment")
    # every rank on this node (a workstation or one-node job's mpiexec): rank 0 is on this host
    single_node = "127.0.0.1" if local_size is not None and local_size == world else None
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=local or 0,
        local_world_size=local_size or 1,
        master_addr=environ.get("MASTER_ADDR") or _slurm_master(environ) or single_node,
        master_port=_port(environ),
        launcher="mpi",
    )


def parse_slurm(environ: Mapping[str, str]) -> DistEnv | None:
    """Parse an ``srun`` step environment, or return ``None`` when not inside one."""
    rank = _int(environ, "SLURM_PROCID")
    world = _int(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    if rank is None or world is None:
        return None
    local_size = None
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):  # the step's own layout first
        if environ.get(name, "").strip():
            counts = tasks_per_node(environ[name], name)
            node = _int(environ, "SLURM_NODEID") or 0
            local_size = counts[node] if node < len(counts) else counts[-1]
            break
    if local_size is None:
        local_size = _int(environ, "SLURM_NTASKS_PER_NODE") or 1
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=_int(environ, "SLURM_LOCALID") or 0,
        local_world_size=local_size,
        master_addr=environ.get("MASTER_ADDR") or _slurm_master(environ) or "127.0.0.1",
        master_port=_port(environ),
        launcher="slurm",
    )


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The launch environment of this process (a pure function of ``environ``).

    Args:
        environ: Environment mapping; ``os.environ`` when ``None``.

    Returns:
        The parsed :class:`DistEnv`; a single-process one when no launcher is recognised.
    """
    env = os.environ if environ is None else environ
    for parser in (parse_torchrun, parse_mpi, parse_slurm):
        parsed = parser(env)
        if parsed is not None:
            if not 0 <= parsed.rank < parsed.world_size:
                raise ValueError(
                    f"{parsed.launcher}: rank {parsed.rank} outside world size {parsed.world_size}"
                )
            return parsed
    return DistEnv()


def resolve_master_addr(denv: DistEnv, environ: Mapping[str, str] | None = None) -> str:
    """The master address, reading ``$PBS_NODEFILE`` when the environment alone does not give it."""
    if denv.master_addr:
        return denv.master_addr
    env = os.environ if environ is None else environ
    nodefile = env.get("PBS_NODEFILE")
    if nodefile and os.path.exists(nodefile):
        with open(nodefile) as fh:
            for line in fh:
                if line.strip():
                    return line.strip()
    if denv.world_size > 1:
        raise RuntimeError(
            f"{denv.launcher} launch: cannot determine the master address; set MASTER_ADDR to rank 0's host"
        )
    return "127.0.0.1"
