"""Globus Compute, offline: the endpoint side runs the bytes the campaign packs, the SDK Executor runs with a
faked cloud client, and a run without credentials fails clearly instead of prompting."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_sdk import Client, Executor
from globus_compute_sdk.sdk.batch import Batch
from globus_compute_sdk.serialize import ComputeSerializer

from campaign.dispatch import CredentialsMissing, make_dispatcher
from campaign.dispatch.globus_dispatch import GlobusDispatcher, check_credentials, pack_task
from campaign.tasks import ExitCause, TaskResult


@pytest.fixture
def no_credentials(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "gc"))


def test_no_credentials_non_interactive_fails_clearly(no_credentials, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CredentialsMissing, match="GLOBUS_COMPUTE_CLIENT_ID") as info:
        make_dispatcher("globus", {"endpoint_id": str(uuid.uuid4()), "interactive": False}, tmp_path)
    assert info.value.exit_code == 2
    assert check_credentials(interactive=True) == "prompt"
    assert check_credentials({"GLOBUS_COMPUTE_CLIENT_ID": "a", "GLOBUS_COMPUTE_CLIENT_SECRET": "b"}) == "client"
    with pytest.raises(CredentialsMissing, match="CLIENT_ID is not"):
        check_credentials({"GLOBUS_COMPUTE_CLIENT_SECRET": "b"})


def test_endpoint_engine_runs_packed_task(tmp_path: Path, make_spec) -> None:  # type: ignore[no-untyped-def]
    """The endpoint side in-process: GlobusComputeEngine (Parsl HTEX on a LocalProvider) executes the exact
    task buffer the SDK would send for a campaign task."""
    from globus_compute_endpoint.engines import GCFuture, GlobusComputeEngine
    from parsl.providers import LocalProvider

    from campaign.dispatch.environment import ensure_env_on_path

    ensure_env_on_path()
    engine = GlobusComputeEngine(
        address="127.0.0.1",
        max_workers_per_node=1,
        heartbeat_period=1,
        heartbeat_threshold=5,
        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
    )
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path / "ep"))
    try:
        serde = ComputeSerializer()
        specs = [make_spec(payload="via-endpoint"), make_spec(fail="error")]
        futs = []
        for spec in specs:
            tid = uuid.uuid4()
            packed = messagepack.pack(Task(task_id=tid, task_buffer=pack_task(spec, serde)))
            fut = GCFuture(tid)
            engine.submit(fut, packed, resource_specification={})
            futs.append(fut)
        results = []
        for fut in futs:
            msg = messagepack.unpack(fut.result(timeout=60))
            assert isinstance(msg, Result) and not msg.is_error, msg
            results.append(TaskResult.model_validate(serde.deserialize(msg.data)))
    finally:
        engine.shutdown()
    ok, failed = results
    assert ok.ok and ok.result["payload"] == "via-endpoint" and ok.executor == "in-process"
    assert failed.exit_cause is ExitCause.ERROR and failed.task_id == specs[1].task_id


class _FakeCloud:
    """Stands in for the Globus Compute web service: keeps registered functions, accepts batches, runs each
    task from its serialized buffers in a thread and resolves the SDK's futures (as the AMQP results would)."""

    def __init__(self) -> None:
        self.serde = ComputeSerializer()
        self.functions: dict[str, str] = {}
        self.pending: dict[str, str] = {}
        self.pool = ThreadPoolExecutor(2)
        self.lock = threading.Lock()

    def client(self) -> Any:
        gcc = mock.Mock(spec=Client)
        gcc.fx_serializer = self.serde

        def register_function(fn: Any, **kw: Any) -> str:
            fid = str(uuid.uuid4())
            self.functions[fid] = self.serde.pack_buffers([self.serde.serialize(fn)])
            return fid

        def create_batch(**kw: Any) -> Batch:
            return Batch(task_group_id=kw.get("task_group_id"), serializer=self.serde)

        def batch_run(endpoint_id: Any, batch: Batch) -> dict[str, Any]:
            tasks: dict[str, list[str]] = {}
            for fid, payloads in batch.prepare()["tasks"].items():
                for payload in payloads:
                    tid = str(uuid.uuid4())
                    with self.lock:
                        self.pending[tid] = self.functions[fid] + payload  # the endpoint's task_buffer
                    tasks.setdefault(fid, []).append(tid)
            return {"tasks": tasks, "task_group_id": str(uuid.uuid4()), "request_id": str(uuid.uuid4()),
                    "endpoint_id": str(endpoint_id)}

        gcc.register_function.side_effect = register_function
        gcc.create_batch.side_effect = create_batch
        gcc.batch_run.side_effect = batch_run
        return gcc

    def watcher(self, *args: Any, **kwargs: Any) -> Any:
        cloud = self

        class _Watcher:
            def __init__(self) -> None:
                self._closed = False

            def start(self) -> None:
                pass

            def is_alive(self) -> bool:
                return not self._closed

            def watch_for_task_results(self, executor: Any, futures: list[Any]) -> int:
                for f in futures:
                    with cloud.lock:
                        buf = cloud.pending.pop(f.task_id)
                    cloud.pool.submit(cloud._run, buf, f)
                return len(futures)

            def shutdown(self, *a: Any, **k: Any) -> None:
                self._closed = True

            def join(self, timeout: float | None = None) -> None:
                pass

            def get_open_futures(self, *a: Any, **k: Any) -> dict[str, Any]:
                return {}

        return _Watcher()

    def _run(self, buf: str, fut: Any) -> None:
        fn, args, kwargs = self.serde.unpack_and_deserialize(buf)
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)


def test_sdk_executor_with_faked_client(tmp_path: Path, make_spec, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cloud = _FakeCloud()
    monkeypatch.setattr("globus_compute_sdk.sdk.executor._ResultWatcher", cloud.watcher)
    executor = Executor(endpoint_id=uuid.uuid4(), client=cloud.client())
    with GlobusDispatcher(str(executor.endpoint_id), executor=executor) as d:
        ok = d.submit(make_spec(payload=[1, 2]))
        failing = make_spec(fail="error", fail_attempts=1)
        second = d.submit(failing)
        assert ok.result(timeout=60).result["payload"] == [1, 2]
        r = second.result(timeout=60)
    assert r.exit_cause is ExitCause.ERROR and r.attempt == 1  # retried by the policy, not here
    assert cloud.functions, "the SDK registered the campaign's remote function"
    cloud.pool.shutdown()
