"""Dispatch through Parsl: single-node tasks on the ``htex`` executor, multi-node MPI apps on ``mpi``.

Retries go through Parsl's retry handler (``Config(retries=…, retry_handler=…)``): the handler classifies the
failure, reports the failed attempt through ``on_attempt``, charges lost nodes and walltime nothing (up to the
policy's limit) and app errors 1, and bumps ``TaskSpec.attempt`` in the task's arguments so that the retry
writes its own ``attempt<N>.out``/``.err``.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import Future
from typing import Any

from parsl import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel

from campaign.dispatch.base import AttemptCallback, Dispatcher
from campaign.dispatch.environment import ensure_env_on_path
from campaign.dispatch.failures import RetryPolicy, result_from_exception
from campaign.dispatch.resources import mpi_resource_specification
from campaign.tasks import TaskResult, TaskSpec
from campaign.worker import run_attempt

log = logging.getLogger(__name__)

#: Executor labels the site factories use.
SINGLE_LABELS = ("htex", "threads")
MPI_LABEL = "mpi"


class ParslDispatcher(Dispatcher):
    """Run tasks through a Parsl ``Config`` (one of :mod:`sites`' factories).

    Args:
        config: A fresh Parsl config; its ``retries``/``retry_handler`` are set from ``policy``.
        policy: Retry policy.
        on_attempt: Called with every retried attempt.
        in_process: Passed to the worker (``None``: light ``campaign.apps`` run inside the Parsl worker).
    """

    name = "parsl"

    def __init__(
        self,
        config: Config,
        *,
        policy: RetryPolicy | None = None,
        on_attempt: AttemptCallback | None = None,
        in_process: bool | None = None,
    ) -> None:
        super().__init__(policy=policy, on_attempt=on_attempt)
        ensure_env_on_path()
        self.in_process = in_process
        config.retries = self.policy.max_retries
        config.retry_handler = self._retry_handler
        labels = [ex.label for ex in config.executors]
        single = [lb for lb in labels if lb != MPI_LABEL]
        if not single:
            raise ValueError(f"Parsl config has no single-node executor (labels: {labels})")
        self._single_label = single[0]
        self._mpi_label = MPI_LABEL if MPI_LABEL in labels else None
        self._free_used: dict[str, int] = defaultdict(int)
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.dfk = DataFlowKernel(config)
        self._app = python_app(run_attempt, executors=[self._single_label], data_flow_kernel=self.dfk)
        self._mpi_app = (
            python_app(run_attempt, executors=[self._mpi_label], data_flow_kernel=self.dfk)
            if self._mpi_label
            else None
        )

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        if self._closed:
            raise RuntimeError("parsl dispatcher is shut down")
        out: Future[TaskResult] = Future()
        out.set_running_or_notify_cancel()
        spec_json = spec.model_dump_json()
        with self._lock:
            self._attempts[spec.task_id] = spec.attempt
        label = self._single_label
        if spec.resources.is_mpi and self._mpi_app is not None:
            label = self._mpi_label or label
            fut = self._mpi_app(
                spec_json,
                "PARSL_MPI_PREFIX",
                False,
                parsl_resource_specification=mpi_resource_specification(spec.resources),
            )
        else:
            fut = self._app(spec_json, None, self.in_process)
        fut.add_done_callback(lambda f: self._finish(spec, label, f, out))
        return out

    def _finish(self, spec: TaskSpec, label: str, fut: Future[Any], out: Future[TaskResult]) -> None:
        with self._lock:
            attempt = self._attempts.pop(spec.task_id, spec.attempt)
            self._free_used.pop(spec.task_id, None)
        try:
            res = TaskResult.model_validate_json(fut.result())  # both apps run run_attempt: JSON text
        except BaseException as exc:
            res = result_from_exception(spec, exc, attempt=attempt, executor=f"parsl:{label}")
        if res.executor is None:
            res.executor = f"parsl:{label}"
        out.set_result(res)

    def _retry_handler(self, exc: Exception, task_record: Any) -> float:
        """Parsl retry handler: classify, report the attempt if it will be retried, bump the attempt."""
        args = list(task_record["args"])
        spec = TaskSpec.model_validate_json(args[0])
        res = result_from_exception(spec, exc, attempt=spec.attempt, executor=f"parsl:{task_record['executor']}")
        with self._lock:
            free_used = self._free_used[spec.task_id]
            cost = self.policy.cost(res, free_used)
            if cost == 0:
                self._free_used[spec.task_id] = free_used + 1
        retry = task_record["fail_cost"] + cost <= self.policy.max_retries and not self._closed
        if retry:
            self._report(res)
            args[0] = spec.model_copy(update={"attempt": spec.attempt + 1}).model_dump_json()
            task_record["args"] = type(task_record["args"])(args)
            with self._lock:
                self._attempts[spec.task_id] = spec.attempt + 1
        return cost if retry else float(self.policy.max_retries + 1)

    def shutdown(self, wait: bool = True) -> None:
        if self._closed:
            return
        if wait:
            self.dfk.wait_for_current_tasks()
        self._closed = True
        self.dfk.cleanup()
