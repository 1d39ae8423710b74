"""The worker: in-process mode for light apps, subprocess mode, and the failure causes it reports."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from campaign.tasks import DriverRef, ExitCause, TaskResult
from campaign.worker import attempt_node_list, run_attempt, run_task, settle, wants_in_process


def test_noop_runs_in_process(make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(payload={"x": 1})
    assert wants_in_process(spec)
    res = TaskResult.model_validate(run_task(spec.model_dump_json()))
    assert res.ok and res.executor == "in-process" and res.result["payload"] == {"x": 1}
    assert res.result["pid"] == os.getpid()  # no Python start-up
    assert not Path(spec.workdir).exists()  # config and result travel by value only


@pytest.mark.parametrize("fail", [None, "error", "bad_input"])
def test_in_process_result_is_exactly_the_models_json(make_spec, fail) -> None:  # type: ignore[no-untyped-def]
    """The in-process path writes TaskResult's JSON dump by hand: same keys, same values, same formats, but for
    the times: Unix seconds, read back as the same instants in UTC."""
    before = time.time()
    out = run_task(make_spec(payload=[1, 2], **({"fail": fail} if fail else {})).model_dump_json())
    res = TaskResult.model_validate(out)
    dumped = res.model_dump(mode="json")
    assert {k: v for k, v in dumped.items() if not k.endswith("_at")} == {
        k: v for k, v in out.items() if not k.endswith("_at")}
    assert before <= out["started_at"] <= out["ended_at"] <= time.time()
    for key in ("started_at", "ended_at"):
        assert getattr(res, key).utcoffset() == timedelta(0)
        assert abs(getattr(res, key).timestamp() - out[key]) < 1e-6
    assert json.loads(json.dumps(out)) == out


def test_in_process_failures_map_like_the_cli(make_spec) -> None:  # type: ignore[no-untyped-def]
    err = TaskResult.model_validate(run_task(make_spec(fail="error").model_dump()))
    assert err.exit_cause is ExitCause.ERROR and err.returncode == 1 and err.result["reason"] == "asked"
    bad = TaskResult.model_validate(run_task(make_spec(sleep_s="x").model_dump()))
    assert bad.exit_cause is ExitCause.ERROR and bad.returncode == 2 and "sleep_s" in bad.error


def test_subprocess_mode_same_result(make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(payload=7)
    res = TaskResult.model_validate(run_task(spec.model_dump(), in_process=False))
    assert res.ok and res.executor is None and res.result["payload"] == 7 and res.returncode == 0
    assert res.result["pid"] != os.getpid()
    assert json.loads((Path(spec.workdir) / "config.json").read_text()) == {"payload": 7}
    assert json.loads((Path(spec.workdir) / "result.json").read_text())["status"] == "ok"


@pytest.mark.parametrize(
    ("config", "resources", "cause"),
    [
        ({"sleep_s": 30}, {"walltime_s": 1}, ExitCause.WALLTIME),
        ({"fail": "signal"}, {}, ExitCause.KILLED),
        ({"fail": "crash"}, {}, ExitCause.ERROR),
    ],
)
def test_subprocess_causes(make_spec, config, resources, cause) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(resources=resources, **config)
    assert not wants_in_process(spec) or not resources
    res = TaskResult.model_validate(run_task(spec.model_dump(), in_process=False))
    assert res.exit_cause is cause


#: What srun (Slurm 22.05) printed when the CI cluster lost the second node of a 2-node step (``.ci/slurm.sh
#: kill-node cn2``); its exit status was 143.
SRUN_NODE_FAILURE = """srun: error: Node failure on cn2
srun: error: Node failure on cn2
slurmstepd-cn1: error: *** STEP 3.0 ON cn1 CANCELLED AT 2026-12-05T01:20:21 DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***
srun: Job step aborted: Waiting up to 7 seconds for job step to finish.
srun: error: cn1: task 0: Terminated
"""


#: What srun printed in CI when a one-minute block's warning (``--signal=USR1@30``) reached two ranks still
#: starting up on a loaded host, before they installed their handler.
SRUN_WARNED_DURING_STARTUP = "srun: error: cn1: tasks 0-1: User defined signal 1\n"


@pytest.mark.parametrize(("stderr", "returncode", "cause"), [
    (SRUN_NODE_FAILURE, 143, ExitCause.NODE_LOST),
    (SRUN_WARNED_DURING_STARTUP, 138, ExitCause.WALLTIME),  # the block ran out: resumed in the next, free
    ("Traceback (most recent call last):\nValueError: bad\nsrun: error: cn1: task 0: Exited with exit code 1\n",
     1, ExitCause.ERROR),
    (SRUN_NODE_FAILURE, 0, ExitCause.ERROR),  # exit 0 without a result file: not a node failure
])
def test_a_launcher_that_lost_a_node_is_node_lost(make_spec, tmp_path: Path, stderr: str, returncode: int,
                                                  cause: ExitCause) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(resources={"nodes": 2, "ranks_per_node": 1})
    Path(spec.workdir).mkdir(parents=True)
    out, err = tmp_path / "a.out", tmp_path / "a.err"
    out.write_text("")
    err.write_text(stderr)
    res = TaskResult.model_validate(settle(spec, returncode, ExitCause.OK, None, None, out, err))
    assert res.exit_cause is cause


def test_a_multi_node_attempt_records_its_nodes(make_spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mpi, single = make_spec(resources={"nodes": 2, "ranks_per_node": 2}), make_spec()
    parsl_env = {"PARSL_MPI_NODELIST": "cn1,cn3", "SLURM_JOB_NODELIST": "cn[1-3]"}
    assert attempt_node_list(mpi, parsl_env) == "cn1,cn3"  # the task's share of the block, not the whole block
    assert attempt_node_list(mpi, {"SLURM_JOB_NODELIST": "cn[1-3]"}) == "cn[1-3]"
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x1000c0s0b0n0\nx1000c0s0b0n0\nx1000c0s1b0n0\n")  # PBS: one line per rank
    assert attempt_node_list(mpi, {"PBS_NODEFILE": str(nodefile)}) == "x1000c0s0b0n0,x1000c0s1b0n0"
    assert attempt_node_list(mpi, {}) is None
    assert attempt_node_list(single, parsl_env) is None  # a single-node task: its host says where it ran


def test_run_attempt_returns_the_result_as_json_text(make_spec) -> None:  # type: ignore[no-untyped-def]
    """What crosses Parsl is the TaskResult's JSON text (cheap for dill), the same result run_task returns."""
    text = run_attempt(make_spec(payload={"a": [1, 2]}).model_dump_json())
    assert isinstance(text, str)
    res = TaskResult.model_validate_json(text)
    assert res.ok and res.result["payload"] == {"a": [1, 2]}
    sent, read = json.loads(text), res.model_dump(mode="json")
    assert {k: v for k, v in sent.items() if not k.endswith("_at")} == {
        k: v for k, v in read.items() if not k.endswith("_at")}
    assert res.started_at.timestamp() == pytest.approx(sent["started_at"], abs=1e-6)


# ------------------------------------------------------------------------------------------------- fencing
def _driver(tmp_path: Path) -> DriverRef:
    """This process as a live driver, its lease file written."""
    from campaign.lease import this_driver, write_lease_file

    ref = this_driver(tmp_path, "a" * 32)
    write_lease_file(ref)
    return ref


def test_an_attempt_of_a_gone_or_superseded_driver_does_not_start(make_spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from campaign.lease import this_driver, write_lease_file

    live = _driver(tmp_path)
    gone = live.model_copy(update={"pid": 2**22 + 1})  # above the kernel's pid limit: never a live process
    for in_process in (True, False):
        spec = make_spec(payload=1).model_copy(update={"driver": live})
        assert TaskResult.model_validate(run_task(spec.model_dump(), in_process=in_process)).ok
        res = TaskResult.model_validate(run_task(spec.model_copy(update={"driver": gone}).model_dump(),
                                                 in_process=in_process))
        assert res.exit_cause is ExitCause.NODE_LOST and "is gone" in (res.error or "")
    write_lease_file(this_driver(tmp_path, "b" * 32))  # a newer driver took the campaign over
    spec = make_spec(payload=1).model_copy(update={"driver": live})
    for in_process in (True, False):
        res = TaskResult.model_validate(run_task(spec.model_dump(), in_process=in_process))
        assert res.exit_cause is ExitCause.NODE_LOST and "newer driver" in (res.error or "")
    assert not (Path(spec.workdir) / "attempt1.proc.json").exists()  # the claim is withdrawn


def test_a_running_attempt_stops_when_a_newer_driver_takes_over(make_spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    from campaign.lease import this_driver, write_lease_file

    live = _driver(tmp_path)
    spec = make_spec(sleep_s=60).model_copy(update={"driver": live})
    threading.Timer(1.5, lambda: write_lease_file(this_driver(tmp_path, "c" * 32))).start()
    t0 = time.monotonic()
    res = TaskResult.model_validate(run_task(spec.model_dump(), in_process=False))
    assert time.monotonic() - t0 < 20
    assert res.exit_cause is ExitCause.NODE_LOST and "newer driver" in (res.error or "")
