"""Shared helpers for the dispatch tests."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from campaign.tasks import TaskSpec


@pytest.fixture
def make_spec(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Build a TaskSpec for a campaign app in its own workdir under tmp_path."""
    counter = iter(range(10_000))

    def _make(app: str = "campaign.apps.noop", **config: Any) -> TaskSpec:
        resources = config.pop("resources", {})
        return TaskSpec(
            kind="noop", app=app, workdir=str(tmp_path / f"t{next(counter)}"), config=config, resources=resources
        )

    return _make


@dataclass(frozen=True)
class SlurmCluster:
    """The CI's multi-node Slurm (``.ci/slurm.sh start``): every node a network namespace of this host.

    Attributes:
        address: The address compute nodes reach this host on (the interchange's ``address``).
        nodes: The node names, e.g. ``("cn1", "cn2", "cn3")``.
    """

    address: str
    nodes: tuple[str, ...]

    def kill_node(self, name: str) -> None:
        """Lose ``name`` as hardware is lost: its slurmd and every process on it SIGKILLed."""
        subprocess.run(["bash", str(SLURM_SH), "kill-node", name], check=True, capture_output=True, timeout=60)

    def revive_node(self, name: str) -> None:
        """Start ``name``'s slurmd again and wait until Slurm has the node back in service."""
        subprocess.run(["bash", str(SLURM_SH), "revive-node", name], check=True, capture_output=True, timeout=120)


SLURM_SH = Path(__file__).resolve().parents[2] / ".ci" / "slurm.sh"


@pytest.fixture
def slurm_cluster() -> SlurmCluster:
    """The running cluster's facts, as ``.ci/slurm.sh facts`` prints them (skip when there is no cluster)."""
    out = subprocess.run(["bash", str(SLURM_SH), "facts"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        if os.environ.get("CAMPAIGN_REQUIRE_SLURM") == "1":
            pytest.fail(f"no cluster facts from .ci/slurm.sh facts: {out.stderr}")
        pytest.skip("no Slurm cluster started by .ci/slurm.sh")
    facts = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        facts[key] = " ".join(shlex.split(value))
    return SlurmCluster(address=facts["CAMPAIGN_SLURM_ADDRESS"], nodes=tuple(facts["CAMPAIGN_SLURM_NODES"].split()))
