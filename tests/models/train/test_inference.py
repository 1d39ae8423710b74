"""The fused predictor against the model's own forward, head by head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import checkpoint, keys
from models.data.store import open_split
from models.inference import Predictor, atom_budget_chunks
from models.nn.model import FAMILIES, build_model
from tests.models.train.conftest import TINY_PAINN


def _mixed_batch(data_root: Path):
    from models.data.loader import concat_gathered
    from models.data.store import make_batch

    a = open_split(data_root, "metals", "val", dtype=torch.float64)
    b = open_split(data_root, "molecules", "val", dtype=torch.float64)
    arrays = concat_gathered([a.gather([0, 1]), b.gather([0, 1, 2])])
    return make_batch(
        {
            k: torch.from_numpy(v).to(torch.float64) if v.dtype == np.float64 else torch.from_numpy(v)
            for k, v in arrays.items()
        }
    )


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({**TINY_PAINN, "heads": [0, 1, 5]}).double()
    with torch.no_grad():  # heads that differ from each other (fresh heads start as scale 1, shift 0)
        for k, head in enumerate(model.heads.heads.values()):
            head.shift.weight.normal_(0, 0.3 * (k + 1))
            head.scale.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("force_method", ["loop", "vmap"])
def test_every_head_matches_the_model_routed_to_it(data_root: Path, force_method: str) -> None:
    model = _model()
    batch = _mixed_batch(data_root)
    pred = Predictor(model, precision="fp64", force_method=force_method).predict(batch.clone(), forces=True)
    assert pred["heads"] == [0, 1, 5]
    g, n = batch.num_graphs, batch.pos.size(0)
    assert pred["energy"].shape == (g, 3) and pred["forces"].shape == (n, 3, 3)
    for c, h in enumerate([0, 1, 5]):
        routed = batch.clone()
        routed[keys.HEAD] = torch.full_like(routed[keys.HEAD], h)
        ref = model(routed, forces=True)
        torch.testing.assert_close(pred["energy"][:, c], ref["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(pred["forces"][:, c], ref["forces"], rtol=1e-9, atol=1e-10)
    # heads really differ, so per-head forces are not one shared sum
    assert not torch.allclose(pred["forces"][:, 0], pred["forces"][:, 2])
    sub = Predictor(model, precision="fp64").predict(batch.clone(), heads=[5], forces=False)
    assert sub["forces"] is None and sub["heads"] == [5]
    torch.testing.assert_close(sub["energy"][:, 0], pred["energy"][:, 2])
    with pytest.raises(ValueError, match=r"heads \[7\]"):
        Predictor(model).predict(batch.clone(), heads=[7])


@pytest.mark.parametrize("family", FAMILIES)
def test_vmap_forces_run_batched_without_falling_back(
    data_root: Path, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every family's backward has a batching rule: the one batched backward runs, no per-head loop."""
    torch.manual_seed(0)
    cfg = {k: TINY_PAINN[k] for k in ("hidden", "layers", "cutoff", "max_z")}
    model = build_model({**cfg, "family": family, "heads": [0, 1, 5]}).double().eval()
    calls: list[bool] = []
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(bool(kwargs.get("is_grads_batched")))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    batch = _mixed_batch(data_root)
    pred = Predictor(model, precision="fp64", force_method="vmap").predict(batch.clone(), forces=True)
    assert calls == [True]
    monkeypatch.setattr(torch.autograd, "grad", grad)
    loop = Predictor(model, precision="fp64", force_method="loop").predict(batch.clone(), forces=True)
    torch.testing.assert_close(pred["forces"], loop["forces"], rtol=1e-9, atol=1e-10)


def test_from_checkpoint_adds_head_references(data_root: Path, tmp_path: Path) -> None:
    model = _model()
    refs = {"0": {"29": -1.5, "47": -2.0, "79": -3.0}, "1": {"1": -0.5, "6": -1.0, "7": -1.2, "8": -2.2}}
    path = tmp_path / "best.pt"
    checkpoint.save(
        {"model_config": model.config, "model_state": model.state_dict(), "head_references": refs}, path
    )
    pred = Predictor.from_checkpoint(path, precision="fp64")
    plain = Predictor(model, precision="fp64")
    batch = _mixed_batch(data_root)
    batch[keys.EREF] = torch.zeros_like(batch[keys.EREF])
    a = pred.predict(batch.clone(), forces=False)["energy"]
    b = plain.predict(batch.clone(), forces=False)["energy"]
    z = batch[keys.Z]
    for gi in range(batch.num_graphs):
        zs = z[batch.batch == gi].tolist()
        for c, h in enumerate(["0", "1"]):
            want = sum(float(refs[h].get(str(zz), 0.0)) for zz in zs)
            assert float(a[gi, c] - b[gi, c]) == pytest.approx(want, abs=1e-9)
        assert float(a[gi, 2] - b[gi, 2]) == pytest.approx(0.0, abs=1e-12)  # head 5 has no references


def test_atom_budget_chunks_and_store_pass(data_root: Path) -> None:
    assert atom_budget_chunks([3, 3, 3, 10, 1], 6) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert atom_budget_chunks([], 6) == []
    store = open_split(data_root, "molecules", "test", dtype=torch.float32)
    pred = Predictor(_model().float(), precision="fp32")
    chunks = list(pred.predict_store(store, max_atoms=12))
    assert [c[:2] for c in chunks] == atom_budget_chunks(store.natoms, 12)
    whole = pred.predict(store.get_chunk(0, len(store)), forces=True)
    energies = torch.cat([c[2]["energy"] for c in chunks])
    torch.testing.assert_close(energies, whole["energy"], rtol=1e-5, atol=1e-5)
    assert sum(c[2]["forces"].shape[0] for c in chunks) == int(store.natoms.sum())
