"""Translate a :class:`~campaign.tasks.ResourceRequest` into the executors' resource specifications."""

from __future__ import annotations

from typing import Any

from campaign.tasks import ResourceRequest


def launcher_options(res: ResourceRequest, launcher: str) -> str:
    """Per-rank binding options of ``res`` for ``launcher`` (``srun`` or ``mpiexec``).

    srun: ``--cpus-per-task`` and, with accelerators, ``--gpus-per-task`` and ``--gpu-bind=closest`` (Slurm binds
    each rank to its own GPUs and sets the visible-device variable). mpiexec (PALS on Aurora, MPICH, Open MPI):
    ``--depth`` with ``--cpu-bind depth`` for PALS/MPICH, ``--map-by slot:PE=N`` for Open MPI; accelerators are
    then chosen by each rank from its local rank (:func:`models.devices.rank_device`).
    """
    if launcher == "srun":
        opts = [f"--cpus-per-task={res.cpus_per_rank}"]
        if res.gpus_per_rank:
            opts += [f"--gpus-per-task={res.gpus_per_rank}", "--gpu-bind=closest"]
        return " ".join(opts)
    if launcher == "mpiexec":
        return f"--depth={res.cpus_per_rank} --cpu-bind depth" if res.cpus_per_rank > 1 else ""
    return ""


def mpi_resource_specification(res: ResourceRequest, launcher: str) -> dict[str, Any]:
    """Parsl MPI mode / Globus Compute MPI engine resource specification of ``res``.

    ``num_nodes`` x ``ranks_per_node`` ranks; Parsl composes ``$PARSL_MPI_PREFIX`` (``srun --ntasks …
    --nodelist …`` or ``mpiexec -n … -ppn … -hosts …``) from it on the worker, followed by
    :func:`launcher_options` (CPUs and accelerators per rank; none for a launcher not known here).
    """
    spec: dict[str, Any] = {"num_nodes": res.nodes, "ranks_per_node": res.ranks_per_node, "num_ranks": res.ranks}
    options = launcher_options(res, launcher)
    if options:
        spec["launcher_options"] = options
    return spec
