"""The app contracts: importable without the model stack, and what the stages send is what the apps accept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.appio import BadInput
from models.contracts import field_name
from models.contracts.hyperparams import FAMILIES, FAMILY_SCHEMAS, parse_hyperparameters
from models.contracts.screen import ScreenConfig
from models.contracts.train import TrainConfig, TrainResult

REPO = Path(__file__).resolve().parents[3]


def test_contracts_import_without_torch_numpy_or_pyg() -> None:
    """A login node validates recipes and builds app configs without the model stack."""
    code = ("import sys; import models.contracts.train, models.contracts.screen, models.contracts.finetune, "
            "models.contracts.preprocess, models.contracts.demo, campaign.recipe; "
            "heavy = sorted(m for m in ('torch', 'numpy', 'torch_geometric', 'e3nn', 'adios2') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_fills_its_defaults_and_round_trips(family: str) -> None:
    full = parse_hyperparameters({"family": family.upper(), "hidden": 32}).model_dump(mode="json")
    assert full["family"] == family and full["hidden"] == 32
    assert parse_hyperparameters(full).model_dump(mode="json") == full  # a checkpoint's config rebuilds the same


def test_family_fields_differ_where_the_families_do() -> None:
    assert "correlation" in FAMILY_SCHEMAS["mace"].model_fields
    assert "correlation" not in FAMILY_SCHEMAS["painn"].model_fields
    with pytest.raises(BadInput, match=r"field 'correlation': unknown field for family 'painn'"):
        parse_hyperparameters({"family": "painn", "correlation": 2})


def test_direct_forces_adds_the_forces_head_once() -> None:
    cfg = parse_hyperparameters({"family": "schnet", "forces": "direct"}).model_dump(mode="json")
    assert cfg["node_heads"] == [{"name": "forces", "kind": "vector"}]
    assert parse_hyperparameters(cfg).model_dump(mode="json")["node_heads"] == cfg["node_heads"]


def test_train_config_carries_a_typed_model() -> None:
    cfg = TrainConfig.model_validate({"data_root": "/d", "datasets": ["x"], "output_dir": "/o",
                                      "model": {"family": "MACE", "correlation": 1}})
    assert cfg.model is not None and cfg.model.family == "mace" and cfg.model.correlation == 1
    with pytest.raises(ValueError, match="correlation"):
        TrainConfig.model_validate({"data_root": "/d", "datasets": ["x"], "output_dir": "/o",
                                    "model": {"family": "mace", "correlation": 5}})


def test_results_refuse_unknown_fields() -> None:
    """A result that drifted from its contract is caught where it is read, with the field named."""
    with pytest.raises(ValueError, match="surprise"):
        TrainResult.model_validate({"surprise": 1})


def test_screen_config_refuses_an_uncertainty_cap_without_an_ensemble() -> None:
    with pytest.raises(ValueError, match="ensemble"):
        ScreenConfig.model_validate({"models": [{"checkpoint": "a.pt"}], "output": "o.bp", "max_uncertainty": 0.1,
                                     "source": {"kind": "generator", "count": 3}})


def test_error_locations_read_as_people_write_them() -> None:
    assert field_name(("datasets", 0, "name")) == "datasets[0].name"
    assert field_name(()) == "(top level)"
