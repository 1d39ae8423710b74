"""Edge-pair sharing and the gather / sum functions the fast PaiNN and SchNet paths are built on."""

from __future__ import annotations

import importlib

import pytest
import torch

from models import keys
from models.nn import build_model
from models.nn.edge_ops import gather_rows, sum_rows
from models.nn.geometry import edge_vectors, reverse_edge_pairs
from tests.models.nn.emt_graphs import mixed_batch, tiny_config


def _vectors(batch: torch.Tensor) -> torch.Tensor:
    return edge_vectors(batch[keys.POS], batch[keys.CELL], batch[keys.EDGE_INDEX], batch[keys.SHIFT],
                        batch[keys.BATCH])


def test_reverse_pairs_cover_a_full_neighbour_list_exactly() -> None:
    batch = mixed_batch()
    ei, vec = batch[keys.EDGE_INDEX], _vectors(batch)
    pairs = reverse_edge_pairs(ei, vec)
    assert pairs is not None
    fwd, rev = pairs
    assert fwd.numel() * 2 == ei.size(1)
    assert torch.equal(torch.cat([fwd, rev]).sort().values, torch.arange(ei.size(1)))  # a permutation
    assert torch.equal(ei[:, rev], ei[:, fwd].flip(0))
    assert torch.equal(vec[rev], -vec[fwd])  # bit-exact, so |r| and the filters are identical


def test_reverse_pairs_refuse_lists_that_are_not_symmetric() -> None:
    batch = mixed_batch()
    ei, vec = batch[keys.EDGE_INDEX], _vectors(batch)
    assert reverse_edge_pairs(ei[:, 1:], vec[1:]) is None  # odd count
    assert reverse_edge_pairs(ei[:, 2:], vec[2:]) is None  # two edges whose reverses are missing
    bent = vec.clone()
    bent[0, 0] += 1e-3  # one vector no longer the exact negative of its partner's
    assert reverse_edge_pairs(ei, bent) is None
    zero = vec.clone()
    zero[0] = 0.0
    assert reverse_edge_pairs(ei, zero) is None


@pytest.mark.parametrize("family", ["painn", "schnet"])
def test_pair_shared_path_equals_the_per_edge_path(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Computing distance-only terms once per pair changes nothing (fp64, energy, forces and stress)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(family)).double().eval()
    batch = mixed_batch()
    shared = model(batch, stress=True)
    module = importlib.import_module(f"models.nn.{family}")
    monkeypatch.setattr(module, "reverse_edge_pairs", lambda *args: None)
    per_edge = model(batch, stress=True)
    for key in ("energy", "forces"):
        torch.testing.assert_close(shared[key], per_edge[key], rtol=1e-10, atol=1e-10)
    per = batch[keys.PBC].any(dim=1)
    torch.testing.assert_close(shared["stress"][per], per_edge["stress"][per], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("family", ["painn", "schnet"])
def test_pair_shared_path_trains_like_the_per_edge_path(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameter gradients of a force loss (a second derivative) agree between the two paths."""
    batch = mixed_batch()

    def grads() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(tiny_config(family)).double().train()
        out = model(batch)
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        return [g for g in torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
                if g is not None]

    shared = grads()
    monkeypatch.setattr(importlib.import_module(f"models.nn.{family}"), "reverse_edge_pairs", lambda *a: None)
    per_edge = grads()
    assert len(shared) == len(per_edge) > 0
    for a, b in zip(shared, per_edge, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_gather_and_sum_are_differentiable_twice() -> None:
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 5, (12,), generator=gen)
    index[:5] = torch.arange(5)
    src_nodes = torch.randn(5, 3, dtype=torch.float64, requires_grad=True, generator=gen)
    src_edges = torch.randn(12, 3, dtype=torch.float64, requires_grad=True, generator=gen)
    torch.testing.assert_close(gather_rows(src_nodes, index), src_nodes[index])
    expected = torch.zeros(7, 3, dtype=torch.float64).index_add(0, index, src_edges)
    torch.testing.assert_close(sum_rows(src_edges, index, 7), expected)
    # a non-linear use so that second derivatives are not trivially zero
    assert torch.autograd.gradcheck(lambda x: gather_rows(x, index).sin(), (src_nodes,))
    assert torch.autograd.gradgradcheck(lambda x: gather_rows(x, index).sin(), (src_nodes,))
    assert torch.autograd.gradcheck(lambda x: sum_rows(x, index, 7).sin(), (src_edges,))
    assert torch.autograd.gradgradcheck(lambda x: sum_rows(x, index, 7).sin(), (src_edges,))
