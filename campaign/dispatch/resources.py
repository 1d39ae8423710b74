"""Translate a :class:`~campaign.tasks.ResourceRequest` into the executors' resource specifications."""

from __future__ import annotations

from typing import Any

from campaign.tasks import ResourceRequest


def mpi_resource_specification(res: ResourceRequest) -> dict[str, Any]:
    """Parsl MPI mode / Globus Compute MPI engine resource specification of ``res``.

    ``num_nodes`` x ``ranks_per_node`` ranks; Parsl composes ``$PARSL_MPI_PREFIX`` (``srun --ntasks …
    --nodelist …`` or ``mpiexec -n … -ppn … -hosts …``) from it on the worker.
    """
    return {"num_nodes": res.nodes, "ranks_per_node": res.ranks_per_node, "num_ranks": res.ranks}
