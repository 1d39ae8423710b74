"""Gradient synchronisation over real gloo process groups (4 CPU ranks, each bounded by a timeout)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.models.train.sync_worker import step_and_report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_ranks(world: int, data_root: Path, out: Path, grouped: bool, timeout_s: float = 120) -> list[dict]:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=step_and_report, args=(r, world, port, str(data_root), str(out), grouped))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _split(state: dict) -> tuple[dict, dict[int, dict]]:
    enc = {k: v for k, v in state.items() if not k.startswith("heads.")}
    heads: dict[int, dict] = {}
    for k, v in state.items():
        if k.startswith("heads.heads."):
            h = int(k.split(".")[2])
            heads.setdefault(h, {})[k] = v
    return enc, heads


@pytest.mark.timeout(300)
def test_grouped_sync_encoder_world_heads_per_group(data_root: Path, tmp_path: Path) -> None:
    reps = _run_ranks(4, data_root, tmp_path, grouped=True)
    encs, heads = zip(*[_split(r["after"]) for r in reps], strict=True)
    assert [r["my_heads"] for r in reps] == [[0], [0], [1], [1]]
    # the encoder is identical on every rank, and it moved
    for enc in encs[1:]:
        for k, v in enc.items():
            assert torch.equal(v, encs[0][k]), k
    before, _ = _split(reps[0]["before"])
    assert any(not torch.equal(before[k], encs[0][k]) for k in before)
    # each head is identical within its group (ranks 0,1 for head 0; 2,3 for head 1) and trained there only
    for h, (a, b) in {0: (0, 1), 1: (2, 3)}.items():
        for k, v in heads[a][h].items():
            assert torch.equal(v, heads[b][h][k]), k
        _, h_before = _split(reps[a]["before"])
        assert any(not torch.equal(h_before[h][k], heads[a][h][k]) for k in h_before[h])
    # ranks of the other group never stepped head 0: it still holds the initial (broadcast) weights there
    _, h_before = _split(reps[2]["before"])
    for k, v in heads[2][0].items():
        assert torch.equal(v, h_before[0][k]), k


@pytest.mark.timeout(300)
def test_plain_data_parallel_sync(data_root: Path, tmp_path: Path) -> None:
    reps = _run_ranks(2, data_root, tmp_path, grouped=False)
    a, b = reps[0]["after"], reps[1]["after"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert any(not torch.equal(v, reps[0]["before"][k]) for k, v in a.items())
