"""Site name → a fresh ``parsl.Config``: the one entry point the dispatcher and the CLI use.

The recipe's ``site:`` section becomes the keyword arguments (``make_config("frontier", account="ABC123",
nodes_per_block=2)``). Unknown keywords fail with a message naming the site and the accepted keys.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from parsl.config import Config

from sites.aurora import aurora_config
from sites.facts import get_site
from sites.frontier import frontier_config
from sites.local import local_config, threads_config
from sites.perlmutter import perlmutter_config
from sites.slurm import slurm_config

FACTORIES: dict[str, Callable[..., Config]] = {
    "local": local_config,
    "threads": threads_config,
    "slurm": slurm_config,
    "frontier": frontier_config,
    "perlmutter": perlmutter_config,
    "aurora": aurora_config,
}


def accepted_params(site_name: str) -> list[str]:
    """Keyword arguments the factory of ``site_name`` accepts (including the generic Slurm ones)."""
    names = [p for p in inspect.signature(FACTORIES[site_name]).parameters if p != "slurm_options"]
    if site_name in ("frontier", "perlmutter"):
        names += [p for p in inspect.signature(slurm_config).parameters if p not in names and p != "site"]
    return names


def make_config(site_name: str, **params: Any) -> Config:
    """A fresh ``Config`` for ``site_name`` built from the recipe's ``site:`` parameters.

    Raises:
        KeyError: unknown site.
        TypeError: a parameter the site's factory does not accept, or a required one missing (named).
    """
    facts = get_site(site_name)
    if site_name not in FACTORIES:
        raise KeyError(f"site {site_name!r} is a {facts.kind} site and has no Parsl configuration")
    allowed = set(accepted_params(site_name))
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TypeError(
            f"site {site_name!r}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
        )
    missing = [k for k in facts.required if params.get(k) in (None, "")]
    if missing:
        raise TypeError(f"site {site_name!r}: missing required parameter(s) {', '.join(missing)}")
    return FACTORIES[site_name](**params)
