"""Edge products summed onto atoms, as one autograd node whose derivatives of every order are the same two nodes.

PaiNN's messages are sums over edges of per-edge products of a gathered atom quantity and an edge filter:

* "V" terms ``out[k, i] += y[k, j] * W_e`` (an atom tensor ``y`` [K, N, F] gathered at the neighbour ``j``, times
  a per-edge or per-pair filter ``W`` [E or P, F]), and
* "R" terms ``out[c, i] += u[c, e] * m_e`` (K = 3: a per-edge vector ``u`` [3, E] times a per-edge row ``m``
  [E, F]).

Written with plain autograd, each term leaves several [K, E, F] temporaries saved for the backward, and force
training (a double backward) differentiates every elementwise op of the backward again, with gradient
accumulation adds in between. Here the forward (:class:`_EdgeSum`) builds the per-edge products in one buffer
and sums it; the backward (:class:`_EdgeSumGrad`) computes every input's gradient from one gather of the
output gradient. The derivative of :class:`_EdgeSumGrad` is again one :class:`_EdgeSum` (for the output
gradient) and one :class:`_EdgeSumGrad` (for the other inputs), because all terms are bilinear: derivatives of
any order stay within these two nodes, each a few ``index_select`` / ``index_add_`` / elementwise calls of
PyTorch, done in place on their own buffers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

# Per-thread scratch buffers for the [K, E, F] temporaries inside the two nodes below (CPU only, each at most
# _SCRATCH_BYTES). Freshly allocated multi-megabyte tensors are page-faulted in on every use (glibc returns
# them to the OS when freed), which on CPU cost more than the arithmetic done in them. A buffer only ever holds
# a temporary that dies before its node returns: nothing computed is kept from one call to the next.
_SCRATCH_BYTES = 64 << 20
_scratch = threading.local()


_functorch = getattr(torch._C, "_functorch", None)


def _is_batched(t: Tensor) -> bool:
    """Whether ``t`` is a ``vmap`` batched tensor (``torch.func.vmap``, or the legacy one autograd's
    ``is_grads_batched`` runs the backward under)."""
    if _functorch is None:
        return False
    return bool(_functorch.is_batchedtensor(t) or _functorch.is_legacy_batchedtensor(t))


def _pooled(like: Tensor) -> bool:
    """Whether temporaries like ``like`` go to the scratch pool: CPU tensors outside ``vmap`` (a batched
    backward, as the fused predictor's per-head forces run, has no batching rule for ``out=`` and must not
    leave a batched tensor in the pool)."""
    return like.device.type == "cpu" and not _is_batched(like)


def _buffer(slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` (dtype and device of ``like``) for temporary use."""
    numel = 1
    for d in shape:
        numel *= d
    if not _pooled(like) or numel * like.element_size() > _SCRATCH_BYTES:
        return like.new_empty(shape)
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    key = (slot, like.dtype)
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        buf = pool[key] = like.new_empty(max(numel, 1))
    return buf[:numel].view(shape)


def _gather(slot: int, src: Tensor, index: Tensor) -> Tensor:
    """``src.index_select(0, index)`` into scratch ``slot``."""
    if not _pooled(src):
        return src.index_select(0, index)
    return torch.index_select(src, 0, index, out=_buffer(slot, (index.size(0), src.size(-1)), src))


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
        n = num_nodes
        # rows of [3, N, F] tensors flattened to [3N, F]: component c of atom a is row c N + a
        self.j3 = torch.cat([self.j, self.j + n, self.j + 2 * n])
        self.i3 = torch.cat([self.i, self.i + n, self.i + 2 * n])

    def rows(self, k: int) -> tuple[Tensor, Tensor]:
        """(gather rows, sum rows) for [K, N, F] atom tensors flattened to [K N, F]."""
        return (self.j, self.i) if k == 1 else (self.j3, self.i3)

    def times_filter_(self, t: Tensor, w: Tensor) -> Tensor:
        """``t *= w`` in place: ``t`` [K, E, F] per edge, ``w`` [P, F] per pair (both halves)."""
        if self.pairs == self.num:
            return t.mul_(w)
        t.view(t.size(0), 2, self.pairs, t.size(-1)).mul_(w)
        return t

    def to_filter(self, g: Tensor) -> Tensor:
        """Per-edge [E, F] gradient of a per-pair filter: [P, F] (sum over both halves)."""
        if self.pairs == self.num:
            return g
        return g.view(2, self.pairs, g.size(-1)).sum(dim=0)


def _split(nv: int, tensors: tuple[Any, ...]) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """The flat ``(y0, W0, y1, W1, ..., u0, m0, ...)`` argument list as ``nv`` V pairs and the R pairs."""
    v = [(tensors[2 * a], tensors[2 * a + 1]) for a in range(nv)]
    r = [(tensors[2 * nv + 2 * a], tensors[2 * nv + 2 * a + 1]) for a in range(len(tensors) // 2 - nv)]
    return v, r


def _forward(graph: EdgeIndex, k: int, v_terms: list[tuple[Tensor, Tensor]],
             r_terms: list[tuple[Tensor, Tensor]], like: Tensor) -> Tensor:
    """``sum_e`` of all terms, [K, N, F] (no autograd)."""
    n, num = graph.nodes, graph.num
    src, dst = graph.rows(k)
    f = v_terms[0][0].size(-1) if v_terms else r_terms[0][1].size(-1) if r_terms else like.size(-1)
    dtype = like.dtype  # mixed precision (autocast): sum in the widest dtype of the terms
    for t in [x for pair in v_terms + r_terms for x in pair]:
        dtype = torch.promote_types(dtype, t.dtype)
    buf: Tensor | None = None
    for y, w in v_terms:
        if y.dtype != dtype:
            t = y.reshape(k * n, f).index_select(0, src).to(dtype)
        else:
            t = _gather(1 if buf is None else 2, y.reshape(k * n, f), src)
        t = graph.times_filter_(t.view(k, num, f), w)
        buf = t if buf is None else buf.add_(t)
    for u, m in r_terms:
        if buf is None and _pooled(u) and _pooled(m) and _pooled(like):
            buf = torch.mul(u.unsqueeze(-1), m.unsqueeze(0), out=_buffer(1, (k, num, f), like.new_empty(0, dtype=dtype)))
        elif buf is None:
            buf = u.unsqueeze(-1).to(dtype) * m.unsqueeze(0)
        else:
            buf.addcmul_(u.unsqueeze(-1), m.unsqueeze(0))
    out = like.new_zeros(k * n, f, dtype=dtype)
    if buf is not None:
        out.index_add_(0, dst, buf.view(k * num, f))
    return out.view(k, n, f)


class _EdgeSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, graph: EdgeIndex, k: int, nv: int, like: Tensor, *tensors: Tensor | None) -> Tensor:
        v, r = _split(nv, tensors)
        ctx.graph, ctx.k, ctx.nv = graph, k, nv
        ctx.save_for_backward(*tensors)
        return _forward(graph, k, [t for t in v if t[0] is not None and t[1] is not None],
                        [t for t in r if t[0] is not None and t[1] is not None], like)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        tensors = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[4:])
        grads = _EdgeSumGrad.apply(ctx.graph, ctx.k, ctx.nv, needs, grad, *tensors)
        return (None, None, None, None, *grads)


class _EdgeSumGrad(torch.autograd.Function):
    """Gradients of :class:`_EdgeSum`'s inputs given the output gradient ``grad`` [K, N, F]."""

    @staticmethod
    def forward(ctx: Any, graph: EdgeIndex, k: int, nv: int, needs: tuple[bool, ...], grad: Tensor,
                *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
        ctx.graph, ctx.k, ctx.nv = graph, k, nv
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad, *tensors)
        n, num, f = graph.nodes, graph.num, grad.size(-1)
        src, dst = graph.rows(k)
        gi = _gather(1, grad.reshape(k * n, f), dst).view(k, num, f)  # output gradient at each edge
        out: list[Tensor | None] = [None] * len(tensors)
        v, r = _split(nv, tensors)
        # one [K, E, F] scratch buffer is reused by every product below, and gi itself by the last one
        uniform = all(t is None or (t.dtype == gi.dtype and _pooled(t)) for t in tensors) and _pooled(gi)
        tmp: Tensor | None = None
        base = 2 * nv
        for a, (u, m) in enumerate(r):
            if m is not None and needs[base + 2 * a]:  # d/du[c, e] = sum_f grad_i[c] m_e
                if uniform:
                    tmp = torch.mul(gi, m.unsqueeze(0), out=_buffer(2, gi.shape, gi))
                    out[base + 2 * a] = tmp.sum(dim=-1)
                else:
                    out[base + 2 * a] = (gi * m.unsqueeze(0)).sum(dim=-1)
            if u is not None and needs[base + 2 * a + 1]:  # d/dm_e = sum_c u[c, e] grad_i[c]
                g = gi[0] * u[0].unsqueeze(-1)
                for c in range(1, k):
                    g.addcmul_(gi[c], u[c].unsqueeze(-1))
                out[base + 2 * a + 1] = g
        for a, (y, _) in enumerate(v):
            if y is not None and needs[2 * a + 1]:  # d/dw: sum_k grad_i * y_j
                if uniform:
                    tmp = _gather(2, y.reshape(k * n, f), src).view(k, num, f).mul_(gi)
                else:
                    tmp = y.reshape(k * n, f).index_select(0, src).view(k, num, f) * gi
                out[2 * a + 1] = graph.to_filter(tmp.sum(dim=0))
        last = max([a for a, (_, w) in enumerate(v) if w is not None and needs[2 * a]], default=-1)
        for a, (_, w) in enumerate(v):
            if w is not None and needs[2 * a]:  # d/dy: sum over edges leaving each atom of grad_i * w
                if a == last and uniform:
                    t = graph.times_filter_(gi, w)
                elif uniform:
                    t = graph.times_filter_(_buffer(2, gi.shape, gi).copy_(gi), w)
                else:
                    t = graph.times_filter_(gi.clone(), w)
                out[2 * a] = grad.new_zeros(k * n, f, dtype=t.dtype).index_add_(0, src, t.view(k * num, f)).view(k, n, f)
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *hs: Tensor | None) -> tuple[Any, ...]:
        grad, *tensors = ctx.saved_tensors
        graph, k, nv = ctx.graph, ctx.k, ctx.nv
        v, r = _split(nv, tuple(tensors))
        hv, hr = _split(nv, hs)
        d_grad = None
        if ctx.needs_input_grad[4]:
            # every output is bilinear in (grad, input): its derivative in grad is again an edge sum
            terms: list[Tensor | None] = []
            nv2 = 0
            for (y, w), (hy, hw) in zip(v, hv, strict=True):
                for a, b in ((hy, w), (y, hw)):
                    if a is not None and b is not None:
                        terms += [a, b]
                        nv2 += 1
            for (u, m), (hu, hm) in zip(r, hr, strict=True):
                for a, b in ((u, hm), (hu, m)):
                    if a is not None and b is not None:
                        terms += [a, b]
            if terms:
                d_grad = _EdgeSum.apply(graph, k, nv2, grad, *terms)
        # derivative in the other inputs: the same gradient map with the incoming gradients as inputs
        needs = tuple(ctx.needs_input_grad[5:])
        rest: tuple[Tensor | None, ...] = (None,) * len(tensors)
        if any(needs) and any(h is not None for h in hs):
            rest = _EdgeSumGrad.apply(graph, k, nv, needs, grad, *hs)
        return (None, None, None, None, d_grad, *rest)


def edge_sum(graph: EdgeIndex, like: Tensor, v_terms: Sequence[tuple[Tensor, Tensor]],
             r_terms: Sequence[tuple[Tensor, Tensor]] = ()) -> Tensor:
    """``out[k, i] = sum over edges e = (j -> i) of  sum_V y[k, j] W_e  +  sum_R u[k, e] m_e``.

    Args:
        graph: The batch's :class:`EdgeIndex`.
        like: Any tensor of the output's device and (least) dtype; the output's dtype is
            the widest of ``like`` and the terms (mixed precision).
        v_terms: ``(y, W)`` pairs: ``y`` [K, N, F] atom tensors, ``W`` [P, F] filters (per pair, see
            :class:`EdgeIndex`).
        r_terms: ``(u, m)`` pairs (K = 3): ``u`` [3, E], ``m`` [E, F].

    Returns:
        [K, N, F]; differentiable to any order.
    """
    k = v_terms[0][0].size(0) if v_terms else r_terms[0][0].size(0)
    flat: list[Tensor] = [t for pair in v_terms for t in pair] + [t for pair in r_terms for t in pair]
    return _EdgeSum.apply(graph, k, len(v_terms), like, *flat)
