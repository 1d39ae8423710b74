"""The function Globus Compute runs on an endpoint for the campaign.

It is serialized by the SDK's ``ComputeSerializer`` (by source text or by code object), so it is
self-contained: it imports what it needs inside its body and its annotations use built-ins only.
"""


def remote_run_task(spec_json: str, launcher_env: str | None = None, in_process: bool | None = None) -> dict:
    """Run one :class:`~campaign.tasks.TaskSpec` on the endpoint and return its TaskResult dict.

    Args:
        spec_json: The task as JSON.
        launcher_env: Environment variable with the MPI launcher prefix (``PARSL_MPI_PREFIX`` on a
            ``GlobusMPIEngine``), or ``None`` for single-node tasks.
        in_process: See :func:`campaign.worker.run_task`.
    """
    import os

    from campaign.worker import run_task

    launcher = os.environ[launcher_env] if launcher_env else None
    result = run_task(spec_json, launcher, in_process=in_process)
    result["executor"] = result.get("executor") or "globus"
    return result
