"""Row gather and row sum over edges whose derivatives of every order stay ``index_select`` / ``index_add_``.

Force training differentiates the model twice. Autograd's own backward of ``index_select`` (and of PyG's
``scatter``, an element-wise ``gather``) is several times slower on CPU than the ``index_add_`` it is
mathematically equal to, and that cost is paid at every order. These two functions are each other's derivative,
so the first, second and any higher derivative are again plain ``index_select`` / ``index_add_`` calls of
PyTorch (no hand-written kernel).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, src: Tensor, index: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = num_rows
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (index,) = ctx.saved_tensors
        return _Sum.apply(grad, index, ctx.num_rows), None, None


class _Sum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, src: Tensor, index: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = num_rows
        return src.new_zeros((num_rows, *src.shape[1:])).index_add_(0, index, src)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (index,) = ctx.saved_tensors
        return _Gather.apply(grad.contiguous(), index, ctx.num_rows), None, None


def gather_rows(src: Tensor, index: Tensor) -> Tensor:
    """``src[index]`` along dim 0.

    Args:
        src: [N, ...] node values.
        index: [E] int64 row of each edge.

    Returns:
        [E, ...] values, differentiable to any order.
    """
    return _Gather.apply(src, index, src.size(0))


def sum_rows(src: Tensor, index: Tensor, num_rows: int) -> Tensor:
    """``out[n] = sum over e with index[e] == n of src[e]`` (rows without an edge are zero).

    Args:
        src: [E, ...] edge values.
        index: [E] int64 target row of each edge.
        num_rows: N, the number of output rows.

    Returns:
        [N, ...] sums, differentiable to any order.
    """
    return _Sum.apply(src, index, num_rows)
