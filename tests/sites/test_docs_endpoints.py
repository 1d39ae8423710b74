"""The Globus Compute endpoint configurations in docs/sites.md load with the endpoint's own loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "sites.md"
BLOCKS = dict(re.findall(r"<!-- endpoint-yaml: ([\w-]+) -->\n```yaml\n(.*?)```", DOC.read_text(), re.S))


def test_every_site_documented() -> None:
    assert {"frontier", "frontier-mpi", "perlmutter", "aurora"} <= set(BLOCKS)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_endpoint_yaml_loads(name: str) -> None:
    pytest.importorskip("globus_compute_endpoint")
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    text = BLOCKS[name].replace("ifname: hsn0", "ifname: lo")  # this host has no Slingshot interface
    config = load_config_yaml(text)
    engine = config.engine
    provider = engine.executor.provider
    expected = {"frontier": "SlurmProvider", "frontier-mpi": "SlurmProvider", "perlmutter": "SlurmProvider",
                "aurora": "PBSProProvider"}[name]
    assert type(provider).__name__ == expected
    if name == "aurora":
        assert len(engine.executor.available_accelerators) == 12
    if name == "frontier-mpi":
        assert engine.executor.enable_mpi_mode and engine.executor.mpi_launcher == "srun"
