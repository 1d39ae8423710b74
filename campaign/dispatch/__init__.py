"""Dispatchers: how the steering loop gets tasks run and results back by value.

``make_dispatcher(site_name, params, run_dir)`` returns a :class:`Dispatcher`:

* ``local`` — a process pool running :func:`campaign.worker.run_task` (no Parsl start-up);
  ``local`` with ``engine: parsl`` — Parsl's HighThroughputExecutor on loopback; ``threads`` — Parsl threads;
* ``slurm``, ``frontier``, ``perlmutter``, ``aurora`` — Parsl with the site's factory from :mod:`sites`;
* ``globus`` (or any site given an ``endpoint_id``) — Globus Compute.

Only this package imports Parsl and Globus Compute, and only when a dispatcher of that kind is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from campaign.dispatch.base import Dispatcher
from campaign.dispatch.errors import CredentialsMissing, DispatchError
from campaign.dispatch.failures import RetryPolicy

__all__ = [
    "CredentialsMissing",
    "DispatchError",
    "Dispatcher",
    "RetryPolicy",
    "make_dispatcher",
    "retry_policy",
    "site_config_params",
]

#: ``params`` keys read by the dispatcher itself; everything else goes to the site's Parsl factory.
DISPATCH_KEYS = ("engine", "in_process", "endpoint_id", "max_workers", "interactive",
                 "parsl_log_level")

#: ``params`` keys of the retry policy (the steering process applies it when it records an attempt).
POLICY_KEYS = ("retries", "free_retries")


def retry_policy(params: dict[str, Any] | None) -> RetryPolicy:
    """The retry policy of a recipe's ``site:`` section (``retries``: charged retries, default 2;
    ``free_retries``: retries of lost nodes and walltime that cost nothing, default 3)."""
    p = params or {}
    return RetryPolicy(max_retries=int(p.get("retries", 2)), max_free_retries=int(p.get("free_retries", 3)))


def site_config_params(site_name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters of ``sites.configs.make_config`` in a recipe's site section (what a batch job of the site is
    made of): without the retry policy's keys and the dispatcher's own, but ``max_workers`` for the sites whose
    Parsl configuration takes it."""
    p = {k: v for k, v in (params or {}).items() if k not in POLICY_KEYS and k not in DISPATCH_KEYS}
    if site_name in ("local", "threads") and (params or {}).get("max_workers") is not None:
        p["max_workers"] = (params or {})["max_workers"]
    return p


def make_dispatcher(
    site_name: str,
    params: dict[str, Any] | None,
    run_dir: Path,
) -> Dispatcher:
    """Build the dispatcher for a recipe's ``site:`` section.

    Args:
        site_name: A name from :func:`sites.list_sites`.
        params: The site section's parameters. Dispatcher keys: ``engine`` (``process`` | ``parsl``, local
            site only), ``in_process`` (run light apps inside workers; default auto),
            ``endpoint_id`` (Globus Compute), ``max_workers`` (local), ``parsl_log_level`` (``debug`` | ``info`` |
            ``warning``: the level of ``parsl.log``, default ``info``). ``retries`` and ``free_retries`` belong to
            the retry policy (:func:`retry_policy`), not to the dispatcher, and are left out. The rest are keyword
            arguments of the site's factory (account, partition, walltime, nodes_per_block …).
        run_dir: The campaign's run directory; Parsl writes its logs and submit scripts under
            ``run_dir/parsl``.

    Raises:
        KeyError: unknown site.
        TypeError: a parameter the site does not accept or a missing required one.
        CredentialsMissing: Globus Compute without credentials in a non-interactive run.
    """
    from sites.facts import get_site

    facts = get_site(site_name)
    p = {k: v for k, v in (params or {}).items() if k not in POLICY_KEYS}
    in_process = p.pop("in_process", None)
    engine = p.pop("engine", "process" if site_name == "local" else "parsl")
    endpoint_id = p.pop("endpoint_id", None)
    interactive = p.pop("interactive", None)
    max_workers = p.pop("max_workers", None)
    log_level = p.pop("parsl_log_level", None)

    if facts.kind == "globus" or endpoint_id:
        if not endpoint_id:
            raise TypeError(f"site {site_name!r}: missing required parameter endpoint_id")
        from campaign.dispatch.globus_dispatch import GlobusDispatcher

        return GlobusDispatcher(
            str(endpoint_id), in_process=in_process, interactive=interactive
        )
    if site_name == "local" and engine == "process":
        if p:
            raise TypeError(f"site 'local' (process pool): unknown parameter(s) {', '.join(sorted(p))}")
        from campaign.dispatch.local import LocalDispatcher

        return LocalDispatcher(max_workers, in_process=in_process)
    if engine != "parsl":
        raise TypeError(f"site {site_name!r}: engine must be 'process' or 'parsl', got {engine!r}")

    from campaign.dispatch.parsl_dispatch import ParslDispatcher
    from sites.configs import make_config

    parsl_dir = Path(run_dir) / "parsl"
    parsl_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(site_name, run_dir=str(parsl_dir), **site_config_params(site_name, params))
    if log_level is not None:
        from sites.assemble import parsl_logging

        if log_level not in ("debug", "info", "warning"):
            raise TypeError(f"site {site_name!r}: parsl_log_level must be debug, info or warning, got {log_level!r}")
        config.initialize_logging = parsl_logging(log_level)
    return ParslDispatcher(config, in_process=in_process)
