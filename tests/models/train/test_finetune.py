"""Fine-tuning a pre-trained checkpoint on a small new dataset (new head), frozen or not, and the scratch
baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ase.build import bulk

from models import checkpoint
from models.appio import BadInput
from models.contracts.finetune import parse_config
from models.contracts.train import parse_config as parse_train
from models.finetune import finetune
from models.inference import Predictor
from models.train import run
from tests.models.train.emt_data import write_dataset


def _nobles(count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        el, a = [("Ni", 3.52), ("Pd", 3.89), ("Pt", 3.92)][k % 3]
        atoms = bulk(el, "fcc", a=a * rng.uniform(0.97, 1.03), cubic=True)
        atoms.rattle(stdev=0.08, seed=int(rng.integers(1 << 31)))
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def pretrained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.models.train.conftest import TINY_PAINN

    out = tmp_path_factory.mktemp("pre")
    write_dataset(
        out / "stores", "nobles", 7, {"train": _nobles(16, 1), "val": _nobles(6, 2), "test": _nobles(6, 3)}
    )
    cfg = {
        "data_root": str(data_root),
        "datasets": ["metals", "molecules"],
        "batch_size": 4,
        "model": dict(TINY_PAINN),
        "epochs": 2,
        "precision": "fp64",
        "optimizer": {"lr": 0.005},
        "output_dir": str(out / "run"),
    }
    res = run(parse_train(cfg, "pre.json"), "pre.json")
    return {"ckpt": res["checkpoints"]["best"]["path"], "root": str(out / "stores"), "base_root": str(data_root)}


def _ft(pretrained: dict[str, Any], tmp_path: Path, **kw: Any) -> dict[str, Any]:
    cfg = {
        "checkpoint": pretrained["ckpt"],
        "data_root": pretrained["root"],
        "dataset": "nobles",
        "epochs": 3,
        "batch_size": 4,
        "precision": "fp64",
        "output_dir": str(tmp_path / "ft"),
        "optimizer": {"lr": 0.01},
        **kw,
    }
    return finetune(parse_config(cfg, "ft.json"), "ft.json")


def test_frozen_encoder_new_head(pretrained: dict[str, Any], tmp_path: Path) -> None:
    res = _ft(pretrained, tmp_path, freeze_encoder=True)
    assert res["head"] == 7 and set(res["test_metrics"]) == {"7"}
    assert res["test_metrics"]["7"]["force_mae"] > 0 and math_finite(res["test_loss"])
    before = checkpoint.load(pretrained["ckpt"])["model_state"]
    after = checkpoint.load(res["checkpoint"]["path"])
    assert after["model_config"]["heads"] == [0, 1, 7]
    for k, v in before.items():  # encoder and the old heads are untouched
        assert torch.equal(v, after["model_state"][k]), k
    assert any(k.startswith("heads.heads.7.") for k in after["model_state"])
    pred = Predictor.from_checkpoint(res["checkpoint"]["path"], precision="fp64")
    assert pred.head_ids == [0, 1, 7]
    n_head = sum(v.numel() for k, v in after["model_state"].items() if k.startswith("heads.heads.7."))
    assert res["trainable_parameters"] == n_head


def test_unfrozen_and_scratch_baseline(pretrained: dict[str, Any], tmp_path: Path) -> None:
    tuned = _ft(pretrained, tmp_path / "a", init_from_head=0)
    scratch = _ft(pretrained, tmp_path / "b", from_scratch=True)
    # same trainable set: the encoder and the new head (the old heads stay fixed)
    assert tuned["trainable_parameters"] == scratch["trainable_parameters"] > 0
    assert checkpoint.load(scratch["checkpoint"]["path"])["model_config"]["heads"] == [7]
    before = checkpoint.load(pretrained["ckpt"])["model_state"]
    after = checkpoint.load(tuned["checkpoint"]["path"])["model_state"]
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith("encoder."))
    for res in (tuned, scratch):
        assert res["objective"] == pytest.approx(res["best_val_loss"]) and math_finite(res["test_loss"])


def test_bad_finetune_config(pretrained: dict[str, Any]) -> None:
    with pytest.raises(BadInput, match="field 'checkpoint'"):
        parse_config({"data_root": "x", "dataset": "y", "output_dir": "z"}, "ft.json")
    with pytest.raises(BadInput, match="freeze_encoder"):
        parse_config(
            {
                "checkpoint": "c",
                "data_root": "x",
                "dataset": "y",
                "output_dir": "z",
                "from_scratch": True,
                "freeze_encoder": True,
            },
            "ft.json",
        )


def math_finite(x: float | None) -> bool:
    return x is not None and np.isfinite(x)


def test_the_base_heads_are_checked_before_and_after(pretrained: dict[str, Any], tmp_path: Path) -> None:
    """With the pre-training data named, the base heads are evaluated on its validation splits before and after:
    unchanged to the last digit when the encoder is frozen (the base heads are never trained here), changed
    when it is not; a growth beyond 10% is worded as a warning."""
    from campaign.stages.finetune import base_heads_warning

    base = {"base_data_root": pretrained["base_root"], "base_datasets": ["metals", "molecules"]}
    frozen = _ft(pretrained, tmp_path / "f", freeze_encoder=True, **base)
    assert set(frozen["base_heads"]) == {"0", "1"}
    for fig in frozen["base_heads"].values():
        assert fig["before"] == fig["after"] and fig["before"]["force_mae"] > 0
    assert base_heads_warning("nobles", frozen["base_heads"]) is None
    tuned = _ft(pretrained, tmp_path / "t", **base)
    assert any(f["before"] != f["after"] for f in tuned["base_heads"].values())
    grown = {"0": {"before": {"energy_mae_per_atom": 0.1, "force_mae": 0.2},
                   "after": {"energy_mae_per_atom": 0.105, "force_mae": 0.3}}}
    assert base_heads_warning("nobles", grown) == ("fine-tuning on nobles made the base heads worse "
                                                   "(head 0 force mae 0.2 -> 0.3 eV/Å)")
    assert _ft(pretrained, tmp_path / "s", from_scratch=True, **base)["base_heads"] is None


def test_replay_mixes_the_pretraining_data_into_every_epoch(pretrained: dict[str, Any], tmp_path: Path) -> None:
    """``replay: 0.5``: half of each epoch from the base datasets' train splits (each head trains on its own
    data), the new data in full."""
    base = {"base_data_root": pretrained["base_root"], "base_datasets": ["metals", "molecules"]}
    res = _ft(pretrained, tmp_path / "r", replay=0.5, epochs=1, **base)
    new = res["train_graphs"]
    assert res["replayed_graphs_per_epoch"] == new  # a 1:1 mix
    trained_heads = {r["head"] for r in res["history"] if r["split"] == "train" and r["name"] == "loss"}
    assert {"0", "1", "7"} <= {str(h) for h in trained_heads}
    with pytest.raises(BadInput, match="replay"):
        parse_config({"checkpoint": "x.pt", "data_root": ".", "dataset": "d", "output_dir": ".", "replay": 0.3},
                     "ft.json")


def test_a_dataset_version_holds_out_its_test_files_and_shares_references(tmp_path: Path) -> None:
    """A store built from labelled files: ``test_files`` all in test, the rest over train/val; with
    ``reference_from`` the element references are the given store's, not refitted."""
    import ase.io
    from ase.calculators.emt import EMT

    from models.contracts.finetune import DownstreamData
    from models.finetune import build_downstream

    def labelled(seed: int, n: int) -> list:
        frames = _nobles(n, seed)
        for a in frames:
            a.calc = EMT()
            a.get_potential_energy()
        return frames

    ase.io.write(tmp_path / "a.extxyz", labelled(1, 12))
    ase.io.write(tmp_path / "held.extxyz", labelled(2, 5))
    first = build_downstream(DownstreamData(kind="files", files=[str(tmp_path / "a.extxyz")], count=100,
                                            split={"train": 0.4, "val": 0.3, "test": 0.3}),
                             tmp_path / "v1", "nobles", 7)
    second = build_downstream(DownstreamData(kind="files", files=[str(tmp_path / "a.extxyz")], count=100,
                                             test_files=[str(tmp_path / "held.extxyz")],
                                             split={"train": 0.8, "val": 0.2},
                                             reference_from={"root": str(tmp_path / "v1"), "dataset": "nobles"}),
                              tmp_path / "v2", "nobles", 7)
    assert second["counts"]["test"] == 5 and second["counts"]["train"] + second["counts"]["val"] == 12
    assert second["reference_energies"] == first["reference_energies"]
    assert second["content_hash"] != first["content_hash"]
    with pytest.raises(BadInput, match="test_files"):
        build_downstream(DownstreamData(kind="files", files=[str(tmp_path / "a.extxyz")],
                                        test_files=[str(tmp_path / "held.extxyz")]), tmp_path / "v3", "n", 7)
