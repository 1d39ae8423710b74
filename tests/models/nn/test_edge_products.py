"""``edge_sum``: PaiNN's fused edge products against the same sums written with plain autograd."""

from __future__ import annotations

import pytest
import torch

from models.nn.edge_products import EdgeIndex, edge_sum

N, F = 5, 3


def _graph(paired: bool) -> tuple[torch.Tensor, int]:
    """[2, E] edges (j, i) and the filter count P; paired: the second half reverses the first."""
    g = torch.Generator().manual_seed(1)
    j = torch.randint(0, N, (7,), generator=g)
    i = (j + torch.randint(1, N, (7,), generator=g)) % N
    if paired:
        return torch.stack([torch.cat([j, i]), torch.cat([i, j])]), 7
    return torch.stack([j, i]), 7


def _reference(ei: torch.Tensor, pairs: int, v_terms, r_terms) -> torch.Tensor:
    """The same sum with index_select / index_add and broadcasting (autograd's own derivatives)."""
    j, i = ei
    num = ei.size(1)
    k = v_terms[0][0].size(0) if v_terms else 3
    out = torch.zeros(k, N, F, dtype=torch.float64)
    for y, w in v_terms:
        wf = w if pairs == num else torch.cat([w, w])
        out = out.index_add(1, i, y[:, j] * wf)
    for u, m in r_terms:
        out = out.index_add(1, i, u.unsqueeze(-1) * m.unsqueeze(0))
    return out


def _inputs(k: int, num: int, pairs: int, n_v: int, n_r: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    xs: list[torch.Tensor] = []
    for _ in range(n_v):
        xs += [torch.randn(k, N, F, generator=g, dtype=torch.float64), torch.randn(pairs, F, generator=g,
                                                                                   dtype=torch.float64)]
    for _ in range(n_r):
        xs += [torch.randn(3, num, generator=g, dtype=torch.float64), torch.randn(num, F, generator=g,
                                                                                  dtype=torch.float64)]
    return [x.requires_grad_(True) for x in xs]


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize(("k", "n_v", "n_r"), [(1, 1, 0), (3, 0, 1), (3, 1, 1), (3, 2, 1)])
def test_values_and_derivatives_to_third_order_match_plain_autograd(paired: bool, k: int, n_v: int,
                                                                     n_r: int) -> None:
    ei, pairs = _graph(paired)
    num = ei.size(1)
    xs = _inputs(k, num, pairs, n_v, n_r)
    graph = EdgeIndex(ei, N, pairs if paired else num)

    def ours(*t: torch.Tensor) -> torch.Tensor:
        v = [(t[2 * a], t[2 * a + 1]) for a in range(n_v)]
        r = [(t[2 * n_v + 2 * a], t[2 * n_v + 2 * a + 1]) for a in range(n_r)]
        return edge_sum(graph, t[0], v, r)

    def ref(*t: torch.Tensor) -> torch.Tensor:
        v = [(t[2 * a], t[2 * a + 1]) for a in range(n_v)]
        r = [(t[2 * n_v + 2 * a], t[2 * n_v + 2 * a + 1]) for a in range(n_r)]
        return _reference(ei, pairs if paired else num, v, r)

    torch.testing.assert_close(ours(*xs), ref(*xs), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(ours, xs)
    assert torch.autograd.gradgradcheck(ours, xs)
    # third order, as force training's parameter gradient of a force loss reaches it: compare to plain autograd
    h = torch.randn(k, N, F, dtype=torch.float64)

    def third(fn):
        out = (fn(*xs) * h).sum()
        g1 = torch.autograd.grad(out, xs, create_graph=True)
        g2 = torch.autograd.grad(sum((g * g).sum() for g in g1), xs, create_graph=True)
        return torch.autograd.grad(sum((g ** 3).sum() for g in g2), xs)

    for a, b in zip(third(ours), third(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_mixed_precision_sums_in_the_widest_dtype() -> None:
    """Under autocast the filters may be bf16 and the features fp32: the sum is fp32, like plain autograd."""
    ei, pairs = _graph(True)
    graph = EdgeIndex(ei, N, pairs)
    y = torch.randn(3, N, F)
    w = torch.randn(pairs, F).to(torch.bfloat16)
    out = edge_sum(graph, y, [(y, w)])
    assert out.dtype == torch.float32
    ref = _reference(ei, pairs, [(y.double(), w.double())], [])
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)


def test_scratch_buffers_leave_no_trace_between_calls() -> None:
    """Reusing scratch memory: a second, different call gives the same result as a fresh one."""
    ei, pairs = _graph(False)
    graph = EdgeIndex(ei, N, ei.size(1))
    a = _inputs(3, ei.size(1), ei.size(1), 2, 1)
    b = [x.detach().clone().mul_(3).requires_grad_(True) for x in a]
    first = edge_sum(graph, a[0], [(a[0], a[1]), (a[2], a[3])], [(a[4], a[5])])
    ga = torch.autograd.grad(first.sum(), a)
    second = edge_sum(graph, b[0], [(b[0], b[1]), (b[2], b[3])], [(b[4], b[5])])
    torch.autograd.grad(second.sum(), b)
    again = edge_sum(graph, a[0], [(a[0], a[1]), (a[2], a[3])], [(a[4], a[5])])
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    for x, y in zip(torch.autograd.grad(again.sum(), a), ga, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
