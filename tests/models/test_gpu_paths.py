"""The paths a GPU run takes, checked on a CUDA device against the CPU (skipped, with the reason, without one).

``benchmarks/gpu_suite.py`` runs these first on a lent GPU machine (``pytest -m gpu``), so that a broken device
path shows as a failing test rather than as a benchmark that cannot start.
"""

from __future__ import annotations

import copy

import pytest
import torch

from models.inference import Predictor
from models.nn import build_model
from tests.models.nn.emt_graphs import mixed_batch, tiny_config

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_config("painn")).eval()


def test_fused_prediction_on_cuda_matches_the_cpu_in_fp64() -> None:
    """Device placement of the fused predictor: the same energies and forces (fp64) on CUDA as on the CPU."""
    model = _model()
    batch = mixed_batch(dtype=torch.float64)
    cpu = Predictor(copy.deepcopy(model).double(), device="cpu", precision="fp64").predict(batch.clone())
    gpu = Predictor(copy.deepcopy(model).double().cuda(), device="cuda", precision="fp64").predict(batch.clone())
    torch.testing.assert_close(gpu["energy"].cpu(), cpu["energy"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu["forces"].cpu(), cpu["forces"], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_epoch_on_cuda(precision: str) -> None:
    """The training loop on CUDA: the batch moved and cast, BF16 autocast, finite loss, weights updated there."""
    from models.distributed import GradSync
    from models.nn.loss import multitask_loss
    from models.training.loop import Trainer
    from models.training.schedule import Schedule

    torch.manual_seed(0)
    model = build_model(tiny_config("painn")).cuda()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = Trainer(model, optimizer=opt, schedule=Schedule(opt, {"kind": "constant"}, 1), sync=GradSync(model),
                      loss_fn=multitask_loss, device=torch.device("cuda"), precision=precision, force_weight=10.0,
                      grad_clip=10.0)
    result = trainer.train_epoch([mixed_batch(dtype=torch.float32)] * 2, 2)
    assert torch.isfinite(torch.tensor(result.loss))
    assert all(p.is_cuda for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() > 0
