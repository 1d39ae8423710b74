"""Energy a run drew and how busy its GPU was, where the hardware exposes them.

Energy comes from Zeus (the ML.ENERGY project's monitor, ``pip install campaign[energy]``): NVIDIA GPUs through
NVML's energy counter, AMD GPUs through amdsmi, CPU packages and DRAM through RAPL (``/sys/class/powercap``).
Each rank measures its own GPU; the CPU packages and DRAM of a node, which its ranks share, are measured by the
node's local rank 0 only, so that the figures summed over ranks count every device once. GPU utilisation is
NVML's (``torch.cuda.utilization``: the share of the last sample period in which a kernel ran), sampled once a
second while the meter runs.

Where nothing is exposed (a virtual machine without RAPL, a CPU-only node, Zeus not installed) the figures are
``None``, never 0: the report then says "not measured".
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class EnergyReading:
    """What one rank measured over a window.

    Attributes:
        gpu_j: Energy of this rank's GPU, J (``None``: not measured).
        cpu_j: Energy of this node's CPU packages, J (local rank 0 only; ``None`` elsewhere or not measured).
        dram_j: Energy of this node's DRAM, J (as ``cpu_j``).
        gpu_utilisation_percent: Mean GPU utilisation over the window, % (``None``: no GPU, or not exposed).
    """

    gpu_j: float | None = None
    cpu_j: float | None = None
    dram_j: float | None = None
    gpu_utilisation_percent: float | None = None


class EnergyMeter:
    """Measure one window of a rank's run: ``start()``, then ``stop()`` returns the :class:`EnergyReading`.

    Args:
        device: The rank's device (a CUDA device is metered; others only through the CPU counters).
        local_rank: The rank's index on its node (0 also meters the node's CPU packages and DRAM).
        interval_s: Seconds between GPU utilisation samples.
    """

    def __init__(self, device: torch.device, local_rank: int, *, interval_s: float = 1.0) -> None:
        self.device = device
        self.local_rank = local_rank
        self.interval_s = interval_s
        self._monitor: Any = None
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _open_monitor(self) -> Any:
        if self.device.type != "cuda" and not (self.local_rank == 0 and rapl_readable()):
            return None  # nothing to meter: skip Zeus's import (about a second: pandas, scikit-learn, httpx)
        try:
            from zeus.monitor import ZeusMonitor
        except ImportError:
            return None
        gpus = [self.device.index or 0] if self.device.type == "cuda" else []
        logging.getLogger("zeus").setLevel(logging.ERROR)  # "no GPU", "no RAPL": said by None figures instead
        try:
            return ZeusMonitor(gpu_indices=gpus, cpu_indices=None if self.local_rank == 0 else [],
                               approx_instant_energy=True)
        except Exception:  # the hardware refused (no NVML, no permission): not measured
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._samples.append(float(torch.cuda.utilization(self.device)))
            except Exception:  # NVML not available to torch: utilisation not measured
                return

    def start(self) -> None:
        """Begin the window."""
        self._monitor = self._open_monitor()
        if self._monitor is not None:
            self._monitor.begin_window("run", sync_execution=self.device.type == "cuda")
        if self.device.type == "cuda":
            self._sampler = threading.Thread(target=self._sample, name="gpu-utilisation", daemon=True)
            self._sampler.start()

    def stop(self) -> EnergyReading:
        """End the window and return what was measured."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5 * self.interval_s)
        util = sum(self._samples) / len(self._samples) if self._samples else None
        if self._monitor is None:
            return EnergyReading(gpu_utilisation_percent=util)
        with contextlib.suppress(Exception):
            m = self._monitor.end_window("run", sync_execution=self.device.type == "cuda")
            return EnergyReading(gpu_j=_total(m.gpu_energy), cpu_j=_total(m.cpu_energy),
                                 dram_j=_total(m.dram_energy), gpu_utilisation_percent=util)
        return EnergyReading(gpu_utilisation_percent=util)


#: The first CPU package's RAPL energy counter (Intel, and AMD Zen through the same powercap driver).
RAPL_COUNTER = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def rapl_readable() -> bool:
    """Whether this host exposes its CPU packages' energy counters to this process."""
    return RAPL_COUNTER.is_file() and os.access(RAPL_COUNTER, os.R_OK)


def _total(per_device: dict[int, float] | None) -> float | None:
    return float(sum(per_device.values())) if per_device else None


def combine(readings: list[EnergyReading]) -> EnergyReading:
    """The run's figures from every rank's: energies summed (``None`` where no rank measured), utilisation
    averaged over the ranks that measured it."""

    def total(name: str) -> float | None:
        values = [getattr(r, name) for r in readings if getattr(r, name) is not None]
        return float(sum(values)) if values else None

    utils = [r.gpu_utilisation_percent for r in readings if r.gpu_utilisation_percent is not None]
    return EnergyReading(gpu_j=total("gpu_j"), cpu_j=total("cpu_j"), dram_j=total("dram_j"),
                         gpu_utilisation_percent=sum(utils) / len(utils) if utils else None)
