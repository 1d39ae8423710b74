"""``edge_sum``: PaiNN's edge products against the same sums written here with plain autograd, on both of its
paths (the fused node, and its own plain-autograd form for small graphs): every test runs on each."""

from __future__ import annotations

import pytest
import torch

from models.nn import edge_products
from models.nn.edge_products import EdgeIndex, edge_sum

N, F, R = 5, 3, 2


@pytest.fixture(autouse=True, params=["fused", "plain"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force ``edge_sum`` onto one of its two paths (these graphs are small enough for either)."""
    monkeypatch.setattr(edge_products, "PLAIN_BELOW_PRODUCTS", 0 if request.param == "fused" else 10**9)
    return str(request.param)


def _graph(paired: bool) -> tuple[torch.Tensor, int]:
    """[2, E] edges (j, i) and the filter count P; paired: the second half reverses the first."""
    g = torch.Generator().manual_seed(1)
    j = torch.randint(0, N, (7,), generator=g)
    i = (j + torch.randint(1, N, (7,), generator=g)) % N
    if paired:
        return torch.stack([torch.cat([j, i]), torch.cat([i, j])]), 7
    return torch.stack([j, i]), 7


def _reference(ei: torch.Tensor, pairs: int, terms) -> torch.Tensor:
    """The same sum with index_select / index_add and broadcasting (autograd's own derivatives)."""
    j, i = ei
    num = ei.size(1)
    k = max(u.size(0) if u is not None else y.size(0) for u, y, _, _ in terms)
    out = torch.zeros(k, N, F, dtype=torch.float64)
    for u, y, b, a in terms:
        w = b @ a
        m = y[:, j] * (w if pairs == num else torch.cat([w, w]))  # [K or 1, E, F]
        out = out.index_add(1, i, m if u is None else u.unsqueeze(-1) * m)
    return out


# (K, number of terms without u, number with u)
SHAPES = [(1, 1, 0), (3, 0, 1), (3, 1, 1), (3, 2, 1), (3, 1, 2)]


def _terms(k: int, num: int, pairs: int, n_v: int, n_r: int) -> list[tuple]:
    g = torch.Generator().manual_seed(2)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    basis = rnd(pairs, R)  # shared by every term, as PaiNN's radial basis is
    return ([(None, rnd(k, N, F), basis, rnd(R, F)) for _ in range(n_v)]
            + [(rnd(k, num), rnd(1, N, F), basis, rnd(R, F)) for _ in range(n_r)])


def _flat(terms) -> list[torch.Tensor]:
    """The distinct factors (a shared basis once)."""
    out: list[torch.Tensor] = []
    for x in (x for t in terms for x in t if x is not None):
        if not any(x is o for o in out):
            out.append(x)
    return out


def _rebuild(terms, xs):
    """``terms`` with each distinct factor replaced by its counterpart in ``xs``."""
    old = _flat(terms)
    return [tuple(None if x is None else xs[next(n for n, o in enumerate(old) if o is x)] for x in t)
            for t in terms]


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize(("k", "n_v", "n_r"), SHAPES)
def test_values_and_derivatives_to_third_order_match_plain_autograd(paired: bool, k: int, n_v: int,
                                                                     n_r: int) -> None:
    ei, pairs = _graph(paired)
    num = ei.size(1)
    p = pairs if paired else num
    terms = _terms(k, num, p, n_v, n_r)
    xs = _flat(terms)
    graph = EdgeIndex(ei, N, p)
    like = torch.zeros(N, F, dtype=torch.float64)

    def ours(*t: torch.Tensor) -> torch.Tensor:
        return edge_sum(graph, like, _rebuild(terms, t))

    def ref(*t: torch.Tensor) -> torch.Tensor:
        return _reference(ei, p, _rebuild(terms, t))

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


def test_a_term_needs_matching_rows() -> None:
    ei, _ = _graph(False)
    graph = EdgeIndex(ei, N, ei.size(1))
    u = torch.randn(3, ei.size(1), requires_grad=True)
    y = torch.randn(3, N, F, requires_grad=True)  # a term with u takes one-row y
    b, a = torch.randn(ei.size(1), R), torch.randn(R, F)
    with pytest.raises(ValueError, match="one-row y"):
        edge_sum(graph, y, [(u, y, b, a)])
    with pytest.raises(ValueError, match="at least one term"):
        edge_sum(graph, y, [])


def test_mixed_precision_sums_in_the_widest_dtype() -> None:
    """Under autocast the features may be bf16 and the basis fp32: the sum is fp32, like plain autograd, and
    each factor's gradient has its own dtype."""
    ei, pairs = _graph(True)
    graph = EdgeIndex(ei, N, pairs)
    u = torch.randn(3, ei.size(1), requires_grad=True)
    y = torch.randn(3, N, F, requires_grad=True)
    x = torch.randn(1, N, F).to(torch.bfloat16).requires_grad_(True)
    b = torch.randn(pairs, R, requires_grad=True)
    a = torch.randn(R, F).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = edge_sum(graph, y, [(None, y, b, a), (u, x, b, a)])
    assert out.dtype == torch.float32
    u64, y64, x64, b64, a64 = (t.detach().double().requires_grad_(True) for t in (u, y, x, b, a))
    ref = _reference(ei, pairs, [(None, y64, b64, a64), (u64, x64, b64, a64)])
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
    grads = torch.autograd.grad(out.sum(), [u, y, x, b, a])
    assert [g.dtype for g in grads] == [torch.float32, torch.float32, torch.bfloat16, torch.float32,
                                        torch.bfloat16]
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), [u64, y64, x64, b64, a64]), strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-2, atol=1e-2 * float(r.abs().max()))


def test_scratch_buffers_leave_no_trace_between_calls() -> None:
    """Reusing scratch memory: a second, different call gives the same result as a fresh one."""
    ei, _ = _graph(False)
    num = ei.size(1)
    graph = EdgeIndex(ei, N, num)
    like = torch.zeros(N, F, dtype=torch.float64)
    a = _terms(3, num, num, 2, 1)
    b = _rebuild(a, [x.detach().clone().mul_(3).requires_grad_(True) for x in _flat(a)])
    first = edge_sum(graph, like, a)
    ga = torch.autograd.grad(first.sum(), _flat(a))
    second = edge_sum(graph, like, b)
    torch.autograd.grad(second.sum(), _flat(b))
    again = edge_sum(graph, like, a)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    for x, y in zip(torch.autograd.grad(again.sum(), _flat(a)), ga, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_no_edges_give_zero_sums_and_gradients() -> None:
    """Isolated atoms (every neighbour beyond the cutoff): zero messages, zero gradients, any order."""
    graph = EdgeIndex(torch.zeros(2, 0, dtype=torch.long), N, 0)
    terms = _terms(3, 0, 0, 1, 1)
    like = torch.zeros(N, F, dtype=torch.float64)
    out = edge_sum(graph, like, terms)
    assert out.shape == (3, N, F) and not out.any()
    xs = _flat(terms)
    assert torch.autograd.gradgradcheck(lambda *t: edge_sum(graph, like, _rebuild(terms, t)), xs)
