"""The ``parsl.Config`` wrapper every site factory ends with (retries, run directory, monitoring)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from parsl.config import Config
from parsl.executors.base import ParslExecutor


def assemble_config(
    executors: Sequence[ParslExecutor],
    *,
    run_dir: str = "runinfo",
    retries: int = 0,
    retry_handler: Callable[[Exception, Any], float] | None = None,
    monitoring: bool = False,
    strategy_period: float = 5.0,
    initialize_logging: bool = True,
) -> Config:
    """A fresh ``Config`` around ``executors``.

    Args:
        executors: The site's executors (labels ``htex`` for single-node tasks, ``mpi`` for MPI apps).
        run_dir: Where Parsl writes its logs and submit scripts (one ``NNN/`` per run).
        retries: Retry budget per task (see ``retry_handler``).
        retry_handler: ``(exception, task_record) -> cost``; the dispatcher installs one that retries lost
            nodes and walltime at no cost and charges app errors.
        monitoring: Turn on Parsl's monitoring database. Off by default: it costs ~10x task throughput.
        strategy_period: Seconds between Parsl's scaling decisions.
        initialize_logging: Whether Parsl writes ``parsl.log`` under ``run_dir``.
    """
    hub = None
    if monitoring:
        from parsl.monitoring import MonitoringHub

        hub = MonitoringHub(resource_monitoring_enabled=True)
    return Config(
        executors=list(executors),
        run_dir=run_dir,
        retries=retries,
        retry_handler=retry_handler,
        monitoring=hub,
        strategy_period=strategy_period,
        usage_tracking=0,
        initialize_logging=initialize_logging,
    )
