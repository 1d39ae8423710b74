"""The import directions of ARCHITECTURE.md, enforced by import-linter contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    out = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" not in out.stdout.lower().replace("0 broken", "")


def test_recipe_families_match_the_models() -> None:
    from campaign.recipe import FAMILIES
    from models.nn import FAMILIES as MODEL_FAMILIES

    assert tuple(FAMILIES) == tuple(MODEL_FAMILIES)


def test_recipe_hyperparameter_names_match_the_models() -> None:
    from campaign.recipe import FAMILY_MODEL_KEYS, MODEL_KEYS
    from models.nn.model import COMMON_DEFAULTS, FAMILY_DEFAULTS

    assert set(COMMON_DEFAULTS) - {"heads"} == MODEL_KEYS  # heads come from the datasets, never searched
    assert {f: set(d) for f, d in FAMILY_DEFAULTS.items()} == {f: set(k) for f, k in FAMILY_MODEL_KEYS.items()}
