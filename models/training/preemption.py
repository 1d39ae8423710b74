"""The scheduler's warning that a job is about to lose its nodes, as a flag the epoch loop reads.

Batch schedulers warn a job before they end it: Slurm sends the signal of ``--signal=SIG@SECONDS`` to every job
step that long before the time limit (the Slurm sites ask for SIGUSR1: :func:`sites.slurm.slurm_config`), and
SIGTERM, then SIGKILL after ``KillWait``, when the limit is reached or it cancels, preempts or requeues a job; PBS
sends SIGTERM before its SIGKILL; the campaign's own worker sends SIGTERM when an attempt reaches its walltime.
The training app then checkpoints at the next step boundary, even mid-epoch, and exits with
``stop_reason = "preempted"`` (:data:`models.appio.PREEMPTED_STOP`), which the worker records as ``walltime`` so
that the next attempt continues from that step.

Handlers are installed only in the main thread (Python's rule); an app run inside a worker thread (single-rank
in-process mode) keeps the process's handlers and never sees the flag set.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

#: Signals taken as "checkpoint now and stop": SIGTERM (time limit, preemption, requeue, scancel) and SIGUSR1
#: (a common choice for ``--signal=USR1@…``).
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    """Context manager: while inside, :data:`PREEMPT_SIGNALS` set :attr:`requested` instead of ending the process.

    Attributes:
        signum: The first preemption signal received, or ``None``.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a preemption signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in PREEMPT_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
