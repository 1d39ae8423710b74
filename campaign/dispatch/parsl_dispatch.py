"""Dispatch through Parsl: single-node tasks on the ``htex`` executor, multi-node MPI apps on ``mpi``.

Parsl runs each attempt once (``Config.retries = 0``): a failed attempt comes back as its ``TaskResult`` and the
steering process's retry policy decides whether the task is tried again (see :mod:`campaign.dispatch.base`).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from parsl import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel

from campaign.dispatch.base import Dispatcher
from campaign.dispatch.environment import ensure_env_on_path
from campaign.dispatch.resources import mpi_resource_specification
from campaign.tasks import TaskSpec
from campaign.worker import run_attempt

log = logging.getLogger(__name__)

#: Executor labels the site factories use.
SINGLE_LABELS = ("htex", "threads")
MPI_LABEL = "mpi"


class ParslDispatcher(Dispatcher):
    """Run tasks through a Parsl ``Config`` (one of :mod:`sites`' factories).

    Args:
        config: A fresh Parsl config (its ``retries`` is set to 0: see the module docstring).
        in_process: Passed to the worker (``None``: light ``campaign.apps`` run inside the Parsl worker).
    """

    name = "parsl"

    def __init__(self, config: Config, *, in_process: bool | None = None) -> None:
        super().__init__()
        ensure_env_on_path()
        self.in_process = in_process
        config.retries = 0
        labels = [ex.label for ex in config.executors]
        single = [lb for lb in labels if lb != MPI_LABEL]
        if not single:
            raise ValueError(f"Parsl config has no single-node executor (labels: {labels})")
        self._single_label = single[0]
        self._mpi_label = MPI_LABEL if MPI_LABEL in labels else None
        mpi = next((ex for ex in config.executors if ex.label == MPI_LABEL), None)
        self._mpi_launcher = str(getattr(mpi, "mpi_launcher", "srun"))
        self.dfk = DataFlowKernel(config)
        self._app = python_app(run_attempt, executors=[self._single_label], data_flow_kernel=self.dfk)
        self._mpi_app = (
            python_app(run_attempt, executors=[self._mpi_label], data_flow_kernel=self.dfk)
            if self._mpi_label
            else None
        )

    def executor_of(self, spec: TaskSpec) -> str:
        """``parsl:<label>`` of the executor that runs ``spec`` (``parsl:mpi`` for a multi-rank app)."""
        mpi = spec.resources.is_mpi and self._mpi_label is not None
        return f"parsl:{self._mpi_label if mpi else self._single_label}"

    def _launch(self, spec: TaskSpec) -> Future[Any]:
        spec_json = spec.model_dump_json()
        if spec.resources.is_mpi and self._mpi_app is not None:
            return self._mpi_app(spec_json, "PARSL_MPI_PREFIX", False,
                                 parsl_resource_specification=mpi_resource_specification(spec.resources,
                                                                                         self._mpi_launcher))
        return self._app(spec_json, None, self.in_process)

    def shutdown(self, wait: bool = True) -> None:
        if self._closed:
            return
        if wait:
            self.dfk.wait_for_current_tasks()
        self._closed = True
        self.dfk.cleanup()
