"""Edge products summed onto atoms, as one autograd node whose derivatives of every order are the same two nodes.

PaiNN's messages are sums over edges ``e = (j -> i)`` of products of up to three factors:

    out[k, i] += u[k, e] * y[k', j] * W[e]        (k' = k, or 0 when ``y`` has one row)

* ``y`` [K or 1, N, F]: an atom tensor gathered at the neighbour ``j`` (PaiNN's ``v * x_v``, ``x_s``, ``x_r``);
* ``W = B @ A`` [P, F]: a continuous filter, the product of a radial basis ``B`` [P, R] (per edge, or per pair
  when the second half of the edges reverses the first: P = E / 2, one filter serves an edge and its reverse)
  and a weight ``A`` [R, F];
* ``u`` [K, E] (optional): a per-edge vector broadcast over features (PaiNN's unit vectors ``r_ij / |r_ij|``).

Written with plain autograd, each term leaves several [P or E, F] tensors saved for the backward (the filter,
the gathered rows, the filtered message, the broadcast product), and force training (a double backward)
differentiates every elementwise op of the backward again, with gradient accumulation adds in between. Here
the forward (:class:`_EdgeSum`) builds the filter and the per-edge products in scratch buffers and sums them,
saving only the factors; the backward (:class:`_EdgeSumGrad`) recomputes the filter, computes every factor's
gradient from one gather of the output gradient and returns atom-, basis- and weight-sized gradients
([N, F], [P, R], [R, F], [K, E]), never an [E, F] one. Every term is linear in each of its factors, so the
derivative of :class:`_EdgeSumGrad` is again one :class:`_EdgeSum` (in the output gradient) and one
:class:`_EdgeSumGrad` (in the factors, with one factor of a term replaced by its incoming gradient):
derivatives of any order stay within these two nodes, each a few ``mm`` / ``index_select`` / ``index_add_`` /
elementwise calls of PyTorch, done in place on their own buffers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

# Per-thread scratch buffers for the [K, E, F] and [P, F] temporaries inside the two nodes below (CPU only, each
# at most _SCRATCH_BYTES). Freshly allocated multi-megabyte tensors are page-faulted in on every use (glibc
# returns them to the OS when freed), which on CPU costs more than the arithmetic done in them. A buffer only
# ever holds a temporary that dies before its node returns: nothing computed is kept from one call to the next.
_SCRATCH_BYTES = 64 << 20
_scratch = threading.local()
_functorch = getattr(torch._C, "_functorch", None)

#: A term ``(u, y, B, A)``: ``u`` [K, E] or ``None``, ``y`` [K or 1, N, F], ``B`` [P, R], ``A`` [R, F] (see the
#: module docstring).
Term = tuple[Tensor | None, Tensor, Tensor, Tensor]
_U, _Y, _B, _A = range(4)  # the factors' slots in a term


def _is_batched(t: Tensor) -> bool:
    """Whether ``t`` is a ``vmap`` batched tensor (``torch.func.vmap``, or the legacy one autograd's
    ``is_grads_batched`` runs the backward under)."""
    if _functorch is None:
        return False
    return bool(_functorch.is_batchedtensor(t) or _functorch.is_legacy_batchedtensor(t))


def _poolable(t: Tensor) -> bool:
    """Whether temporaries like ``t`` may use the scratch pool: CPU tensors outside ``vmap`` (a batched backward,
    as the fused predictor's per-head forces run, has no batching rule for ``out=`` or for in-place ops on an
    unbatched buffer, and must not leave a batched tensor in the pool)."""
    return t.device.type == "cpu" and not _is_batched(t)


def _buffer(slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised CPU tensor of ``shape`` (dtype of ``like``) for temporary use, from scratch ``slot``."""
    numel = 1
    for d in shape:
        numel *= d
    if numel * like.element_size() > _SCRATCH_BYTES:
        return like.new_empty(shape)
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    key = (slot, like.dtype)
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        buf = pool[key] = like.new_empty(max(numel, 1))
    return buf[:numel].view(shape)


class EdgeIndex:
    """Edge indices of a batch as the products use them.

    Args:
        edge_index: [2, E] (neighbour j, centre i).
        num_nodes: N.
        pairs: Number of distinct filters P: ``E / 2`` when the second half of the edges reverses the first
            (a filter [P, F] then serves both halves), else E.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, pairs: int) -> None:
        self.j, self.i = edge_index[0], edge_index[1]
        self.num, self.pairs, self.nodes = edge_index.size(1), pairs, num_nodes
        self._rows: dict[int, tuple[Tensor, Tensor]] = {1: (self.j, self.i)}

    def rows(self, k: int) -> tuple[Tensor, Tensor]:
        """(gather rows, sum rows) of [k, N, F] atom tensors flattened to [k N, F]: component c of atom a is
        row ``c N + a``."""
        if k not in self._rows:
            n = self.nodes
            self._rows[k] = (torch.cat([self.j + c * n for c in range(k)]),
                             torch.cat([self.i + c * n for c in range(k)]))
        return self._rows[k]

    def filtered(self, t: Tensor, w: Tensor, inplace: bool) -> Tensor:
        """``t * w``: ``t`` [K, E, F] per edge, ``w`` [P, F] per pair (both halves); in place if ``inplace``."""
        if self.pairs == self.num:
            return t.mul_(w) if inplace else t * w
        halves = t.view(t.size(0), 2, self.pairs, t.size(-1))
        if inplace:
            halves.mul_(w)
            return t
        return (halves * w).view(t.shape)


class _Work:
    """Dtype and buffer policy of one node's evaluation.

    All factors of one dtype on the CPU outside ``vmap``: temporaries come from the scratch pool and are
    updated in place. Otherwise (mixed precision under autocast, GPU, ``vmap``): fresh tensors in the widest
    dtype, out-of-place ops only. Autocast is off inside the nodes: the products run in that widest dtype.
    """

    def __init__(self, like: Tensor, tensors: Sequence[Tensor | None]) -> None:
        present = [t for t in tensors if t is not None]
        dtype = like.dtype
        for t in present:
            dtype = torch.promote_types(dtype, t.dtype)
        self.dtype = dtype
        self.pooled = _poolable(like) and all(t.dtype == dtype and _poolable(t) for t in present)

    def gather(self, slot: int, src: Tensor, index: Tensor) -> Tensor:
        """``src.index_select(0, index)`` (into scratch ``slot`` when pooled)."""
        if not self.pooled:
            return src.index_select(0, index).to(self.dtype)
        return torch.index_select(src, 0, index, out=_buffer(slot, (index.size(0), src.size(-1)), src))

    def mul(self, slot: int, a: Tensor, b: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``a * b`` (broadcast to ``shape``) (into scratch ``slot`` when pooled)."""
        if not self.pooled:
            return a.to(self.dtype) * b.to(self.dtype)
        return torch.mul(a, b, out=_buffer(slot, shape, a))

    def mm(self, slot: int | None, a: Tensor, b: Tensor) -> Tensor:
        """``a @ b`` (into scratch ``slot`` when pooled and a slot is given)."""
        a, b = a.to(self.dtype), b.to(self.dtype)
        if not self.pooled or slot is None:
            return a @ b
        return torch.mm(a, b, out=_buffer(slot, (a.size(0), b.size(1)), a))

    def add_(self, acc: Tensor, t: Tensor) -> Tensor:
        return acc.add_(t) if self.pooled else acc + t

    def addcmul_(self, acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return acc.addcmul_(a, b) if self.pooled else torch.addcmul(acc, a, b)

    def filter_grad(self, graph: EdgeIndex, t: Tensor) -> Tensor:
        """The [P, F] gradient of a filter from per-edge products ``t`` [K, E, F] (sum over K and both halves),
        into scratch when pooled."""
        halves = t if graph.pairs == graph.num else t.view(t.size(0), 2, graph.pairs, t.size(-1))
        dims = (0,) if graph.pairs == graph.num else (0, 1)
        if not self.pooled:
            return halves.sum(dim=dims)
        return torch.sum(halves, dim=dims, out=_buffer(6, (graph.pairs, t.size(-1)), t))


def _factors(flat: Sequence[Tensor | None], a: int) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    u, y, b, w = flat[4 * a:4 * a + 4]
    assert y is not None and b is not None and w is not None
    return u, y, b, w


def _edge_sum(graph: EdgeIndex, k: int, has_u: tuple[bool, ...], filters: Sequence[Tensor | None],
              flat: Sequence[Tensor | None], like: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``sum_e`` of all terms, [K, N, F], and each term's filter ``B @ A`` [P, F] (``filters``: those known
    already, else ``None``) (no autograd)."""
    n, num = graph.nodes, graph.num
    work = _Work(like, flat)
    buf: Tensor | None = None  # [K, E, F]: every term's per-edge products
    ws: list[Tensor] = []
    for a, hu in enumerate(has_u):
        u, y, basis, weight = _factors(flat, a)
        ky, f = y.size(0), y.size(-1)
        w = filters[a]
        if w is None:
            w = work.mm(None, basis, weight)  # [P, F], kept for the backward
        ws.append(w)
        t = work.gather(1 if buf is None and not hu else 2, y.reshape(ky * n, f), graph.rows(ky)[0])
        t = graph.filtered(t.view(ky, num, f), w, inplace=work.pooled)
        if not hu:
            buf = t if buf is None else work.add_(buf, t)
        elif buf is None:
            buf = work.mul(1, u.unsqueeze(-1), t, (k, num, f))  # type: ignore[union-attr]
        else:
            buf = work.addcmul_(buf, u.unsqueeze(-1), t)  # type: ignore[union-attr]
    assert buf is not None
    f = buf.size(-1)
    out = like.new_zeros(k * n, f, dtype=work.dtype).index_add_(0, graph.rows(k)[1], buf.reshape(k * num, f))
    return out.view(k, n, f), ws


def _edge_sum_grads(graph: EdgeIndex, k: int, has_u: tuple[bool, ...], filters: Sequence[Tensor | None],
                    needs: tuple[bool, ...], grad: Tensor, flat: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Gradient of ``<grad, edge_sum(terms)>`` in each factor whose ``needs`` is set (no autograd); ``filters``:
    each term's ``B @ A`` where known, else ``None``.

    Returns one entry per factor of ``flat``: ``u`` -> [K, E], ``y`` -> [K or 1, N, F], ``B`` -> [P, R],
    ``A`` -> [R, F].
    """
    n, num, f = graph.nodes, graph.num, grad.size(-1)
    work = _Work(grad, flat)
    out: list[Tensor | None] = [None] * len(flat)
    if not any(needs):
        return out
    gi = work.gather(1, grad.reshape(k * n, f), graph.rows(k)[1]).view(k, num, f)  # output gradient per edge
    last = max(a for a in range(len(has_u)) if any(needs[4 * a:4 * a + 4]))
    for a, hu in enumerate(has_u):
        nu, ny, nb, na = needs[4 * a:4 * a + 4]
        if not (nu or ny or nb or na):
            continue
        u, y, basis, weight = _factors(flat, a)
        ky = y.size(0)
        src = graph.rows(ky)[0]
        w = filters[a]
        if w is None and (nu or ny):
            w = work.mm(5, basis, weight)  # the filter [P, F], recomputed
        gu = gi
        if hu:
            assert u is not None and ky == 1, "a term with a vector factor u has a one-row y"
            if nu:  # d/du[c, e] = sum_f gi[c, e] (y_j W)_e
                yw = graph.filtered(work.gather(2, y.reshape(n, f), src).view(1, num, f), w, work.pooled)
                out[4 * a + _U] = work.mul(4, gi, yw, (k, num, f)).sum(dim=-1)
            if ny or nb or na:  # sum_c u[c, e] gi[c, e]: [1, E, F]
                gu = work.mul(3, gi[0], u[0].unsqueeze(-1), (num, f))
                for c in range(1, k):
                    gu = work.addcmul_(gu, gi[c], u[c].unsqueeze(-1))
                gu = gu.view(1, num, f)
        else:
            assert ky == k, "a term without a vector factor has a y of K rows"
        if nb or na:  # dW_p: sum over k and the pair's edges of gu * y_j; W = B A
            yj = work.gather(2, y.reshape(ky * n, f), src).view(ky, num, f)
            dw = work.filter_grad(graph, yj.mul_(gu) if work.pooled else yj * gu)  # [P, F]
            if nb:
                out[4 * a + _B] = work.mm(None, dw, weight.t())
            if na:
                out[4 * a + _A] = work.mm(None, basis.t(), dw)
        if ny:  # d/dy: sum over the edges leaving each atom of gu * W
            if gu is gi and a != last and work.pooled:  # gi is still needed by a later term
                gu = torch.mul(gi, 1, out=_buffer(3, gi.shape, gi))
            t = graph.filtered(gu, w, inplace=work.pooled)  # type: ignore[arg-type]
            out[4 * a + _Y] = grad.new_zeros(ky * n, f, dtype=t.dtype).index_add_(
                0, src, t.reshape(ky * num, f)).view(ky, n, f)
    return out


def _replaced(has_u: tuple[bool, ...], flat: Sequence[Tensor | None],
              hs: Sequence[Tensor | None]) -> Iterator[tuple[int, int, list[Tensor | None]]]:
    """Each term with one factor replaced by its incoming gradient: ``(term index, replaced slot, factors)``
    for every non-``None`` ``hs`` entry (a term is linear in each factor)."""
    for a, hu in enumerate(has_u):
        for slot in (_U, _Y, _B, _A) if hu else (_Y, _B, _A):
            h = hs[4 * a + slot]
            if h is not None:
                t = list(flat[4 * a:4 * a + 4])
                t[slot] = h
                yield a, slot, t


_will_execute = getattr(torch._C, "_will_engine_execute_node", None)


def _wanted(ctx: Any, first: int) -> tuple[bool, ...]:
    """Which inputs from ``first`` on need a gradient in the backward running now.

    ``ctx.needs_input_grad`` says which inputs require grad at all; the engine says which of their gradient
    paths this backward executes (as PyTorch's own nodes check before computing an input's gradient). Forces
    (``autograd.grad(E, pos)``) thereby skip the filter weights' and the first layer's feature gradients, which
    only parameters depend on.
    """
    nodes = iter(ctx.next_functions)  # one per tensor input
    out = []
    for pos, (x, is_tensor) in enumerate(zip(ctx.needs_input_grad, ctx.is_tensor, strict=True)):
        node = next(nodes)[0] if is_tensor else None
        if pos < first:
            continue
        if x and node is not None and _will_execute is not None:
            try:
                x = bool(_will_execute(node))
            except RuntimeError:  # not inside an engine-run backward: assume it is needed
                pass
        out.append(bool(x))
    return tuple(out)


def _merge_filter_terms(has_u: tuple[bool, ...], flat: Sequence[Tensor | None], hs: Sequence[Tensor | None],
                        replaced: list[tuple[int, int, list[Tensor | None]]], kept: tuple[Tensor | None, ...],
                        ) -> tuple[list[Tensor | None], tuple[bool, ...], tuple[Tensor | None, ...]]:
    """The replaced terms as one edge sum's factors, a term's B- and A-replaced copies merged into one:
    ``h_B A + B h_A = [h_B | B] @ [A ; h_A]`` (one filter matmul and one pass over the edges instead of two)."""
    terms: list[Tensor | None] = []
    term_u: list[bool] = []
    term_w: list[Tensor | None] = []
    for (a, slot, t), w in zip(replaced, kept, strict=True):
        hb, ha = hs[4 * a + _B], hs[4 * a + _A]
        if slot == _A and hb is not None:
            continue  # merged into the B-replaced copy
        if slot == _B and ha is not None:
            t = [t[_U], t[_Y], torch.cat([hb, flat[4 * a + _B]], dim=1),  # type: ignore[list-item]
                 torch.cat([flat[4 * a + _A], ha], dim=0)]  # type: ignore[list-item]
        terms += t
        term_u.append(has_u[a])
        term_w.append(w)
    return terms, tuple(term_u), tuple(term_w)


class _EdgeSum(torch.autograd.Function):
    # inputs: graph, k, has_u, filters (each term's B @ A where known: a tuple, not an autograd input), like,
    # *flat (the terms' factors)
    @staticmethod
    def forward(ctx: Any, graph: EdgeIndex, k: int, has_u: tuple[bool, ...], filters: tuple[Tensor | None, ...],
                like: Tensor, *flat: Tensor | None) -> Tensor:
        ctx.graph, ctx.k, ctx.has_u = graph, k, has_u
        ctx.is_tensor = (False, False, False, False, True, *(x is not None for x in flat))
        ctx.save_for_backward(*flat)
        with torch.autocast(like.device.type, enabled=False):
            out, ws = _edge_sum(graph, k, has_u, filters, flat, like)
        ctx.filters = tuple(ws)  # constants of the backward: its derivatives in B and A are terms of their own
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        flat = ctx.saved_tensors
        needs = _wanted(ctx, 5)
        if not any(needs):
            return (None,) * (5 + len(flat))
        grads = _EdgeSumGrad.apply(ctx.graph, ctx.k, ctx.has_u, ctx.filters, needs, grad, *flat)
        return (None, None, None, None, None, *grads)


class _EdgeSumGrad(torch.autograd.Function):
    """Gradients of :class:`_EdgeSum`'s factors given the output gradient ``grad`` [K, N, F]."""

    # inputs: graph, k, has_u, filters, needs, grad, *flat
    @staticmethod
    def forward(ctx: Any, graph: EdgeIndex, k: int, has_u: tuple[bool, ...], filters: tuple[Tensor | None, ...],
                needs: tuple[bool, ...], grad: Tensor, *flat: Tensor | None) -> tuple[Tensor | None, ...]:
        ctx.graph, ctx.k, ctx.has_u, ctx.filters = graph, k, has_u, filters
        ctx.is_tensor = (False, False, False, False, False, True, *(x is not None for x in flat))
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad, *flat)
        with torch.autocast(grad.device.type, enabled=False):
            return tuple(_edge_sum_grads(graph, k, has_u, filters, needs, grad, flat))

    @staticmethod
    def backward(ctx: Any, *hs: Tensor | None) -> tuple[Any, ...]:
        grad, *flat = ctx.saved_tensors
        graph, k, has_u, filters = ctx.graph, ctx.k, ctx.has_u, ctx.filters
        wants = (False,) * 5 + _wanted(ctx, 5)
        # <hs, G(grad; factors)> = <grad, sum over terms and factors of the term with that factor replaced>;
        # a term whose u or y was replaced keeps its filter
        replaced = list(_replaced(has_u, flat, hs))
        kept = tuple(filters[a] if slot in (_U, _Y) else None for a, slot, _ in replaced)
        d_grad = None
        if wants[5] and replaced:  # in grad: that edge sum
            terms, term_u, term_w = _merge_filter_terms(has_u, flat, hs, replaced, kept)
            d_grad = _EdgeSum.apply(graph, k, term_u, term_w, grad, *terms)
        # in the factors: G of the replaced terms, each factor's gradient from the terms where another was
        rest: list[Tensor | None] = [None] * len(flat)
        keep = [(a, slot, t, w) for (a, slot, t), w in zip(replaced, kept, strict=True)
                if any(wants[6 + 4 * a + b] and b != slot for b in range(4))]
        if keep:
            needs = tuple(bool(wants[6 + 4 * a + b]) and b != slot and (has_u[a] or b != _U)
                          for a, slot, _, _ in keep for b in range(4))
            gs = _EdgeSumGrad.apply(graph, k, tuple(has_u[a] for a, _, _, _ in keep),
                                    tuple(w for _, _, _, w in keep), needs, grad,
                                    *[x for _, _, t, _ in keep for x in t])
            for e, (a, _, _, _) in enumerate(keep):
                for b in range(4):
                    g = gs[4 * e + b]
                    if g is not None:
                        rest[4 * a + b] = g if rest[4 * a + b] is None else rest[4 * a + b] + g
        return (None, None, None, None, None, d_grad, *rest)


#: Below this many per-edge products (edges x features), :func:`edge_sum` is written with plain autograd instead
#: of the fused node: on small graphs (a molecule, a batch of a few) the fused node's Python-level bookkeeping
#: costs more than the [E, F] temporaries it saves, and plain autograd is faster; above it the fused node is.
PLAIN_BELOW_PRODUCTS = 60_000


def _edge_sum_plain(graph: EdgeIndex, terms: Sequence[Term], k: int, dtype: torch.dtype) -> Tensor:
    """The same sums with plain autograd: per term the filter ``B @ A``, the gathered ``y[:, j]``, the [K or 1,
    E, F] product and one ``index_add`` onto the atoms (autograd's own derivatives, of any order)."""
    out: Tensor | None = None
    for u, y, b, a in terms:
        w = b @ a  # [P, F]
        if graph.pairs != graph.num:
            w = torch.cat([w, w])
        m = y.index_select(1, graph.j) * w  # [K or 1, E, F]
        if u is not None:
            m = u.unsqueeze(-1) * m
        m = m.to(dtype).expand(k, -1, -1)
        out = (m.new_zeros(k, graph.nodes, m.size(-1)) if out is None else out).index_add(1, graph.i, m)
    assert out is not None
    return out


def edge_sum(graph: EdgeIndex, like: Tensor, terms: Sequence[Term]) -> Tensor:
    """``out[k, i] = sum over edges e = (j -> i) and terms of u[k, e] * y[k or 0, j] * (B @ A)[e]``.

    Args:
        graph: The batch's :class:`EdgeIndex`.
        like: Any tensor of the output's device and (least) dtype; the output's dtype is the widest of
            ``like`` and the factors (mixed precision).
        terms: ``(u, y, B, A)``: ``u`` [K, E] per-edge vectors or ``None`` (then ``y`` has K rows), ``y``
            [K or 1, N, F] atom tensors (one row when ``u`` is given), ``B`` [P, R] the radial basis (per pair,
            see :class:`EdgeIndex`) and ``A`` [R, F] the filter weight: the filter is ``B @ A`` [P, F].

    Returns:
        [K, N, F]; differentiable to any order. Graphs with fewer than :data:`PLAIN_BELOW_PRODUCTS` edge
        products are summed with plain autograd (same values and derivatives), larger ones by the fused node.
    """
    if not terms:
        raise ValueError("edge_sum needs at least one term")
    for u, y, _, _ in terms:
        if u is not None and y.size(0) != 1:
            raise ValueError(f"a term with u takes one-row y, got y of {y.size(0)} rows")
    k = max(t[0].size(0) if t[0] is not None else t[1].size(0) for t in terms)
    if graph.num * terms[0][3].size(-1) < PLAIN_BELOW_PRODUCTS:
        dtype = like.dtype
        for x in (x for t in terms for x in t if x is not None):
            dtype = torch.promote_types(dtype, x.dtype)
        return _edge_sum_plain(graph, terms, k, dtype)
    flat: list[Tensor | None] = [x for t in terms for x in t]
    return _EdgeSum.apply(graph, k, tuple(t[0] is not None for t in terms), (None,) * len(terms), like, *flat)
