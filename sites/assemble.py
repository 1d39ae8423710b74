"""The ``parsl.Config`` wrapper every site factory ends with (retries, run directory, monitoring)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from parsl.config import Config
from parsl.executors.base import ParslExecutor
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.error_handlers import windowed_error_handler
from parsl.jobs.states import JobStatus
from parsl.logconfigs.file import FileLogging

#: Level of ``parsl.log`` a campaign writes unless its site sets ``parsl_log_level``. Parsl's own default is DEBUG:
#: about eight records per task (formatted, stack-walked and flushed in the submitting thread), all of which the
#: campaign database records anyway, with timestamps, for every attempt; INFO keeps Parsl's scaling, block and
#: error records.

LogLevel = Literal["debug", "info", "warning"]
DEFAULT_LOG_LEVEL: LogLevel = "info"


#: Consecutive failed blocks (batch jobs) after which an executor gives up and fails every task it holds. Parsl's
#: default gives up when every block so far failed, which for an executor whose blocks start on demand is its first
#: failure: one node lost mid-run (the job ends NODE_FAIL) would fail every later task of the campaign. A lost
#: node fails one block and the next must be allowed to start; a broken ``worker_init`` fails every block.
FAILED_BLOCKS_TO_GIVE_UP = 3


def give_up_after_failed_blocks(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> None:
    """Parsl block error handler: fail the executor once its last :data:`FAILED_BLOCKS_TO_GIVE_UP` blocks failed."""
    windowed_error_handler(executor, status, FAILED_BLOCKS_TO_GIVE_UP)


def parsl_logging(level: LogLevel | bool) -> FileLogging | bool:
    """Parsl's ``initialize_logging`` for ``parsl.log`` at ``level`` (``False``: no ``parsl.log``)."""
    if level is False:
        return False
    name = DEFAULT_LOG_LEVEL if level is True else level
    return FileLogging(level=logging.getLevelNamesMapping()[name.upper()])


def assemble_config(
    executors: Sequence[ParslExecutor],
    *,
    run_dir: str = "runinfo",
    retries: int = 0,
    retry_handler: Callable[[Exception, Any], float] | None = None,
    monitoring: bool = False,
    strategy_period: float = 5.0,
    initialize_logging: bool = True,
    log_level: LogLevel = DEFAULT_LOG_LEVEL,
) -> Config:
    """A fresh ``Config`` around ``executors``, each of which gives up only after repeated failed blocks
    (:func:`give_up_after_failed_blocks`).

    Args:
        executors: The site's executors (labels ``htex`` for single-node tasks, ``mpi`` for MPI apps).
        run_dir: Where Parsl writes its logs and submit scripts (one ``NNN/`` per run).
        retries: Retry budget per task (see ``retry_handler``).
        retry_handler: ``(exception, task_record) -> cost``; the dispatcher installs one that retries lost
            nodes and walltime at no cost and charges app errors.
        monitoring: Turn on Parsl's monitoring database. Off by default: it costs ~10x task throughput.
        strategy_period: Seconds between Parsl's scaling decisions.
        initialize_logging: Whether Parsl writes ``parsl.log`` under ``run_dir``.
        log_level: Level of ``parsl.log`` (see :data:`DEFAULT_LOG_LEVEL`).
    """
    for ex in executors:
        if isinstance(ex, BlockProviderExecutor):
            ex.block_error_handler = give_up_after_failed_blocks
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
        initialize_logging=parsl_logging(log_level if initialize_logging else False),
    )
