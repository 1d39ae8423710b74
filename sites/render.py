"""Render the batch script a site would submit, without submitting it.

The provider's own template and ``submit`` path are used with the executor's real worker launch command; only
the scheduler call (``sbatch``/``qsub``) is captured instead of run. Values known only once the steering
process runs are shown as placeholders: the interchange port (``INTERCHANGE_PORT``), the run directory
(``runinfo/NNN``) and, when the site's network interface does not exist on this host, its address
(``<hsn0 address>``).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from typing import Any

from sites.configs import make_config
from sites.facts import get_site
from sites.network import InterfaceNotFound, resolve_address

#: Placeholder run directory shown in rendered scripts.
RUN_DIR_PLACEHOLDER = "runinfo/NNN"


@dataclass(frozen=True)
class RenderedJob:
    """One rendered batch job.

    Attributes:
        site: Site name.
        executor: Executor label (``htex`` single-node workers, ``mpi`` multi-node apps).
        script: The batch script text.
        submit_command: The scheduler command Parsl would run (``sbatch …`` / ``qsub -q … -A …``).
        worker_command: The worker-pool command inside the script, before the launcher wraps it.
    """

    site: str
    executor: str
    script: str
    submit_command: str
    worker_command: str


def render_submission(site_name: str, *, executor: str = "htex", **params: Any) -> RenderedJob:
    """Render one block of ``executor`` on ``site_name`` with the recipe's ``params``.

    Args:
        site_name: A Parsl site (``slurm``, ``frontier``, ``perlmutter``, ``aurora``).
        executor: ``htex`` or ``mpi``.
        **params: Keyword arguments of the site's factory (account, partition/queue, walltime, nodes …).

    Raises:
        ValueError: the site submits no batch jobs (local, globus) or has no such executor.
    """
    facts = get_site(site_name)
    if facts.kind != "parsl":
        raise ValueError(f"site {site_name!r} ({facts.kind}) submits no batch script")
    if not params.get("address"):
        try:
            resolve_address(site_name, facts.interface, None)
        except InterfaceNotFound:
            params["address"] = f"<{facts.interface} address>"
    with tempfile.TemporaryDirectory(prefix="campaign-render-") as tmp:
        config = make_config(site_name, run_dir=tmp, **params)
        by_label = {ex.label: ex for ex in config.executors}
        if executor not in by_label:
            raise ValueError(f"site {site_name!r} has no executor {executor!r} (has {', '.join(by_label)})")
        ex: Any = by_label[executor]
        ex.run_dir = RUN_DIR_PLACEHOLDER
        ex.worker_port = "INTERCHANGE_PORT"
        ex.cert_dir = f"{RUN_DIR_PLACEHOLDER}/{ex.label}/certificates" if ex.encrypted else None
        ex.logconf_path = None
        ex.initialize_scaling()
        worker_command = ex._get_launch_command("0")
        provider = ex.provider
        provider.script_dir = tmp
        calls: list[str] = []

        def capture(cmd: str, timeout: float | None = None) -> tuple[int, str, str]:
            calls.append(cmd)
            return 0, ("Submitted batch job 0" if facts.scheduler == "slurm" else "0.pbs"), ""

        provider.execute_wait = capture
        provider.submit(worker_command, 1, f"parsl.{ex.label}.block-0")
        submit = calls[-1]
        script_path = submit.split()[-1]
        with open(script_path) as fh:
            script = fh.read()
        script_dir = f"{RUN_DIR_PLACEHOLDER}/submit_scripts"
        script = script.replace(tmp, script_dir)
        submit = submit.replace(tmp, script_dir)
        worker_command = worker_command.replace(tmp, RUN_DIR_PLACEHOLDER)
    # the job name carries a timestamp; keep it stable for reading and diffing
    script = re.sub(r"(parsl\.\w+\.block-0)\.\d+(\.\d+)?", r"\1", script)
    submit = re.sub(r"(parsl\.\w+\.block-0)\.\d+(\.\d+)?", r"\1", submit)
    return RenderedJob(site_name, executor, script, submit, worker_command)


def render_batch_script(site_name: str, *, executor: str = "htex", **params: Any) -> str:
    """The batch script Parsl's provider would submit for one block (see :func:`render_submission`).

    For PBS sites the account and queue go on the ``qsub`` command line, which Parsl uses; they are also
    shown in a leading comment so the script reads completely.
    """
    job = render_submission(site_name, executor=executor, **params)
    if get_site(site_name).scheduler == "pbspro":
        lines = job.script.split("\n", 1)
        return f"{lines[0]}\n# submitted with: {job.submit_command}\n{lines[1] if len(lines) > 1 else ''}"
    return job.script
