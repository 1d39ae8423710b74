"""Site factories return fresh Parsl configs with the machine's binding, launcher and scheduler options."""

from __future__ import annotations

import pytest
from parsl.executors import HighThroughputExecutor, MPIExecutor, ThreadPoolExecutor
from parsl.launchers import MpiExecLauncher, SimpleLauncher, SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from sites.configs import accepted_params, make_config
from sites.facts import AURORA_CPU_AFFINITY
from sites.network import InterfaceNotFound


def _by_label(config):  # type: ignore[no-untyped-def]
    return {ex.label: ex for ex in config.executors}


def test_local_htex_on_loopback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config("local", run_dir=str(tmp_path), max_workers=3)
    (htex,) = cfg.executors
    assert isinstance(htex, HighThroughputExecutor) and isinstance(htex.provider, LocalProvider)
    assert htex.address == "127.0.0.1" and htex.max_workers_per_node == 3
    assert cfg.monitoring is None  # monitoring costs ~10x throughput: off by default
    assert make_config("local") is not make_config("local")  # fresh each call


def test_threads_config() -> None:
    (ex,) = make_config("threads", max_workers=2).executors
    assert isinstance(ex, ThreadPoolExecutor) and ex.max_threads == 2


def test_frontier(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config("frontier", account="ABC123", address="10.0.0.1", nodes_per_block=4, retries=3)
    ex = _by_label(cfg)
    htex, mpi = ex["htex"], ex["mpi"]
    assert htex.available_accelerators == [str(i) for i in range(8)]
    assert htex.cores_per_worker == 7 and htex.cpu_affinity == "block"
    assert isinstance(htex.provider, SlurmProvider) and isinstance(htex.provider.launcher, SrunLauncher)
    assert htex.provider.account == "ABC123" and htex.provider.nodes_per_block == 4
    assert "--partition=batch" in htex.provider.scheduler_options
    assert isinstance(mpi, MPIExecutor) and mpi.mpi_launcher == "srun"
    assert isinstance(mpi.provider.launcher, SimpleLauncher) and mpi.provider.init_blocks == 0
    assert cfg.retries == 3
    # the scheduler's warning reaches the MPI apps (srun steps) 120 s before the block's time limit; the htex
    # block's worker pools are steps themselves and are not signalled
    assert "#SBATCH --signal=USR1@120" in mpi.provider.scheduler_options
    assert "--partition=batch" in mpi.provider.scheduler_options
    assert "--signal" not in htex.provider.scheduler_options
    quiet = _by_label(make_config("frontier", account="ABC123", address="10.0.0.1", mpi_signal_s=0))["mpi"]
    assert "--signal" not in quiet.provider.scheduler_options


def test_frontier_needs_its_interface_or_an_address() -> None:
    with pytest.raises(InterfaceNotFound, match="no-such-if0"):
        make_config("frontier", account="ABC123", interface="no-such-if0")


def test_perlmutter() -> None:
    htex = _by_label(make_config("perlmutter", account="m1234", address="10.0.0.1"))["htex"]
    opts = htex.provider.scheduler_options
    assert "--constraint=gpu" in opts and "--qos=regular" in opts and "--account=m1234" in opts
    assert htex.available_accelerators == ["0", "1", "2", "3"]


def test_aurora() -> None:
    ex = _by_label(make_config("aurora", account="XYZ", queue="debug", address="10.0.0.1"))
    htex = ex["htex"]
    assert isinstance(htex.provider, PBSProProvider) and isinstance(htex.provider.launcher, MpiExecLauncher)
    assert htex.cpu_affinity == AURORA_CPU_AFFINITY and len(htex.available_accelerators) == 12
    assert "#PBS -l filesystems=home:flare" in htex.provider.scheduler_options
    assert htex.provider.queue == "debug" and htex.provider.account == "XYZ"
    assert ex["mpi"].mpi_launcher == "mpiexec"


def test_bad_parameters_are_named() -> None:
    with pytest.raises(TypeError, match="nodez"):
        make_config("frontier", account="A", nodez=3)
    with pytest.raises(TypeError, match="account"):
        make_config("aurora", address="10.0.0.1")
    with pytest.raises(KeyError, match="globus"):
        make_config("globus")
    assert "mpi_nodes_per_block" in accepted_params("frontier")


@pytest.mark.parametrize("site", ["local", "slurm", "frontier", "perlmutter", "aurora"])
def test_one_failed_block_does_not_fail_the_executor(site: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A lost node ends its batch job NODE_FAIL; the next block must start. Three failed in a row give up."""
    from parsl.jobs.states import JobState, JobStatus

    params = {"run_dir": str(tmp_path)} | ({"address": "10.0.0.1", "account": "abc123"} if site != "local" else {})
    cfg = make_config(site, **params)
    for ex in cfg.executors:
        if not hasattr(ex, "block_error_handler"):
            continue
        failed, ok = JobStatus(JobState.FAILED, message="NODE_FAIL"), JobStatus(JobState.COMPLETED)
        ex.block_error_handler(ex, {"0": failed})
        ex.block_error_handler(ex, {"0": failed, "1": failed, "2": ok, "3": failed})
        assert not ex.bad_state_is_set, ex.label
        ex.block_error_handler(ex, {"0": ok, "1": failed, "2": failed, "3": failed})
        assert ex.bad_state_is_set and "NODE_FAIL" in str(ex.executor_exception), ex.label
