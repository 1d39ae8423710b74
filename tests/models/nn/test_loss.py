"""multitask_loss: per-head weighting, energy per atom, graphs without force labels, stress term."""

from __future__ import annotations

import pytest
import torch

from models.nn import multitask_loss
from tests.models.nn.emt_graphs import mixed_batch


def _pred(batch, de: torch.Tensor, df: float) -> dict[str, torch.Tensor]:
    forces = torch.nan_to_num(batch.forces, nan=0.0) + df
    return {"energy": batch.energy + de, "forces": forces, "stress": torch.nan_to_num(batch.stress) + 0.1}


@pytest.mark.parametrize("energy_loss", ["mse", "mae"])
def test_loss_matches_hand_computation(energy_loss: str) -> None:
    batch = mixed_batch()  # graphs: head 0 (8 atoms), head 1 (6 atoms, no force labels), head 2 (4), head 1 (6)
    de = torch.tensor([0.8, 1.2, -0.4, 0.6], dtype=torch.float64)
    pred = _pred(batch, de, df=0.05)
    weights = {0: 2.0, 1: 0.5}
    loss, metrics = multitask_loss(pred, batch, head_weights=weights, force_weight=10.0, energy_loss=energy_loss)

    def f(x: float) -> float:
        return x * x if energy_loss == "mse" else abs(x)

    natoms = batch.natoms.tolist()
    epa = [float(de[g]) / natoms[g] for g in range(4)]
    e0, e1, e2 = f(epa[0]), (f(epa[1]) + f(epa[3])) / 2, f(epa[2])
    force = f(0.05)  # every labelled component is off by 0.05; the cluster (head 1, graph 1) has no labels
    expected = 2.0 * (e0 + 10 * force) + 0.5 * (e1 + 10 * force) + 1.0 * (e2 + 10 * force)
    assert float(loss) == pytest.approx(expected, rel=1e-9)
    assert float(metrics[1]["energy_mae_per_atom"]) == pytest.approx((abs(epa[1]) + abs(epa[3])) / 2)
    assert float(metrics[1]["n_graphs"]) == 2 and float(metrics[1]["n_force_atoms"]) == natoms[3]
    assert float(metrics[2]["force_mae"]) == pytest.approx(0.05)


def test_graphs_without_force_labels_contribute_nothing() -> None:
    batch = mixed_batch()
    batch.has_forces[:] = torch.tensor([False, False, True, False])
    pred = _pred(batch, torch.zeros(4, dtype=torch.float64), df=0.0)
    pred["forces"] = pred["forces"].clone().requires_grad_(True)
    pred["forces"].data[batch.batch != 2] += 100.0  # wrong forces where there is no label must not matter
    loss, metrics = multitask_loss(pred, batch)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-12)
    assert float(metrics[0]["n_force_atoms"]) == 0 and float(metrics[0]["force_mae"]) == 0.0
    loss.backward()
    assert torch.isfinite(pred["forces"].grad).all()


def test_stress_term_only_for_labelled_graphs() -> None:
    batch = mixed_batch()
    pred = _pred(batch, torch.zeros(4, dtype=torch.float64), df=0.0)
    base, _ = multitask_loss(pred, batch)
    with_stress, _ = multitask_loss(pred, batch, stress_weight=1.0)
    # periodic graphs (heads 0 and 2) are off by 0.1 in every component; molecules carry NaN and are skipped
    assert float(with_stress - base) == pytest.approx(0.01 + 0.01, rel=1e-9)


def test_unknown_energy_loss() -> None:
    batch = mixed_batch()
    with pytest.raises(ValueError, match="energy_loss"):
        multitask_loss(_pred(batch, torch.zeros(4, dtype=torch.float64), 0.0), batch, energy_loss="l3")
