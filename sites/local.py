"""This machine: Parsl's HighThroughputExecutor on loopback, or a ThreadPoolExecutor for fast tests.

Placeholders: none. ``max_workers`` defaults to the number of CPU cores. The workers are started by Parsl's
``LocalProvider`` with the same environment as the steering process; the dispatcher puts the virtual
environment's ``bin/`` on ``PATH`` first (HTEX launches ``interchange.py`` and ``process_worker_pool.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider

from sites.assemble import assemble_config


def local_config(
    *,
    max_workers: int | None = None,
    worker_init: str = "",
    encrypted: bool = True,
    heartbeat_period: int = 30,
    heartbeat_threshold: int = 120,
    run_dir: str = "runinfo",
    retries: int = 0,
    retry_handler: Callable[[Exception, Any], float] | None = None,
    monitoring: bool = False,
) -> Config:
    """HighThroughputExecutor (label ``htex``) bound to 127.0.0.1 with one block of local workers.

    Args:
        max_workers: Worker processes (default: ``os.cpu_count()``).
        worker_init: Shell run before the worker pool starts (e.g. activating an environment).
        encrypted: CurveZMQ encryption between interchange and workers.
        heartbeat_period: Seconds between worker/interchange heartbeats.
        heartbeat_threshold: Seconds without a heartbeat before a manager is declared lost.
        run_dir: Parsl's run directory (logs).
        retries: Retry budget per task.
        retry_handler: Parsl retry handler, installed by the dispatcher.
        monitoring: Parsl monitoring (off by default: ~10x slower).
    """
    workers = max_workers or os.cpu_count() or 1
    htex = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        max_workers_per_node=workers,
        cores_per_worker=1e-6,  # the worker count is max_workers, not the core count
        encrypted=encrypted,
        heartbeat_period=heartbeat_period,
        heartbeat_threshold=heartbeat_threshold,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=worker_init),
    )
    return assemble_config(
        [htex], run_dir=run_dir, retries=retries, retry_handler=retry_handler, monitoring=monitoring
    )


def threads_config(
    *,
    max_workers: int | None = None,
    run_dir: str = "runinfo",
    retries: int = 0,
    retry_handler: Callable[[Exception, Any], float] | None = None,
) -> Config:
    """ThreadPoolExecutor (label ``threads``): no worker processes to start, for fast tests.

    Args:
        max_workers: Threads (default: ``os.cpu_count()``).
        run_dir: Parsl's run directory (logs).
        retries: Retry budget per task.
        retry_handler: Parsl retry handler, installed by the dispatcher.
    """
    threads = ThreadPoolExecutor(label="threads", max_threads=max_workers or os.cpu_count() or 1)
    return assemble_config([threads], run_dir=run_dir, retries=retries, retry_handler=retry_handler)
