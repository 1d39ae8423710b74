"""Energy and GPU utilisation of a training run, where the hardware exposes them (models.energy, through Zeus):
measured figures on machines with RAPL or a GPU, ``None`` — never 0 — where nothing is exposed."""

from __future__ import annotations

from typing import Any

import pytest

from models.contracts.train import parse_config
from models.energy import EnergyReading, combine, rapl_readable
from models.train import run


def test_a_cpu_run_reports_what_this_machine_exposes(train_config: dict[str, Any]) -> None:
    pytest.importorskip("zeus")
    res = run(parse_config({**train_config, "epochs": 1, "device": "cpu"}, "<test>"))
    assert res["energy_gpu_j"] is None and res["gpu_utilisation_percent"] is None  # no GPU metered on a CPU run
    if rapl_readable():  # a bare-metal Linux host: the CPU packages' counter moved
        assert res["energy_cpu_j"] is not None and res["energy_cpu_j"] > 0
    else:  # a VM or container without powercap: not measured, not zero
        assert res["energy_cpu_j"] is None and res["energy_dram_j"] is None


@pytest.mark.gpu
def test_a_cuda_run_meters_its_gpu(train_config: dict[str, Any]) -> None:
    pytest.importorskip("zeus")
    res = run(parse_config({**train_config, "epochs": 2, "device": "cuda"}, "<test>"))
    assert res["energy_gpu_j"] is not None and res["energy_gpu_j"] > 0
    assert res["gpu_utilisation_percent"] is not None and 0 <= res["gpu_utilisation_percent"] <= 100


def test_ranks_readings_combine_counting_each_device_once() -> None:
    node0_rank0 = EnergyReading(gpu_j=100.0, cpu_j=50.0, dram_j=5.0, gpu_utilisation_percent=80.0)
    node0_rank1 = EnergyReading(gpu_j=110.0, gpu_utilisation_percent=60.0)  # its node's CPU: rank 0 measured it
    node1_rank0 = EnergyReading(gpu_j=90.0, cpu_j=40.0, dram_j=None, gpu_utilisation_percent=None)
    total = combine([node0_rank0, node0_rank1, node1_rank0])
    assert total == EnergyReading(gpu_j=300.0, cpu_j=90.0, dram_j=5.0, gpu_utilisation_percent=70.0)
    assert combine([EnergyReading(), EnergyReading()]) == EnergyReading()  # nothing measured: None, not 0
