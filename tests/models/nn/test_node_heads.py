"""Direct node heads: symmetry, routing per head id, ``forces: direct`` models, their loss, and parallel grouping."""

from __future__ import annotations

import pytest
import torch
from ase.calculators.emt import EMT
from torch_geometric.data import Batch

from models import keys
from models.appio import BadInput
from models.distributed import split_parameters
from models.inference import Predictor
from models.nn import build_model
from models.nn.loss import multitask_loss
from tests.models.nn.emt_graphs import (
    agau_cell,
    atoms_to_data,
    cu_cell,
    cu_cluster,
    mixed_batch,
    small_molecule,
    tiny_config,
)

NODE = [{"name": "charges", "kind": "scalar"}, {"name": "dipoles", "kind": "vector"}]


def _model(family: str = "painn", **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({**tiny_config(family), "node_heads": NODE, **extra}).double().eval()
    with torch.no_grad():  # per-head-id node heads that differ (fresh ones would too, but make it certain)
        for k, heads in enumerate(model.node_heads.heads.values()):
            for p in heads.parameters():
                p.add_(0.1 * (k + 1))
    return model


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))


@pytest.mark.parametrize("family", ["painn", "schnet", "mace"])
def test_scalar_heads_invariant_vector_heads_equivariant(family: str) -> None:
    model = _model(family, forces="direct")
    batch = mixed_batch()
    ref = model(batch)
    assert ref["dipoles"].abs().max() > 1e-6 and ref["forces"].abs().max() > 1e-6
    rot = _rotation(3)
    moved = batch.clone()
    moved.pos = batch.pos @ rot.T + torch.tensor([0.7, -2.0, 1.1], dtype=torch.float64)
    moved.cell = batch.cell @ rot.T
    out = model(moved)
    torch.testing.assert_close(out["charges"], ref["charges"], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out["dipoles"], ref["dipoles"] @ rot.T, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"] @ rot.T, rtol=1e-8, atol=1e-10)
    # permutation of the atoms inside each graph (and of the edges)
    perm = torch.cat([torch.randperm(int(c), generator=torch.Generator().manual_seed(1)) + int(s)
                      for s, c in zip(batch.ptr[:-1], batch.natoms, strict=True)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(batch.num_nodes)
    shuffled = batch.clone()
    for key in (keys.POS, keys.Z, keys.FORCES, keys.BATCH):
        shuffled[key] = batch[key][perm]
    shuffled.edge_index = inv[batch.edge_index]
    out = model(shuffled)
    for name in ("charges", "dipoles", "forces"):
        torch.testing.assert_close(out[name], ref[name][perm], rtol=1e-9, atol=1e-10)


def test_vector_head_smooth_at_the_cutoff() -> None:
    """A neighbour crossing the cutoff changes a direct force continuously (zero weight at rc)."""
    from ase import Atoms

    model = _model(forces="direct")

    def dimer(d: float) -> Batch:
        return Batch.from_data_list([atoms_to_data(Atoms("Cu2", positions=[[0, 0, 0], [d, 0, 0]]), 5.0, head=0)])

    inside, outside = model(dimer(4.0 - 1e-5)), model(dimer(4.0 + 1e-5))
    torch.testing.assert_close(inside["forces"], outside["forces"], rtol=0, atol=1e-8)
    assert not outside["forces"].any()  # nothing within the cutoff: no direct force at all


def test_each_graph_goes_through_its_head_ids_node_heads() -> None:
    model = _model()
    batch = mixed_batch()  # heads 0, 1, 2, 1
    out = model(batch)
    for h in (0, 1, 2):
        routed = batch.clone()
        routed[keys.HEAD] = torch.full_like(batch[keys.HEAD], h)
        alone = model(routed)
        atoms = batch[keys.HEAD][batch[keys.BATCH]] == h
        torch.testing.assert_close(out["charges"][atoms], alone["charges"][atoms], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["dipoles"][atoms], alone["dipoles"][atoms], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(alone["charges"], model(_route(batch, (h + 1) % 3))["charges"])


def _route(batch: Batch, h: int) -> Batch:
    routed = batch.clone()
    routed[keys.HEAD] = torch.full_like(batch[keys.HEAD], h)
    return routed


def test_direct_forces_need_no_position_gradient() -> None:
    """A ``forces: direct`` model's forces are its head's output: no derivative, under no_grad as well."""
    model = _model(forces="direct")
    assert [s["name"] for s in model.config["node_heads"]] == ["charges", "dipoles", "forces"]
    batch = mixed_batch()
    with torch.no_grad():
        out = model(batch)
    assert out["forces"].shape == (batch.num_nodes, 3)
    nodes = model.node_heads(*_features(model, batch))
    torch.testing.assert_close(out["forces"], nodes["forces"], rtol=0, atol=0)
    assert "forces" not in model(batch, forces=False)
    # the fused predictor gives every head's direct forces
    pred = Predictor(model, precision="fp64").predict(batch.clone(), forces=True)
    for c, h in enumerate(pred["heads"]):
        torch.testing.assert_close(pred["forces"][:, c], model(_route(batch, h))["forces"], rtol=1e-12, atol=1e-12)


def _features(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, ...]:
    from models.nn.geometry import edge_vectors

    vec = edge_vectors(batch.pos, batch.cell, batch.edge_index, batch.shift, batch.batch)
    keep = (vec ** 2).sum(-1) < model.cutoff ** 2
    ei, vec = batch.edge_index[:, keep], vec[keep]
    with torch.no_grad():
        h = model.encoder(batch.z, vec, ei)
    return h, vec, ei, batch[keys.HEAD][batch[keys.BATCH]]


def test_training_direct_forces_and_a_per_atom_target() -> None:
    """Direct forces (force labels) and a scalar head on EMT's per-atom energies, trained together, both fit."""
    torch.manual_seed(0)
    model = build_model({**tiny_config("painn"), "forces": "direct",
                         "node_heads": [{"name": "atom_energy", "kind": "scalar"}]}).double().train()
    graphs = []
    for k, atoms in enumerate([cu_cell(), agau_cell(), cu_cell(seed=4), small_molecule(), cu_cluster()]):
        data = atoms_to_data(atoms, 4.0, head=k % 3)
        calc = atoms.copy()
        calc.calc = EMT()
        data.atom_energy = torch.as_tensor(calc.get_potential_energies(), dtype=torch.float64)
        graphs.append(data)
    batch = Batch.from_data_list(graphs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def errors() -> tuple[float, float]:
        out = model(batch)
        ok = batch.has_forces[batch.batch]
        return (float((out["forces"][ok] - batch.forces[ok]).abs().mean()),
                float((out["atom_energy"] - batch.atom_energy).abs().mean()))

    before = errors()
    for _ in range(60):
        opt.zero_grad()
        loss, _ = multitask_loss(model(batch), batch, force_weight=10.0, node_weights={"atom_energy": 1.0})
        loss.backward()
        opt.step()
    after = errors()
    assert after[0] < 0.6 * before[0] and after[1] < 0.3 * before[1], (before, after)


def test_node_loss_counts_only_labelled_atoms() -> None:
    model = _model()
    batch = mixed_batch()
    pred = model(batch)
    batch.charges = torch.zeros(batch.num_nodes, dtype=torch.float64)
    base, _ = multitask_loss(pred, batch, force_weight=0.0)
    with_node, _ = multitask_loss(pred, batch, force_weight=0.0, node_weights={"charges": 2.0})
    assert with_node > base
    batch.has_charges = torch.zeros(batch.num_graphs, dtype=torch.bool)  # no graph carries the label
    none, _ = multitask_loss(pred, batch, force_weight=0.0, node_weights={"charges": 2.0})
    torch.testing.assert_close(none, base)


def test_node_heads_are_grouped_with_their_head_id_and_follow_new_heads() -> None:
    model = _model(forces="direct")
    encoder, heads = split_parameters(model)
    for h in (0, 1, 2):
        mine = {id(p) for p in model.node_heads.heads[str(h)].parameters()}
        assert mine <= {id(p) for p in heads[h]} and not mine & {id(p) for p in encoder}
    model.add_head(7, init_from=1)
    assert set(model.node_heads.heads) == {"0", "1", "2", "7"}
    batch = mixed_batch()
    out1, out7 = model(_route(batch, 1)), model(_route(batch, 7))
    torch.testing.assert_close(out7["forces"], out1["forces"])
    rebuilt = build_model(model.config).double()
    rebuilt.load_state_dict(model.state_dict())  # the config rebuilds every node head of every head id


@pytest.mark.parametrize(("node_heads", "forces", "match"), [
    ([{"name": "energy", "kind": "scalar"}], "conservative", "reserved"),
    ([{"name": "q", "kind": "tensor"}], "conservative", "kind"),
    ([{"name": "q", "kind": "scalar"}, {"name": "q", "kind": "vector"}], "conservative", "repeated"),
    ([{"name": "forces", "kind": "vector"}], "conservative", "forces: direct"),
    ([{"name": "forces", "kind": "scalar"}], "direct", "forces: direct"),
    ([{"name": "1x", "kind": "scalar"}], "conservative", "identifier"),
    ([{"name": "q"}], "conservative", r"field 'node_heads\[0\]\.kind': Field required"),
    ([], "both", "field 'forces': Input should be 'conservative' or 'direct'"),
])
def test_bad_node_head_configs_name_the_field(node_heads, forces, match) -> None:
    with pytest.raises(BadInput, match=match):
        build_model({**tiny_config("painn"), "node_heads": node_heads, "forces": forces})
