"""Fixtures of the reliability suite: a tiny preprocess campaign recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Seven tasks: three + two generation shards, then one preprocessing task per dataset.
TINY_RECIPE = """\
campaign: {name}
site: {{name: local, workers: 2}}
workdir: runs
datasets:
  - {{name: demo-emt, count: 9, shards: 3}}
  - {{name: demo-gfn2, count: 4, shards: 2}}
stages:
  preprocess: {{cutoff: 4.5, max_neighbours: 12}}
"""
TINY_TASKS = 7


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A recipe of seven small tasks (about 30 s of work on two cores)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(name="tiny"))
    return path
