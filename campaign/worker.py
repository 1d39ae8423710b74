"""Worker-side execution of one :class:`~campaign.tasks.TaskSpec`.

Runs on compute nodes (inside a Parsl worker, a Globus Compute endpoint or a plain subprocess). It never
opens the campaign database: it writes the app's config, launches the app, and returns a
:class:`~campaign.tasks.TaskResult` by value. Only the standard library and :mod:`campaign.tasks` are used so
that the function pickles and imports cheaply on the worker.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from campaign.attempt_files import IN_PROCESS_PACKAGE, attempt_result_file, process_file
from campaign.oom import memory_cgroup_dir, oom_kills
from campaign.processes import pid_exists, process_alive, process_start_ticks
from campaign.tasks import DriverRef, ExitCause, TaskResult, TaskSpec, utcnow
from models.appio import OOM_EXCEPTIONS, OOM_REASON, PREEMPTED_STOP
from models.atomic_files import write_json_atomic
from models.contracts import AppFailure, app_failure

#: Environment variables that carry the batch job id, per scheduler.
BATCH_JOB_ID_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "COBALT_JOBID", "FLUX_JOB_ID")

#: Exit status an app uses for "bad input" (mirrors the CLI's convention).
BAD_INPUT_EXIT = 2

#: What a parallel launcher prints on stderr when a node of its job step was lost: Slurm's srun and slurmstepd,
#: Open MPI's runtime (ORTE up to 4.x, PRRTE from 5.0). An attempt whose launcher failed with one of these is a
#: lost node (retried without charge), not an app error.
NODE_FAILURE_MARKERS = (
    "srun: error: Node failure on",
    "DUE TO NODE FAILURE",
    "has lost communication with a remote daemon",
)

#: What srun prints when the ranks of a step died of the block's warning signal (``--signal=USR1@N``) before they
#: installed their handler (a rank still starting up near the end of a short block): the block ran out.
WARNING_SIGNAL_MARKERS = ("User defined signal 1",)

#: Bytes of a PBS node file read at most (one host name per rank: bounded against a malformed file).
_MAX_NODEFILE_BYTES = 1 << 20


def batch_job_id(environ: dict[str, str] | None = None) -> str | None:
    """The id of the batch job this process runs in, if any."""
    env = os.environ if environ is None else environ
    for var in BATCH_JOB_ID_VARS:
        if env.get(var):
            return env[var]
    return None


def attempt_node_list(spec: TaskSpec, environ: dict[str, str] | None = None) -> str | None:
    """The nodes a multi-rank attempt runs on, as its scheduler names them; ``None`` for a single-node task
    (its ``host`` says where it ran) or outside a batch job.

    Parsl's MPI mode hands each task its share of the block (``PARSL_MPI_NODELIST``, comma-separated); otherwise
    the batch job's allocation: ``SLURM_JOB_NODELIST`` (Slurm's compact form, e.g. ``cn[1-2]``) or the distinct
    hosts of ``PBS_NODEFILE`` (Aurora, Polaris), comma-separated.
    """
    if not spec.resources.is_mpi:
        return None
    env = os.environ if environ is None else environ
    for var in ("PARSL_MPI_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(var):
            return env[var][:2000]
    nodefile = env.get("PBS_NODEFILE")
    if nodefile:
        try:
            with open(nodefile, encoding="utf-8", errors="replace") as fh:
                hosts = fh.read(_MAX_NODEFILE_BYTES).split()
        except OSError:
            return None
        return ",".join(dict.fromkeys(hosts))[:2000] or None
    return None


def launcher_lost_a_node(stderr_text: str) -> bool:
    """True when the launcher's stderr says a node of the job step was lost (:data:`NODE_FAILURE_MARKERS`)."""
    return any(marker in stderr_text for marker in NODE_FAILURE_MARKERS)


def _tail(path: Path, max_chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]


def app_command(spec: TaskSpec, launcher: Sequence[str] = ()) -> list[str]:
    """The argv that runs ``spec``'s app, behind ``launcher`` (e.g. ``srun -N 2 --ntasks-per-node 4``)."""
    workdir = Path(spec.workdir)
    return [
        *launcher,
        sys.executable,
        "-m",
        spec.app,
        "--config",
        str(workdir / "config.json"),
        "--result",
        str(workdir / "result.json"),
    ]


def local_launcher(spec: TaskSpec) -> list[str]:
    """Launcher for a multi-rank app on this node only: torchrun in standalone mode."""
    if spec.resources.nodes != 1:
        raise ValueError("the local launcher runs single-node apps only")
    if spec.resources.ranks_per_node == 1:
        return []
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={spec.resources.ranks_per_node}",
        "--no-python",
    ]


#: ``app`` -> its ``run_in_process`` if it declares ``IN_PROCESS = True`` (else ``None``), per worker process: a
#: worker runs thousands of tasks of the same few apps.
_IN_PROCESS_ENTRY: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]] | None] = {}


def _in_process_entry(app: str) -> Callable[[dict[str, Any], Path], dict[str, Any]] | None:
    """The app's ``run_in_process`` when it may run inside the worker (:data:`IN_PROCESS_PACKAGE`, declares
    ``IN_PROCESS = True``), else ``None``; looked up once per app in this process."""
    if app in _IN_PROCESS_ENTRY:
        return _IN_PROCESS_ENTRY[app]
    entry = None
    if app.startswith(IN_PROCESS_PACKAGE):
        try:
            module = importlib.import_module(app)
        except ImportError:
            return None  # not cached: it may become importable (a path added later)
        run = getattr(module, "run_in_process", None)
        entry = run if getattr(module, "IN_PROCESS", False) and callable(run) else None
    _IN_PROCESS_ENTRY[app] = entry
    return entry


def wants_in_process(spec: TaskSpec) -> bool:
    """Whether ``spec`` can run inside this process: a single-rank app of :data:`IN_PROCESS_PACKAGE` that
    declares ``IN_PROCESS = True``, with no walltime to enforce and no extra environment to isolate."""
    if spec.resources.is_mpi or spec.resources.walltime_s is not None or spec.env:
        return False
    return _in_process_entry(spec.app) is not None


def _run_in_process(app: str, config: dict[str, Any],
                    cfg_path: Path) -> tuple[ExitCause, int, dict[str, Any], str | None]:
    """Call the app's ``run_in_process(config, config_path)``; map its exceptions like the CLI contract does.

    Nothing is written: config and result travel by value (the steering process records both). The app may
    write its own outputs under the workdir (``cfg_path.parent``), creating it when it does.
    """
    # in_process=True for an app that does not declare IN_PROCESS: it must still offer run_in_process
    run = _in_process_entry(app) or importlib.import_module(app).run_in_process
    try:
        payload = {"status": "ok", **run(config, cfg_path)}
        cause, rc, err = ExitCause.OK, 0, None
    except Exception as exc:  # the app's failure is the attempt's result, never the worker's
        reason = getattr(exc, "reason", None)
        if type(exc).__name__ == "BadInput":
            rc, reason = BAD_INPUT_EXIT, "bad_input"
        elif type(exc).__name__ in OOM_EXCEPTIONS:
            rc, reason = 1, OOM_REASON
        else:
            rc, reason = 1, reason or type(exc).__name__
        payload = AppFailure(reason=reason, message=str(exc)).model_dump()
        cause = ExitCause.OOM if reason == OOM_REASON else ExitCause.ERROR
        err = f"{reason}\n" + "".join(traceback.format_exception(exc))[-4000:]
    return cause, rc, payload, err


@functools.cache
def _where() -> tuple[str, str | None]:
    """This process's host name and batch job id, looked up once: neither changes while a worker process lives."""
    return socket.gethostname(), batch_job_id()


def _in_process_attempt(task_id: str, attempt: int, app: str, config: dict[str, Any],
                        workdir: str) -> dict[str, Any]:
    """Run an attempt in this process: its :class:`TaskResult` as ``model_dump(mode="json")`` would give it, but
    for the start and end times, which are Unix times (seconds, UTC; ``TaskResult`` reads them as datetimes)."""
    started, cpu = time.time(), time.thread_time()
    cause, rc, payload, err = _run_in_process(app, config, Path(workdir, "config.json"))
    cpu = time.thread_time() - cpu  # this thread's CPU: the app ran in it (its own threads not counted)
    host, job = _where()
    # written out rather than built and dumped through the model: the steering process validates what comes
    # back (the trust boundary)
    return {"task_id": task_id, "attempt": attempt, "exit_cause": cause.value, "returncode": rc,
            "result": payload, "error": err, "host": host, "batch_job_id": job, "node_list": None,
            "executor": "in-process",
            "started_at": started, "ended_at": time.time(), "stdout_path": None, "stderr_path": None,
            "cpu_seconds": cpu}


def run_attempt(
    spec_json: str | dict[str, Any],
    launcher_env: str | None = None,
    in_process: bool | None = None,
    parsl_resource_specification: dict[str, Any] | None = None,
) -> str:
    """Run one attempt inside a Parsl worker and return its :class:`TaskResult` as JSON text.

    Args:
        spec_json: The task, as JSON text or a dict.
        launcher_env: Name of an environment variable holding the launcher prefix (``PARSL_MPI_PREFIX`` in
            Parsl's MPI mode, set by the worker pool for each task); ``None`` uses the local launcher.
        in_process: See :func:`run_task`.
        parsl_resource_specification: Parsl passes the task's resource specification to the function; the
            launcher prefix in ``launcher_env`` already carries it, so it is not used here.

    Returns:
        The attempt's :class:`TaskResult`, success or failure, as JSON text: Parsl serializes results with dill,
        whose pure-Python pickler is several times slower on a dict than on a string.
    """
    launcher = os.environ[launcher_env] if launcher_env else None
    return json.dumps(run_task(spec_json, launcher, in_process=in_process))


def run_task(
    spec_json: str | dict[str, Any],
    launcher: Sequence[str] | str | None = None,
    *,
    in_process: bool | None = None,
) -> dict[str, Any]:
    """Run one task and return its :class:`TaskResult` as a JSON-able dict.

    Args:
        spec_json: The task, as JSON text or a dict (what crosses Parsl / Globus Compute).
        launcher: The parallel launcher prefix (a list, or a shell string such as Parsl's
            ``$PARSL_MPI_PREFIX``). ``None`` picks :func:`local_launcher`.
        in_process: Run the app inside this process (``run_in_process``) instead of ``python -m``: ``None``
            decides with :func:`wants_in_process` (light single-rank apps only), ``False`` never,
            ``True`` always (the app must offer ``run_in_process``; single rank only).

    Returns:
        ``TaskResult.model_dump(mode="json")`` (an in-process attempt's start and end as Unix times: see
        :func:`_in_process_attempt`). Never raises for app failures: they come back as ``exit_cause`` error /
        walltime / killed with the tail of stderr.
    """
    spec = TaskSpec.model_validate_json(spec_json) if isinstance(spec_json, str) else TaskSpec.model_validate(spec_json)
    inproc = wants_in_process(spec) if in_process is None else in_process
    if inproc and launcher is None:
        if spec.resources.is_mpi:
            raise ValueError(f"task {spec.task_id}: a multi-rank app cannot run in-process")
        fenced = fence_violation(spec.driver)
        if fenced is not None:
            return _fenced_result(spec, fenced)
        return _in_process_attempt(spec.task_id, spec.attempt, spec.app, spec.config, spec.workdir)

    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # claim the attempt before checking the fence: a driver that takes the campaign over after the check passed
    # finds this file (with this worker alive) and adopts the attempt rather than starting it again
    proc_file = process_file(workdir, spec.attempt)
    write_json_atomic(proc_file, {"host": socket.gethostname(), "pid": None, "worker_pid": os.getpid(),
                                  "started_at": utcnow().isoformat(), "attempt": spec.attempt})
    fenced = fence_violation(spec.driver)
    if fenced is not None:
        proc_file.unlink(missing_ok=True)
        return _fenced_result(spec, fenced)
    cfg_path = workdir / "config.json"
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec.config, indent=2, sort_keys=True))
    os.replace(tmp, cfg_path)
    result_path = workdir / "result.json"
    if result_path.exists():  # a stale result from an earlier attempt must not be mistaken for this one
        result_path.unlink()

    if launcher is None:
        prefix: list[str] = local_launcher(spec)
    elif isinstance(launcher, str):
        prefix = shlex.split(launcher)
    else:
        prefix = list(launcher)
    argv = app_command(spec, prefix)
    stdout_path = workdir / f"attempt{spec.attempt}.out"
    stderr_path = workdir / f"attempt{spec.attempt}.err"
    env = {**os.environ, **spec.env, "CAMPAIGN_TASK_ID": spec.task_id, "PYTHONUNBUFFERED": "1"}
    started = utcnow()
    cause = ExitCause.OK
    returncode: int | None
    fenced = None
    cgroup = memory_cgroup_dir()
    kills_before = oom_kills(cgroup)
    usage: Usage | None = None
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=workdir, start_new_session=True)
        _RUNNING_GROUPS.add(proc.pid)
        write_json_atomic(proc_file, {"host": socket.gethostname(), "pid": proc.pid, "pgid": proc.pid,
                                      "start_ticks": process_start_ticks(proc.pid), "worker_pid": os.getpid(),
                                      "started_at": started.isoformat(), "attempt": spec.attempt})
        deadline = None if spec.resources.walltime_s is None else time.monotonic() + spec.resources.walltime_s
        beat = time.monotonic()
        try:
            while True:  # wait, checking the fence, and touching the process file as a heartbeat
                step = FENCE_CHECK_S if deadline is None else max(0.0, min(FENCE_CHECK_S, deadline - time.monotonic()))
                try:
                    returncode, usage = _wait_with_usage(proc, step)
                    break
                except subprocess.TimeoutExpired:
                    fenced = fence_violation(spec.driver)
                    if fenced is not None or (deadline is not None and time.monotonic() >= deadline):
                        returncode = _stop_group(proc)
                        cause = ExitCause.NODE_LOST if fenced is not None else ExitCause.WALLTIME
                        break
                    if time.monotonic() - beat >= HEARTBEAT_S:
                        beat = time.monotonic()
                        with contextlib.suppress(OSError):
                            os.utime(proc_file)
        finally:
            _RUNNING_GROUPS.discard(proc.pid)
    kills_after = oom_kills(cgroup)
    oom_killed = (returncode == -signal.SIGKILL and kills_before is not None and kills_after is not None
                  and kills_after > kills_before)
    out_result = settle(spec, returncode, cause, started, utcnow(), stdout_path, stderr_path, oom_killed=oom_killed,
                        usage=usage)
    if fenced is not None:
        out_result["error"] = f"stopped: {fenced}"
    write_json_atomic(attempt_result_file(workdir, spec.attempt), out_result)
    return out_result


#: User + system CPU seconds of a finished app: the process and every descendant it waited for. (Its ``ru_maxrss``
#: is not used: on Linux a child's starts from the parent's resident set at fork, the worker's size.)
Usage = float


def _wait_with_usage(proc: subprocess.Popen[Any], timeout_s: float) -> tuple[int, Usage]:
    """Wait up to ``timeout_s`` for ``proc`` to end, reaping it with ``wait4`` so that its resource usage comes
    with its exit status (``Popen.wait`` drops it); then ``(returncode, usage)``.

    Raises:
        subprocess.TimeoutExpired: still running after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.0005
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage.ru_utime + rusage.ru_stime
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def _stop_group(proc: subprocess.Popen[Any]) -> int:
    """Stop the app's process group (SIGTERM, then SIGKILL after 30 s) and return its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


# ------------------------------------------------------------------------------------------------- fencing
#: Seconds between two checks of a running attempt's fence.
FENCE_CHECK_S = 1.0

#: Process groups of the apps this worker process runs now (stopped when its driver is gone).
_RUNNING_GROUPS: set[int] = set()


def fence_violation(driver: DriverRef | None) -> str | None:
    """Why an attempt submitted by ``driver`` must not start or go on, or ``None`` when it may.

    On the driver's host the driver process itself must be alive; anywhere, the campaign's lease file (where the
    filesystem is shared) must still name ``driver``'s token.

    A worker checks this before every task and every second of a running one, so both checks are kept cheap
    (a few microseconds, against the ~20 us of a no-op task): the process check is ``kill(pid, 0)``, with the
    process's start time (which tells a reused pid apart, but costs a read of ``/proc``) compared at most once
    a second; the lease file is read again only when its ``stat`` changes.
    """
    if driver is None:
        return None
    if driver.host == _where()[0] and not _driver_alive(driver.pid, driver.start_ticks):
        return f"its driver (pid {driver.pid} on {driver.host}) is gone"
    if driver.lease_file:
        token = _lease_token(driver.lease_file)
        if token is not None and token != driver.token:
            return "a newer driver has taken the campaign over"
    return None


#: ``(pid, start ticks)`` -> when its start time was last found to match (``time.monotonic()``).
_DRIVER_VERIFIED: dict[tuple[int, int | None], float] = {}

#: lease file -> (its ``stat`` key, the token it held).
_LEASE_TOKENS: dict[str, tuple[tuple[int, int, int], str | None]] = {}


def _driver_alive(pid: int, start_ticks: int | None) -> bool:
    if not pid_exists(pid):
        return False
    key = (pid, start_ticks)
    if time.monotonic() - _DRIVER_VERIFIED.get(key, float("-inf")) < 1.0:
        return True
    if not process_alive(pid, start_ticks):
        return False
    _DRIVER_VERIFIED[key] = time.monotonic()
    return True


def _lease_token(path: str) -> str | None:
    """The token in the lease file, or None where it cannot be read (no shared filesystem, or being replaced)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _LEASE_TOKENS.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        token = json.loads(Path(path).read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return None
    _LEASE_TOKENS[path] = (key, token if isinstance(token, str) else None)
    return _LEASE_TOKENS[path][1]


def _fenced_result(spec: TaskSpec, why: str) -> dict[str, Any]:
    """The result of an attempt the fence did not let start (a lost node: retried without charge)."""
    now = utcnow()
    host, job = _where()
    return TaskResult(task_id=spec.task_id, attempt=spec.attempt, exit_cause=ExitCause.NODE_LOST,
                      error=f"not started: {why}", host=host, batch_job_id=job, started_at=now,
                      ended_at=now).model_dump(mode="json")


def watch_driver(pid: int, start_ticks: int | None, interval_s: float = 0.5) -> None:
    """Exit this worker process, stopping the apps it runs, as soon as the driver process ``pid`` is gone.

    The initializer of the local pool's workers: a pool worker would otherwise outlive a killed driver and go
    on taking the tasks already queued to it.
    """
    def _watch() -> None:
        while process_alive(pid, start_ticks):
            time.sleep(interval_s)
        for group in list(_RUNNING_GROUPS):
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=_watch, name="watch-driver", daemon=True).start()


#: Seconds between heartbeats of a running attempt (the process file's mtime).
HEARTBEAT_S = 5.0


def settle(spec: TaskSpec, returncode: int | None, cause: ExitCause, started: Any, ended: Any,
           stdout_path: Path, stderr_path: Path, *, oom_killed: bool = False,
           usage: Usage | None = None) -> dict[str, Any]:
    """The attempt's :class:`TaskResult` from how the app ended and the result file it left.

    ``returncode`` is None when the app's exit status is unknown (an attempt adopted by a new driver after its
    worker died): then the app's own result file decides. ``oom_killed``: the app died by SIGKILL while the
    memory cgroup counted an OOM kill (:mod:`campaign.oom`); that, or an app failure with the reason ``oom``,
    makes the cause ``oom``; a launcher that failed saying a node of its step was lost (:func:`launcher_lost_a_node`)
    makes it ``node_lost``; an app that checkpointed and stopped on the scheduler's warning signal (its result's
    ``stop_reason`` is ``preempted``), or MPI ranks that died of that signal before they could (srun says
    :data:`WARNING_SIGNAL_MARKERS`), make it ``walltime``. ``usage``: the CPU seconds the app's processes used (:func:`_wait_with_usage`), when known.
    """
    result_path = Path(spec.workdir) / "result.json"
    result: dict[str, Any] | None = None
    err_text: str | None = None
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            result = None
            cause = ExitCause.ERROR if cause is ExitCause.OK else cause
            err_text = f"unreadable result file {result_path}: {exc}"
    failure = app_failure(result)
    if cause is ExitCause.OK:
        if oom_killed or (failure is not None and failure.reason == OOM_REASON):
            cause = ExitCause.OOM
        elif returncode is not None and returncode != 0 and launcher_lost_a_node(_tail(stderr_path, 16000)):
            cause = ExitCause.NODE_LOST
        elif (returncode is not None and returncode != 0 and spec.resources.is_mpi
              and any(m in _tail(stderr_path, 16000) for m in WARNING_SIGNAL_MARKERS)):
            cause = ExitCause.WALLTIME
            err_text = ("walltime: ranks died of the block's warning signal before they could checkpoint (still "
                        "starting up near the block's end); the next attempt resumes from the last checkpoint\n"
                        + _tail(stderr_path))
        elif returncode is not None and returncode < 0:
            cause = ExitCause.KILLED
        elif (returncode is not None and returncode != 0) or result is None or failure is not None:
            cause = ExitCause.ERROR
        elif result.get("stop_reason") == PREEMPTED_STOP:
            cause = ExitCause.WALLTIME
    if (cause is ExitCause.WALLTIME and err_text is None and result is not None and failure is None
            and result.get("stop_reason") == PREEMPTED_STOP):
        err_text = (f"preempted: the app checkpointed at step {result.get('steps')} and stopped on the scheduler's "
                    "warning signal (time limit, preemption or requeue); the next attempt resumes there")
    if cause is ExitCause.OOM and err_text is None and oom_killed:
        err_text = "killed by the kernel's OOM killer (the memory cgroup counted an OOM kill)\n" + _tail(stderr_path)
    if cause is not ExitCause.OK and err_text is None:
        err_text = (f"{failure.reason}\n" if failure else "") + _tail(stderr_path)
        if not err_text.strip():
            err_text = f"exit status {returncode} and no result file"
    return TaskResult(
        task_id=spec.task_id,
        attempt=spec.attempt,
        exit_cause=cause,
        returncode=returncode,
        result=result,
        error=err_text,
        host=socket.gethostname(),
        batch_job_id=batch_job_id(),
        node_list=attempt_node_list(spec),
        started_at=started,
        ended_at=ended,
        stdout_path=str(stdout_path),
        stderr_path=str(stderr_path),
        cpu_seconds=usage,
    ).model_dump(mode="json")
