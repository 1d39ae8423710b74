"""Model API: config round-trip, deterministic init, head routing, add_head, precisions, triplets, training."""

from __future__ import annotations

import json

import pytest
import torch
from torch_geometric.data import Batch

from models import keys
from models.appio import BadInput
from models.nn import (
    FAMILIES,
    build_model,
    cast_batch,
    count_parameters,
    multitask_loss,
    param_dtype,
    precision_context,
)
from models.nn.dimenet import triplets
from tests.models.nn.emt_graphs import agau_cell, atoms_to_data, cu_cell, mixed_batch, tiny_config


@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trip_and_deterministic_init(family: str) -> None:
    torch.manual_seed(123)
    model = build_model(tiny_config(family))
    torch.manual_seed(123)
    twin = build_model(json.loads(json.dumps(model.config)))
    assert twin.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert count_parameters(model) == count_parameters(rebuilt) > 0
    batch = mixed_batch(dtype=torch.float32)
    torch.testing.assert_close(rebuilt.eval()(batch)["energy"], model.eval()(batch)["energy"])


def test_defaults_are_the_painn_lead_config() -> None:
    model = build_model({"family": "painn"})
    assert (model.config["hidden"], model.config["layers"], model.config["cutoff"]) == (128, 4, 5.0)
    assert model.head_ids == [0]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"family": "transformer"}, "family"),
        ({"family": "painn", "hiden": 16}, "hiden"),
        ({"family": "painn", "layers": 0}, "layers"),
        ({"family": "painn", "heads": [1, 1]}, "heads"),
        ({"family": "mace", "correlation": 3}, "correlation"),
        ({"family": "schnet", "cutoff": -1}, "cutoff"),
    ],
)
def test_bad_config_names_the_field(config: dict, field: str) -> None:
    with pytest.raises(BadInput, match=field):
        build_model(config)


def test_heads_route_each_graph_and_add_head() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config("painn")).double().eval()
    batch = mixed_batch()
    ref = model(batch)
    # each graph's energy equals the energy of that graph alone (no cross-talk between graphs or heads)
    for g, data in enumerate(batch.to_data_list()):
        alone = model(Batch.from_data_list([data]))
        torch.testing.assert_close(alone["energy"][0], ref["energy"][g])
    # changing head 1 changes only the graphs routed to head 1
    with torch.no_grad():
        model.heads.heads["1"].shift.weight.add_(0.5)
    out = model(batch)
    changed = ~torch.isclose(out["energy"], ref["energy"])
    assert changed.tolist() == (batch.head == 1).tolist()
    # a graph routed to an unknown head is an error, until the head is added
    batch.head[0] = 7
    with pytest.raises(ValueError, match="7"):
        model(batch)
    model.add_head(7, init_from=0)
    assert model.head_ids == [0, 1, 2, 7] and model.config["heads"] == [0, 1, 2, 7]
    torch.testing.assert_close(model(batch)["energy"][0], ref["energy"][0])
    twin = build_model(model.config).double()
    twin.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="already"):
        model.add_head(7)


def test_eref_is_added_and_stress_nan_for_molecules() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config("schnet")).double().eval()
    batch = mixed_batch()
    ref = model(batch, stress=True)
    assert torch.isnan(ref["stress"][1]).all() and torch.isfinite(ref["stress"][0]).all()
    batch.eref = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    out = model(batch)
    torch.testing.assert_close(out["energy"] - ref["energy"], batch.eref)


@pytest.mark.parametrize("precision", ["bf16", "fp32", "fp64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_precision_runs_forward_and_backward(family: str, precision: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(family)).to(param_dtype(precision)).train()
    batch = cast_batch(mixed_batch(dtype=torch.float32), precision)
    with precision_context(precision, "cpu"):
        pred = model(batch, stress=True)
    assert pred["energy"].dtype == param_dtype(precision)
    assert pred["forces"].dtype == param_dtype(precision)
    loss, _ = multitask_loss(pred, batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_bf16_is_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config("painn")).eval()
    batch = mixed_batch(dtype=torch.float32)
    ref = model(batch)
    with precision_context("bf16", "cpu"):
        low = model(batch)
    assert not torch.equal(low["energy"], ref["energy"])  # autocast really ran in bf16
    torch.testing.assert_close(low["energy"], ref["energy"], rtol=0.05, atol=0.05)


def test_triplets_match_brute_force() -> None:
    data = atoms_to_data(agau_cell(), 3.2)
    idx_kj, idx_ji = triplets(data.edge_index, data.shift, data.num_nodes)
    got = set(zip(idx_kj.tolist(), idx_ji.tolist(), strict=True))
    j, i = data.edge_index.tolist()
    s = data.shift.tolist()
    want = set()
    for e_ji in range(len(j)):
        for e_kj in range(len(j)):
            back = j[e_kj] == i[e_ji] and all(a + b == 0 for a, b in zip(s[e_kj], s[e_ji], strict=True))
            if i[e_kj] == j[e_ji] and not back:
                want.add((e_kj, e_ji))
    assert got == want and len(got) == idx_kj.numel() > 0


def test_training_on_emt_reduces_energy_and_force_error() -> None:
    torch.manual_seed(0)
    data = [atoms_to_data(cu_cell(seed=s, rattle=0.1), 4.0, head=0, dtype=torch.float32) for s in range(6)]
    batch = Batch.from_data_list(data)
    batch.eref = torch.full((6,), float(batch.energy.mean()))
    model = build_model(tiny_config("painn", heads=(0,))).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    history = []
    for _ in range(40):
        opt.zero_grad()
        loss, metrics = multitask_loss(model(batch), batch, force_weight=10.0)
        loss.backward()
        opt.step()
        history.append((float(loss.detach()), float(metrics[0]["force_mae"])))
    assert history[-1][0] < 0.5 * history[0][0]
    assert history[-1][1] < history[0][1]
    assert keys.FORCES in batch


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp32", "fp64"])
def test_cuda_forward_backward(precision: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    model = build_model(tiny_config("painn")).to("cuda", param_dtype(precision)).train()
    batch = cast_batch(mixed_batch(dtype=torch.float32), precision).to("cuda")
    with precision_context(precision, "cuda"):
        pred = model(batch, stress=True)
    loss, _ = multitask_loss(pred, batch)
    loss.backward()
    assert torch.isfinite(loss) and pred["forces"].dtype == param_dtype(precision)
