"""Dispatch through Globus Compute (``globus_compute_sdk.Executor``) to a site's endpoint.

Credentials come from the Globus SDK's own login storage (``~/.globus_compute/storage.db``) or from the
``GLOBUS_COMPUTE_CLIENT_ID``/``GLOBUS_COMPUTE_CLIENT_SECRET`` environment variables; the campaign never
stores nor logs them. Without either, the SDK would prompt for a login code: in a non-interactive run that
would hang, so :func:`check_credentials` fails first with :class:`CredentialsMissing`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from globus_compute_sdk import Executor
from globus_compute_sdk.serialize import ComputeSerializer

from campaign.dispatch.base import Dispatcher
from campaign.dispatch.errors import CredentialsMissing
from campaign.dispatch.globus_remote import remote_run_task
from campaign.dispatch.resources import mpi_resource_specification
from campaign.tasks import TaskSpec

CLIENT_ID_VAR = "GLOBUS_COMPUTE_CLIENT_ID"
CLIENT_SECRET_VAR = "GLOBUS_COMPUTE_CLIENT_SECRET"


def has_stored_tokens() -> bool:
    """Whether the Globus Compute SDK's token storage holds tokens for this user/client (no network)."""
    from globus_compute_sdk.sdk.auth.token_storage import get_token_storage

    storage = get_token_storage()
    try:
        return bool(storage.get_token_data_by_resource_server())
    finally:
        storage.close()


def check_credentials(environ: Mapping[str, str] | None = None, interactive: bool | None = None) -> str:
    """Make sure the SDK will not block on a login prompt.

    Args:
        environ: Environment to read (default ``os.environ``).
        interactive: Whether a person can answer a prompt (default: ``sys.stdin.isatty()``).

    Returns:
        How the SDK will authenticate: ``client`` (environment), ``stored`` (token storage) or ``prompt``.

    Raises:
        CredentialsMissing: no client credentials, no stored tokens, and nobody to answer a prompt; or a
            client secret without its id.
    """
    env = os.environ if environ is None else environ
    cid, secret = env.get(CLIENT_ID_VAR), env.get(CLIENT_SECRET_VAR)
    if cid and secret:
        return "client"
    if secret and not cid:
        raise CredentialsMissing(f"{CLIENT_SECRET_VAR} is set but {CLIENT_ID_VAR} is not; set both or neither")
    if has_stored_tokens():
        return "stored"
    if interactive if interactive is not None else sys.stdin.isatty():
        return "prompt"
    raise CredentialsMissing(
        "Globus Compute has no credentials and this run cannot answer a login prompt: log in once "
        "interactively (python -c 'from globus_compute_sdk import Client; Client()') or set "
        f"{CLIENT_ID_VAR} and {CLIENT_SECRET_VAR} for a client identity"
    )


def pack_task(spec: TaskSpec, serializer: ComputeSerializer | None = None, in_process: bool | None = None) -> str:
    """The ``task_buffer`` an endpoint receives for ``spec``: the registered function's buffer followed by
    the batch's argument buffers, exactly as the SDK's ``Client.register_function`` and ``Batch.add`` pack
    them (used to run the endpoint side offline)."""
    serde = serializer or ComputeSerializer()
    fn = serde.pack_buffers([serde.serialize(remote_run_task)])
    launcher_env = "PARSL_MPI_PREFIX" if spec.resources.is_mpi else None
    args = serde.pack_buffers(
        [serde.serialize((spec.model_dump_json(), launcher_env, in_process)), serde.serialize({})]
    )
    return fn + args


class GlobusDispatcher(Dispatcher):
    """Run tasks on a Globus Compute endpoint.

    Args:
        endpoint_id: The site's endpoint UUID.
        executor: A ready ``globus_compute_sdk.Executor`` (tests inject one with a faked client); by default
            one is created after :func:`check_credentials`.
        in_process: Passed to the worker (``None``: light ``campaign.apps`` in-process).
        interactive: Whether a login prompt can be answered (default: stdin is a tty).
    """

    name = "globus"

    def __init__(
        self,
        endpoint_id: str,
        *,
        executor: Executor | None = None,
        in_process: bool | None = None,
        interactive: bool | None = None,
    ) -> None:
        super().__init__()
        self.endpoint_id = endpoint_id
        self.in_process = in_process
        if executor is None:
            check_credentials(interactive=interactive)
            executor = Executor(endpoint_id=endpoint_id)
        self._executor = executor
        self._mpi_executors: dict[tuple[int, int], Executor] = {}
        self._mpi_lock = threading.Lock()

    def _mpi_executor(self, spec: TaskSpec) -> Executor:
        key = (spec.resources.nodes, spec.resources.ranks_per_node)
        with self._mpi_lock:
            if key not in self._mpi_executors:
                self._mpi_executors[key] = Executor(
                    endpoint_id=self.endpoint_id,
                    client=self._executor.client,
                    # the endpoint's launcher is its own configuration's: no per-rank options are guessed
                    resource_specification=mpi_resource_specification(spec.resources, "endpoint"),
                )
            return self._mpi_executors[key]

    def _launch(self, spec: TaskSpec) -> Future[Any]:
        if spec.resources.is_mpi:
            return self._mpi_executor(spec).submit(remote_run_task, spec.model_dump_json(), "PARSL_MPI_PREFIX", False)
        return self._executor.submit(remote_run_task, spec.model_dump_json(), None, self.in_process)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        for ex in [self._executor, *self._mpi_executors.values()]:
            ex.shutdown(wait=wait, cancel_futures=not wait)
