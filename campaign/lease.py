"""One driver per campaign: the lease a steering process holds, and the fence its workers check.

A driver takes the campaign's lease in the database before it writes anything (:meth:`Ledger.acquire_lease`)
and gets a fresh fencing token. Every transaction that moves a task (claiming, recording) renews the lease
under that token, and fails with :class:`LeaseLost` once another driver has taken it: a driver presumed dead
can never record over its successor. A second driver is refused with :class:`DriverBusy`, naming the holder,
unless the holder is provably dead: on the same host its process is gone, elsewhere its heartbeat is older than
:data:`STALE_AFTER_S`.

The token also travels with every task (:class:`~campaign.tasks.DriverRef`) and is written to the campaign's
lease file, so that a worker refuses to start, and stops, an attempt whose driver is gone or superseded
(see :func:`campaign.worker.fence_violation`).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from campaign.errors import CampaignInputError
from campaign.processes import process_alive, process_start_ticks
from campaign.tasks import DriverRef
from models.atomic_files import write_json_atomic

#: A lease whose heartbeat is older than this (seconds) is presumed dead when its driver is on another host.
STALE_AFTER_S = 90.0

#: Seconds between two renewals of the lease while the loop has nothing else to write.
RENEW_EVERY_S = 10.0

#: Seconds between two looks of the driver for a user's cancel request (``campaign cancel``).
CANCEL_CHECK_S = 2.0

#: The lease file's name under the campaign's workdir.
LEASE_FILE = "driver.lease.json"


class DriverBusy(CampaignInputError):
    """Another driver holds the campaign (bad input: the CLI exits with status 2)."""


class CampaignCancelled(Exception):
    """A user asked (``campaign cancel``) to stop the campaign's run: the driver stops as if interrupted."""


class LeaseLost(RuntimeError):
    """This driver's lease was taken by another driver: it must stop writing at once."""


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a campaign's lease, as the database says."""

    host: str | None
    pid: int | None
    start_ticks: int | None
    since: datetime | None
    heartbeat_at: datetime | None

    def describe(self) -> str:
        """``pid 123 on host-a since 2026-12-03 13:00:00 UTC`` (for the refusal message)."""
        since = self.since.strftime("%Y-%m-%d %H:%M:%S UTC") if self.since else "an unknown time"
        return f"pid {self.pid} on {self.host} since {since}"

    def provably_dead(self, age_s: float) -> bool:
        """Whether the holder is gone: its process is not alive (same host), or its heartbeat is ``age_s`` old,
        more than :data:`STALE_AFTER_S` (another host)."""
        if self.host == socket.gethostname():
            return not process_alive(self.pid, self.start_ticks)
        return age_s > STALE_AFTER_S


def this_driver(workdir: Path | None, token: str | None = None) -> DriverRef:
    """This process as a driver, with a fresh fencing token (or ``token``) and its lease file under ``workdir``."""
    pid = os.getpid()
    return DriverRef(token=token or secrets.token_hex(16), host=socket.gethostname(), pid=pid,
                     start_ticks=process_start_ticks(pid),
                     lease_file=str(workdir / LEASE_FILE) if workdir is not None else None)


def write_lease_file(ref: DriverRef) -> None:
    """Write the lease file (atomically): workers of an older driver that read it stop."""
    if ref.lease_file is not None:
        write_json_atomic(ref.lease_file, ref.model_dump(mode="json"))
