"""Packaging: pyproject lists every import package, and the data files a non-editable install needs exist."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for root in ("campaign", "models", "db", "sites"):
        for init in (REPO / root).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(REPO).parts))
    found.add("campaign.recipes")
    assert found == listed, f"add to / remove from [tool.setuptools] packages: {sorted(found ^ listed)}"
    assert cfg["package-dir"]["campaign.recipes"] == "recipes"


def test_shipped_data_files_exist() -> None:
    assert (REPO / "recipes" / "hpo.yaml").is_file()
    assert list((REPO / "db" / "queries").glob("*.sql"))
    assert list((REPO / "db" / "migrations" / "versions").glob("0*.py"))
    assert (REPO / "db" / "migrations" / "script.py.mako").is_file()
    assert (REPO / "models" / "datasets.yaml").is_file()
