"""Fixtures of the reliability suite: a tiny preprocess campaign recipe, and an existing campaign world."""

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


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """``(root, database URL)``: an existing campaign world in ``tmp_path``, the working directory, with no
    ``CAMPAIGN_DB`` in the environment (see :func:`tests.reliability.world.make_world`)."""
    from tests.reliability.world import make_world

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    return tmp_path, make_world(tmp_path)
