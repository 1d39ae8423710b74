"""Rendered batch scripts: what Parsl's provider would submit, without submitting."""

from __future__ import annotations

import pytest

from sites.facts import AURORA_CPU_AFFINITY
from sites.render import render_batch_script, render_submission


def test_frontier_script() -> None:
    s = render_batch_script("frontier", account="ABC123", nodes_per_block=2048, walltime="02:00:00")
    for line in (
        "#SBATCH --nodes=2048",
        "#SBATCH --time=120",
        "#SBATCH --account=ABC123",
        "#SBATCH --partition=batch",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --exclusive",
    ):
        assert line in s.splitlines(), line
    assert "srun --ntasks 2048 -l --cpus-per-task=56 --gpus-per-node=8" in s
    assert "--available-accelerators 0 1 2 3 4 5 6 7" in s and "-c 7 " in s
    assert "module load PrgEnv-gnu rocm" in s and "process_worker_pool.py" in s


def test_perlmutter_script() -> None:
    s = render_batch_script("perlmutter", account="m1234", qos="debug", nodes_per_block=2, walltime="00:30:00")
    lines = s.splitlines()
    for line in ("#SBATCH --constraint=gpu", "#SBATCH --qos=debug", "#SBATCH --account=m1234",
                 "#SBATCH --nodes=2", "#SBATCH --time=30", "#SBATCH --gpus-per-node=4"):
        assert line in lines, line
    assert "--available-accelerators 0 1 2 3" in s and "srun --ntasks 2 " in s


def test_aurora_script() -> None:
    job = render_submission("aurora", account="XYZ", queue="debug", nodes_per_block=4, walltime="01:30:00")
    lines = job.script.splitlines()
    for line in ("#PBS -l select=4:ncpus=208", "#PBS -l walltime=01:30:00", "#PBS -l filesystems=home:flare"):
        assert line in lines, line
    assert "mpiexec --cpu-bind" in job.script and "--ppn 1" in job.script
    assert f"--cpu-affinity {AURORA_CPU_AFFINITY}" in job.script
    assert job.submit_command.split()[:5] == ["qsub", "-q", "debug", "-A", "XYZ"]
    assert "-A XYZ" in render_batch_script("aurora", account="XYZ")


def test_mpi_executor_block() -> None:
    s = render_batch_script("slurm", executor="mpi", partition="debug", nodes_per_block=8, address="127.0.0.1")
    assert "#SBATCH --nodes=8" in s.splitlines() and "#SBATCH --partition=debug" in s.splitlines()
    assert "--enable_mpi_mode" in s and "--mpi-launcher=srun" in s
    assert "srun --ntasks" not in s  # one pool on the first node; apps launch themselves with $PARSL_MPI_PREFIX


def test_no_script_for_local_or_unknown_executor() -> None:
    with pytest.raises(ValueError, match="local"):
        render_batch_script("local")
    with pytest.raises(ValueError, match="gpu"):
        render_batch_script("slurm", executor="gpu")
