"""Shared helpers for the dispatch tests."""

from __future__ import annotations

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
