"""Launch-environment parsing: one case per launcher, plus hostlists and head groups."""

from __future__ import annotations

import pytest

from models.distributed import assign_head_groups
from models.launch import DistEnv, detect, expand_hostlist, tasks_per_node


def test_single_process_when_no_launcher() -> None:
    assert detect({"PATH": "/usr/bin"}) == DistEnv()
    assert not detect({}).distributed


def test_torchrun() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "node7",
        "MASTER_PORT": "29411",
    }
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (3, 8, 1, 2)
    assert (d.master_addr, d.master_port, d.launcher) == ("node7", 29411, "torchrun")
    assert d.distributed


def test_slurm_srun_master_from_nodelist_and_port_from_job() -> None:
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "6",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "frontier[00012-00014,00020]",
        "SLURM_TASKS_PER_NODE": "2(x3)",
        "SLURM_JOB_ID": "1234567",
    }
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (5, 6, 1, 2)
    assert d.master_addr == "frontier00012"
    assert d.launcher == "slurm"
    assert d.master_port == 29500 + 4567 + 1
    assert detect({**env, "MASTER_ADDR": "x", "MASTER_PORT": "1"}).master_addr == "x"


def test_slurm_step_tasks_per_node_in_slurms_compressed_form() -> None:
    """What ``srun --ntasks 5 --nodes 3`` sets on its third node (seen on the CI cluster: ``2(x2)``)."""
    env = {
        "SLURM_PROCID": "4",
        "SLURM_STEP_NUM_TASKS": "5",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "2",
        "SLURM_STEP_NODELIST": "cn[1-3]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
        "SLURM_TASKS_PER_NODE": "2(x3)",
        "SLURM_NTASKS_PER_NODE": "2",
    }
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (4, 5, 0, 1)
    assert detect({**env, "SLURM_NODEID": "1"}).local_world_size == 2
    assert tasks_per_node("4(x2),3") == [4, 4, 3]
    with pytest.raises(ValueError, match="SLURM_STEP_TASKS_PER_NODE='2x2'"):
        detect({**env, "SLURM_STEP_TASKS_PER_NODE": "2x2"})
    with pytest.raises(ValueError, match="more than 100,000 nodes"):
        tasks_per_node("1(x999999999)")


def test_open_mpi_wins_over_inherited_slurm_variables() -> None:
    env = {
        "OMPI_COMM_WORLD_RANK": "6",
        "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_LOCAL_RANK": "2",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "gpu[3-4]",
    }
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.launcher) == (6, 8, 2, 4, "mpi")
    assert d.master_addr == "gpu3"


def test_pals_aurora() -> None:
    env = {
        "PALS_RANKID": "13",
        "PALS_LOCAL_RANKID": "1",
        "PALS_LOCAL_SIZE": "12",
        "PMI_SIZE": "24",
        "PBS_JOBID": "998877.aurora-pbs",
    }
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (13, 24, 1, 12)
    assert d.master_addr is None  # resolved from $PBS_NODEFILE at init time
    assert d.master_port == 29500 + 8877 + 1


def test_mpich_pmi_and_pmix() -> None:
    d = detect({"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MASTER_ADDR": "h0"})
    assert (d.rank, d.world_size, d.local_rank, d.master_addr) == (2, 4, 0, "h0")
    d = detect({"PMIX_RANK": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1", "SLURM_NODELIST": "a1"})
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.launcher) == (1, 2, 1, "a1", "mpi")


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="RANK"):
        detect({"RANK": "one", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="outside world size"):
        detect({"RANK": "2", "WORLD_SIZE": "2"})


def test_expand_hostlist() -> None:
    assert expand_hostlist("nid[001-003,007],login1") == ["nid001", "nid002", "nid003", "nid007", "login1"]
    assert expand_hostlist("x[8-10]-ib") == ["x8-ib", "x9-ib", "x10-ib"]
    assert expand_hostlist("a[1-2]b[3-4]") == ["a1b3", "a1b4", "a2b3", "a2b4"]
    assert expand_hostlist("single") == ["single"]


def test_assign_head_groups() -> None:
    assert assign_head_groups(4, [0, 1]) == {0: [0, 1], 1: [2, 3]}
    g = assign_head_groups(7, [3, 1, 2], weights={3: 4.0, 1: 1.0, 2: 1.0})
    assert sorted(r for rs in g.values() for r in rs) == list(range(7))
    assert len(g[3]) > len(g[1]) and all(len(v) >= 1 for v in g.values())
    with pytest.raises(ValueError, match="at least one rank per head"):
        assign_head_groups(2, [0, 1, 2])
