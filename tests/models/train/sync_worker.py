"""Worker of the gradient-synchronisation test: one rank of a gloo group taking one training step on its own
head's data, then reporting its weights (run through ``torch.multiprocessing``)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist

from tests.models.train.conftest import TINY_PAINN


def step_and_report(rank: int, world: int, port: int, data_root: str, out_dir: str, grouped: bool) -> None:
    """Take one AdamW step with :class:`models.distributed.GradSync` and save this rank's state dict."""
    torch.set_num_threads(1)
    from models.data.loader import MultiDatasetLoader
    from models.data.store import open_split
    from models.distributed import GradSync, assign_head_groups
    from models.nn.loss import multitask_loss
    from models.nn.model import build_model
    from models.training.loop import Trainer
    from models.training.schedule import Schedule

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.manual_seed(rank)  # different initial weights on purpose: the sync must not rely on them
        model = build_model(dict(TINY_PAINN)).double()
        groups = assign_head_groups(world, [0, 1]) if grouped else None
        sync = GradSync(model, groups)
        sync.broadcast_all(0)
        # rank r reads only the dataset of its head group (or a distinct shard of both when not grouped)
        head = 0 if rank < world // 2 else 1
        name = "metals" if head == 0 else "molecules"
        stores = (
            [open_split(data_root, name, "train", dtype=torch.float64)]
            if grouped
            else [open_split(data_root, n, "train", dtype=torch.float64) for n in ("metals", "molecules")]
        )
        lrank = groups[head].index(rank) if grouped else rank
        lworld = len(groups[head]) if grouped else world
        loader = MultiDatasetLoader(stores, 3, rank=lrank, world_size=lworld, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        trainer = Trainer(
            model,
            optimizer=opt,
            schedule=Schedule(opt, {"kind": "constant"}, 1),
            sync=sync,
            loss_fn=multitask_loss,
            device=torch.device("cpu"),
            precision="fp64",
            grad_clip=0.05,  # small, so clipping is active and its global norm must agree across ranks
        )
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.train_epoch(loader, steps=2)
        after = model.state_dict()
        torch.save(
            {"before": before, "after": after, "my_heads": sync.my_heads}, Path(out_dir) / f"rank{rank}.pt"
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown (gloo threads can otherwise linger)
