"""The device layer's choices, checked on the CPU with the accelerator queries answered as a node would answer
them: which device each rank computes on and which collective backend goes with it (CUDA, ROCm, Intel XPU, CPU),
and the per-rank launcher options that bind CPUs and accelerators."""

from __future__ import annotations

import pytest
import torch

from campaign.dispatch.resources import launcher_options, mpi_resource_specification
from campaign.tasks import ResourceRequest
from models import devices


def _node(monkeypatch: pytest.MonkeyPatch, cuda: int = 0, xpu: int = 0, hip: str | None = None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: xpu > 0)
    monkeypatch.setattr(torch.xpu, "device_count", lambda: xpu)
    monkeypatch.setattr(torch.version, "hip", hip)


def test_a_cpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    _node(monkeypatch)
    assert devices.accelerator() == "cpu" and devices.vendor() == "cpu"
    dev = devices.rank_device("auto", local_rank=3)
    assert dev == torch.device("cpu") and devices.backend_for(dev) == "gloo"
    with pytest.raises(ValueError, match="sees no cuda device"):
        devices.rank_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        devices.rank_device("tpu")


def test_an_nvidia_node_and_an_amd_node(monkeypatch: pytest.MonkeyPatch) -> None:
    _node(monkeypatch, cuda=4)
    assert devices.vendor() == "nvidia"
    assert [devices.rank_device("auto", r).index for r in range(6)] == [0, 1, 2, 3, 0, 1]
    assert devices.rank_device("auto", 1, gpus_per_rank=2) == torch.device("cuda", 2)
    assert devices.backend_for(devices.rank_device("cuda", 0)) == "nccl"
    assert devices.rank_device("cpu", 2) == torch.device("cpu")  # a CPU run on a GPU node
    _node(monkeypatch, cuda=8, hip="6.2")  # Frontier: ROCm answers to cuda, with RCCL under the nccl name
    assert devices.vendor() == "amd" and devices.rank_device("auto", 7) == torch.device("cuda", 7)
    _node(monkeypatch, cuda=1)  # srun --gpus-per-task=1: each rank sees its own GPU as device 0
    assert devices.rank_device("auto", 5) == torch.device("cuda", 0)


def test_an_aurora_node_of_intel_gpu_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    _node(monkeypatch, xpu=12)
    assert devices.accelerator() == "xpu" and devices.vendor() == "intel"
    dev = devices.rank_device("auto", local_rank=11)
    assert dev == torch.device("xpu", 11) and devices.backend_for(dev) == "xccl"
    with pytest.raises(ValueError, match="sees no cuda device"):
        devices.rank_device("cuda")


def test_gpus_per_rank_reach_the_launcher() -> None:
    from parsl.executors.high_throughput.mpi_prefix_composer import compose_all, validate_resource_spec

    res = ResourceRequest(nodes=2, ranks_per_node=8, gpus_per_rank=1, cpus_per_rank=7)
    spec = mpi_resource_specification(res, "srun")
    validate_resource_spec(dict(spec))  # Parsl accepts it
    prefixes = compose_all("srun", dict(spec), ["node1", "node2"])
    srun = prefixes["PARSL_MPI_PREFIX"]
    assert srun.startswith("srun --ntasks 16 --ntasks-per-node 8 --nodelist node1,node2 --nodes 2")
    assert srun.endswith("--cpus-per-task=7 --gpus-per-task=1 --gpu-bind=closest")
    mpiexec = compose_all("mpiexec", dict(mpi_resource_specification(res, "mpiexec")), ["x1", "x2"])
    assert mpiexec["PARSL_MPI_PREFIX"].endswith("--depth=7 --cpu-bind depth")
    cpu_only = ResourceRequest(nodes=2, ranks_per_node=4)
    assert launcher_options(cpu_only, "srun") == "--cpus-per-task=1"
    assert "launcher_options" not in mpi_resource_specification(cpu_only, "endpoint")
