"""Site facts: importable without Parsl, complete for every machine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sites import get_site, list_sites, site_names
from sites.facts import AURORA_CPU_AFFINITY, AURORA_TILES


def test_facts_import_without_parsl() -> None:
    code = "import sys, sites, sites.facts; sites.list_sites(); print('parsl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_machines_listed() -> None:
    assert {"local", "threads", "slurm", "frontier", "perlmutter", "aurora", "globus"} <= set(site_names())
    assert [s.name for s in list_sites()] == site_names()


def test_machine_facts() -> None:
    frontier, aurora, perl = get_site("frontier"), get_site("aurora"), get_site("perlmutter")
    assert (frontier.scheduler, frontier.launcher, frontier.gpus_per_node) == ("slurm", "srun", 8)
    assert frontier.cores_per_worker * frontier.gpus_per_node == frontier.cores_per_node == 56
    assert frontier.interface == "hsn0" and "account" in frontier.required
    assert (aurora.scheduler, aurora.launcher, aurora.gpus_per_node) == ("pbspro", "mpiexec", 12)
    assert aurora.accelerators == AURORA_TILES and AURORA_TILES[0] == "0.0" and AURORA_TILES[-1] == "5.1"
    assert aurora.workers_per_node == 12
    assert (perl.gpus_per_node, perl.launcher) == (4, "srun")
    assert get_site("globus").required == ("endpoint_id",)


def test_aurora_affinity_is_twelve_disjoint_groups() -> None:
    groups = AURORA_CPU_AFFINITY.removeprefix("list:").split(":")
    assert len(groups) == 12
    cores: list[int] = []
    for g in groups:
        for rng in g.split(","):
            lo, hi = (int(x) for x in rng.split("-"))
            cores += range(lo, hi + 1)
    assert len(cores) == len(set(cores)) == 12 * 16
    assert 0 not in cores and 52 not in cores  # left to the OS, as ALCF documents


def test_unknown_site_names_known_ones() -> None:
    with pytest.raises(KeyError, match="frontier"):
        get_site("summit2")


def test_node_hours_count_the_share_of_a_node_an_attempt_held() -> None:
    from sites.facts import get_site, node_share

    frontier = get_site("frontier")
    assert frontier.gpus_per_node == 8
    assert node_share("frontier", 1, 7, 1) == 1 / 8  # one GCD of eight, 7 of 56 cores
    assert node_share("frontier", 1, frontier.cores_per_node, 1) == 1.0  # all the cores: the whole node
    assert node_share("frontier", 256, 256 * 56, 2048) == 256.0  # multi-node: whole nodes
    assert node_share("perlmutter", 1, get_site("perlmutter").cores_per_node // 2, 0) == 0.5
    assert node_share("local", 1, 1, 0) == 1.0  # node size unknown: whole nodes
    assert node_share("no-such-site", 3, 1, 0) == 3.0
