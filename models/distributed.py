"""Process groups and gradient synchronisation for the training app; the launch environment they start from is
parsed in :mod:`models.launch` (re-exported here).

Multi-task parallelism (HydraGNN style): :func:`assign_head_groups` splits the ranks into one group per head;
:class:`GradSync` all-reduces the encoder gradients over the world and each head's gradients over its group.
"""

from __future__ import annotations

import datetime
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist

from models import devices
from models.launch import (
    DistEnv,
    resolve_master_addr,
)

# ----------------------------------------------------------------------------------------------------------
# process group lifecycle


def init(denv: DistEnv, *, device: str = "auto", gpus_per_rank: int = 1, backend: str | None = None,
         timeout_s: float = 600.0) -> torch.device:
    """Pick this rank's device (:func:`models.devices.rank_device`: CUDA, ROCm, Intel XPU or the CPU) and
    initialise the default process group when ``denv.distributed``.

    Args:
        denv: The parsed launch environment.
        device: ``auto``, ``cpu``, ``cuda`` or ``xpu``.
        gpus_per_rank: Devices each rank is given (the rank computes on the first of its own).
        backend: The collective backend; default the device's (nccl, xccl, gloo). ``gloo`` also forces the CPU.
        timeout_s: Collective timeout, seconds.

    Returns:
        The device this rank computes on.
    """
    dev = devices.rank_device("cpu" if backend == "gloo" else device, denv.local_rank, gpus_per_rank)
    devices.set_current(dev)
    if denv.distributed and not dist.is_initialized():
        addr = resolve_master_addr(denv)
        dist.init_process_group(
            backend=backend or devices.backend_for(dev),
            init_method=f"tcp://{addr}:{denv.master_port}",
            rank=denv.rank,
            world_size=denv.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type != "cpu" else None,
        )
    return dev


def shutdown(timeout_s: float = 60.0) -> None:
    """Barrier then destroy the process group (bounded: gloo teardown can otherwise hang)."""
    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def is_initialized() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def comm_device() -> torch.device:
    """Where small tensors of collectives must live: the current accelerator under nccl/xccl, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if is_initialized() and dist.get_backend() == "xccl":
        return torch.device("xpu", torch.xpu.current_device())
    return torch.device("cpu")


def all_reduce_(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce a small tensor over the world (moved to :func:`comm_device` and back); a no-op without a
    process group.

    Returns:
        The reduced tensor, on the device ``tensor`` was on.
    """
    if not is_initialized():
        return tensor
    dev = comm_device()
    if tensor.device == dev:
        dist.all_reduce(tensor, op=op)
        return tensor
    moved = tensor.to(dev)
    dist.all_reduce(moved, op=op)
    return moved.to(tensor.device)


# ----------------------------------------------------------------------------------------------------------
# multi-task parallelism


def assign_head_groups(
    world_size: int, heads: Sequence[int], weights: Mapping[int, float] | None = None
) -> dict[int, list[int]]:
    """Split ``world_size`` ranks into contiguous groups, one per head.

    Ranks are shared out in proportion to ``weights`` (e.g. dataset sizes; equal by default), every head
    getting at least one rank.

    Args:
        world_size: Number of ranks.
        heads: Head ids, in a fixed order identical on every rank.
        weights: Optional share per head.

    Returns:
        ``{head_id: [ranks]}``; the ranks of different heads are disjoint and cover ``range(world_size)``.

    Raises:
        ValueError: when there are fewer ranks than heads.
    """
    heads = list(heads)
    if not heads:
        raise ValueError("no heads to assign ranks to")
    if world_size < len(heads):
        raise ValueError(
            f"head-grouped parallelism needs at least one rank per head: {world_size} < {len(heads)}"
        )
    w = [float((weights or {}).get(h, 1.0)) for h in heads]
    total = sum(w)
    spare = world_size - len(heads)
    extra = [spare * wi / total for wi in w]
    counts = [1 + int(e) for e in extra]
    # largest remainders take the leftover ranks
    order = sorted(range(len(heads)), key=lambda k: (-(extra[k] - int(extra[k])), k))
    for k in order[: world_size - sum(counts)]:
        counts[k] += 1
    groups, start = {}, 0
    for h, c in zip(heads, counts, strict=True):
        groups[h] = list(range(start, start + c))
        start += c
    return groups


def split_parameters(
    model: torch.nn.Module,
) -> tuple[list[torch.nn.Parameter], dict[int, list[torch.nn.Parameter]]]:
    """Encoder parameters and per-head parameters of a multi-head model.

    The model keeps its heads in ``model.heads`` (a ``ModuleDict`` keyed by ``str(head_id)``, or a container
    such as :class:`models.nn.heads.MultiHead` whose ``heads`` attribute is one), and the direct node heads of
    each head id in ``model.node_heads.heads`` (same keys) when it has any; every other parameter belongs to the
    shared encoder.
    """
    heads = getattr(model, "heads", None)
    if heads is not None and not isinstance(heads, torch.nn.ModuleDict):
        heads = getattr(heads, "heads", None)  # a MultiHead container holding the ModuleDict
    if not isinstance(heads, torch.nn.ModuleDict):
        raise TypeError(
            "the model must keep its heads in a ModuleDict attribute `heads` keyed by str(head_id)"
        )
    head_params = {int(k): [p for p in m.parameters() if p.requires_grad] for k, m in heads.items()}
    node_heads = getattr(getattr(model, "node_heads", None), "heads", None)  # direct node heads, per head id
    if isinstance(node_heads, torch.nn.ModuleDict):
        for k, m in node_heads.items():
            head_params.setdefault(int(k), []).extend(p for p in m.parameters() if p.requires_grad)
    in_heads = {id(p) for ps in head_params.values() for p in ps}
    encoder = [p for p in model.parameters() if p.requires_grad and id(p) not in in_heads]
    return encoder, head_params


def _reduce_mean(params: Iterable[torch.nn.Parameter], group: dist.ProcessGroup | None, size: int) -> None:
    params = list(params)
    if not params or size <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


class GradSync:
    """Gradient synchronisation for data- and multi-task-parallel training (call :meth:`reduce` after
    ``backward`` and before clipping / the optimizer step).

    * ``grouped=False``: every gradient is averaged over the world (what DDP does; heads absent from a rank's
      batch contribute zeros, so no ``find_unused_parameters`` and no ``static_graph`` is needed).
    * ``grouped=True``: encoder gradients are averaged over the world, each head's over its head group;
      the heads this rank does not own get ``grad=None`` (the optimizer skips them) and are refreshed from
      their group's first rank by :meth:`broadcast_heads` before evaluation and checkpoints.

    Each call does one flattened all-reduce per parameter set. Every rank must construct this object in the
    same order (``new_group`` is collective).
    """

    def __init__(self, model: torch.nn.Module, groups: Mapping[int, Sequence[int]] | None = None) -> None:
        """Args:
        model: The (unwrapped) multi-head model.
        groups: ``{head_id: ranks}`` from :func:`assign_head_groups` for head-grouped parallelism, or ``None``.
        """
        self.model = model
        self.world_size = dist.get_world_size() if is_initialized() else 1
        self.rank = dist.get_rank() if is_initialized() else 0
        self.encoder, self.head_params = split_parameters(model)
        self.groups = {int(h): list(r) for h, r in (groups or {}).items()}
        self.pg: dict[int, dist.ProcessGroup | None] = {}
        self.my_heads: list[int] = list(self.head_params)
        if self.groups:
            missing = set(self.head_params) - set(self.groups)
            if missing:
                raise ValueError(f"heads {sorted(missing)} have no rank group")
            for h in sorted(self.groups):
                ranks = self.groups[h]
                self.pg[h] = dist.new_group(ranks) if is_initialized() else None
            self.my_heads = [h for h in sorted(self.groups) if self.rank in self.groups[h]]

    @property
    def grouped(self) -> bool:
        """Whether heads are synchronised per group."""
        return bool(self.groups)

    def reduce(self) -> None:
        """Average gradients over the world (encoder, and heads when not grouped) or head groups."""
        if not self.grouped:
            params = self.encoder + [p for h in sorted(self.head_params) for p in self.head_params[h]]
            _reduce_mean(params, None, self.world_size)
            return
        _reduce_mean(self.encoder, None, self.world_size)
        for h in sorted(self.head_params):
            if h in self.my_heads:
                _reduce_mean(self.head_params[h], self.pg[h], len(self.groups[h]))
            else:
                for p in self.head_params[h]:
                    p.grad = None

    @torch.no_grad()
    def clip_and_check(self, loss: torch.Tensor, max_norm: float) -> tuple[float, bool]:
        """Global gradient norm (over the encoder and every head, the same value on every rank), clip the
        gradients to ``max_norm``, and say whether the loss or the norm is non-finite on any rank.

        In grouped mode a rank holds only its own heads' gradients, so each rank contributes
        ``|g_h|^2 / |group_h|`` of its heads to one small all-reduce (which also carries the NaN flag);
        clipping with a per-rank norm would let the encoder drift apart between ranks.

        Args:
            loss: This rank's scalar loss of the step.
            max_norm: Clip threshold (``inf``: no clipping).

        Returns:
            ``(total_norm, bad)``.
        """

        def sq(params: list[torch.nn.Parameter]) -> torch.Tensor:
            grads = [p.grad.detach() for p in params if p.grad is not None]
            if not grads:
                return torch.zeros((), dtype=torch.float64)
            norms = torch._foreach_norm(grads)
            return torch.stack([n.to(torch.float64) for n in norms]).square().sum().cpu()

        enc_sq = sq(self.encoder)
        shared = torch.zeros(2, dtype=torch.float64)
        shared[1] = float(not bool(torch.isfinite(loss.detach()).all()))
        for h in sorted(self.head_params):
            if not self.grouped:
                enc_sq = enc_sq + sq(self.head_params[h])
            elif h in self.my_heads:
                shared[0] += sq(self.head_params[h]) / len(self.groups[h])
        shared = all_reduce_(shared)
        total = float(torch.sqrt(enc_sq + shared[0]))
        bad = bool(shared[1] > 0) or not math.isfinite(total)
        if not bad and total > max_norm:
            coef = max_norm / (total + 1e-6)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            torch._foreach_mul_(grads, coef)
        return total, bad

    @torch.no_grad()
    def broadcast_heads(self) -> None:
        """Copy each head's weights from the first rank of its group to every rank (grouped mode only)."""
        if not self.grouped or not is_initialized():
            return
        for h in sorted(self.head_params):
            params = self.head_params[h]
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            dist.broadcast(flat, src=self.groups[h][0])
            offset = 0
            for p in params:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n

    @torch.no_grad()
    def broadcast_all(self, src: int = 0) -> None:
        """Make every rank hold rank ``src``'s parameters and buffers (used once, after building the model)."""
        if not is_initialized():
            return
        for t in itertools.chain(self.model.parameters(), self.model.buffers()):
            dist.broadcast(t.data, src=src)
