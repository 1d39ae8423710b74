"""One device layer for the apps: which accelerator a rank computes on, and the collective backend that goes
with it — CUDA (NVIDIA), ROCm (AMD: PyTorch's ROCm build answers to ``cuda``, ``torch.version.hip`` is set),
Intel XPU (Aurora's GPU tiles), else the CPU.

A rank's device is ``local_rank x gpus_per_rank`` modulo the devices it sees: launchers that bind devices per
rank (``srun --gpus-per-task``, ``ZE_AFFINITY_MASK`` / ``CUDA_VISIBLE_DEVICES`` / ``ROCR_VISIBLE_DEVICES`` set by a
wrapper) leave each rank one visible device (index 0); launchers that do not leave every rank the whole node, and
the local rank picks its own.
"""

from __future__ import annotations

from typing import Literal

import torch

Kind = Literal["cuda", "xpu", "cpu"]

#: Collective backend per accelerator kind: NCCL (RCCL on ROCm, same name), Intel's XCCL, gloo on CPUs.
BACKENDS: dict[str, str] = {"cuda": "nccl", "xpu": "xccl", "cpu": "gloo"}


def _xpu_count() -> int:
    xpu = getattr(torch, "xpu", None)
    return int(xpu.device_count()) if xpu is not None and xpu.is_available() else 0


def accelerator() -> Kind:
    """The accelerator kind this process sees: ``cuda`` (NVIDIA or AMD ROCm), ``xpu`` (Intel) or ``cpu``."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return "cuda"
    if _xpu_count() > 0:
        return "xpu"
    return "cpu"


def vendor() -> str:
    """``nvidia``, ``amd``, ``intel`` or ``cpu``: who made the accelerator (reports and result files)."""
    kind = accelerator()
    if kind == "cuda":
        return "amd" if getattr(torch.version, "hip", None) else "nvidia"
    return "intel" if kind == "xpu" else "cpu"


def device_count(kind: Kind) -> int:
    """Devices of ``kind`` visible to this process."""
    if kind == "cuda":
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    if kind == "xpu":
        return _xpu_count()
    return 1


def rank_device(requested: str = "auto", local_rank: int = 0, gpus_per_rank: int = 1) -> torch.device:
    """The device of a rank.

    Args:
        requested: ``auto`` (the accelerator this process sees, else the CPU), ``cpu``, ``cuda`` or ``xpu``.
        local_rank: The rank's index on its node.
        gpus_per_rank: Devices each rank is given; the rank computes on the first of its own.

    Raises:
        ValueError: ``cuda``/``xpu`` asked for where no such device is visible, or an unknown name.
    """
    if requested not in ("auto", "cpu", "cuda", "xpu"):
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or xpu")
    kind: Kind = accelerator() if requested == "auto" else requested  # type: ignore[assignment]
    if kind == "cpu":
        return torch.device("cpu")
    count = device_count(kind)
    if count == 0:
        raise ValueError(f"device {requested!r} asked for, but this process sees no {kind} device")
    return torch.device(kind, (local_rank * max(1, gpus_per_rank)) % count)


def backend_for(device: torch.device) -> str:
    """The collective backend for ranks computing on ``device``."""
    return BACKENDS.get(device.type, "gloo")


def set_current(device: torch.device) -> None:
    """Make ``device`` the current one of its kind (collectives and default allocations go there)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "xpu":
        torch.xpu.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
