"""An ASE calculator over trained checkpoints: energy, forces and stress of any structure, from one model or
an ensemble, with the head chosen by the dataset it was trained on.

    from models.ase_calculator import ModelCalculator
    atoms.calc = ModelCalculator("runs/demo-hpo/hpo/painn/trial-0001/run/checkpoints/best.pt", head="demo-emt")
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

The graph is built as the model's training graphs were: the checkpoint's ``graph`` settings (cutoff, neighbour
cap) when it records them, else the model's cutoff and no cap. Energies include the head's element reference
energies (the checkpoint's ``head_references``), so they are total energies in the dataset's units (eV).
Forces are ``-dE/dR`` (eV/Å) and the stress ``(1/V) dE/dε`` (eV/Å³, ASE's sign and Voigt order), both exact
derivatives of the energy, so relaxations and NVE molecular dynamics behave (see the tests).

With several checkpoints (an ensemble) the results are the members' means, and ``calc.results`` also holds
``energy_std`` (eV), ``forces_std`` [N, 3] (eV/Å) and ``energies_members`` [M] (eV): the ensemble's spread, as
an uncertainty. ``precision="fp64"`` (default) for dynamics and finite differences; ``fp32`` is faster.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from models import checkpoint, keys
from models.inference import load_model
from models.nn.precision import cast_batch, param_dtype


class _Member:
    """One checkpoint: its model, head names and references, and graph settings."""

    def __init__(self, path: str | os.PathLike[str], device: torch.device, precision: str) -> None:
        ckpt = checkpoint.load(path, map_location="cpu")
        self.path = str(path)
        self.model = load_model(ckpt).to(device=device, dtype=param_dtype(precision)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.head_ids = [int(h) for h in self.model.head_ids]
        self.head_names = {int(h): str(n) for h, n in (ckpt.get("head_names") or {}).items()}
        self.references = {int(h): {int(z): float(e) for z, e in refs.items()}
                           for h, refs in (ckpt.get("head_references") or {}).items()}
        graph = ckpt.get("graph") or {}
        self.cutoff = float(graph.get("cutoff") or self.model.config["cutoff"])
        self.max_neighbours = graph.get("max_neighbours")

    def head_id(self, head: int | str | None) -> int:
        if head is None:
            return self.head_ids[0]
        if isinstance(head, int) or (isinstance(head, str) and head.lstrip("-").isdigit()):
            hid = int(head)
            if hid not in self.head_ids:
                raise ValueError(f"{self.path}: no head {hid} (heads: {self.head_ids})")
            return hid
        by_name = {n: h for h, n in self.head_names.items()}
        if head not in by_name:
            known = ", ".join(f"{n} ({h})" for h, n in sorted(self.head_names.items())) or "none recorded"
            raise ValueError(f"{self.path}: no head for dataset {head!r} (heads: {known})")
        return by_name[head]


class ModelCalculator(Calculator):
    """ASE calculator over one checkpoint or an ensemble of them (see the module docstring).

    Args:
        checkpoints: A checkpoint path, or several (an ensemble; all must have the chosen head).
        head: The head to evaluate: its dataset name (``"demo-emt"``), its id, or ``None`` for the first.
        precision: ``fp64`` (default), ``fp32`` or ``bf16``.
        device: ``cpu``, ``cuda``, ...
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012 (ASE's interface)

    def __init__(self, checkpoints: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 head: int | str | None = None, precision: str = "fp64", device: str = "cpu",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        paths = [checkpoints] if isinstance(checkpoints, str | os.PathLike) else list(checkpoints)
        if not paths:
            raise ValueError("no checkpoint given")
        self.device = torch.device(device)
        self.precision = precision
        self.members = [_Member(p, self.device, precision) for p in paths]
        self.head_ids = [m.head_id(head) for m in self.members]

    def calculate(self, atoms: Any = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        """Energy, forces and (for a cell periodic in all directions) stress of ``atoms``."""
        from models.screen import block_from_atoms

        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        periodic = bool(np.all(self.atoms.pbc))
        energies, forces, stresses = [], [], []
        graphs: dict[tuple[float, int | None], Any] = {}  # members trained on the same graphs share one
        for member, hid in zip(self.members, self.head_ids, strict=True):
            setting = (member.cutoff, member.max_neighbours)
            if setting not in graphs:
                graphs[setting] = block_from_atoms([(self.atoms, 0, "")], *setting).to_batch()
            batch = graphs[setting].clone()
            batch[keys.HEAD] = torch.full_like(batch[keys.HEAD], hid)
            refs = member.references.get(hid, {})
            batch[keys.EREF] = torch.tensor([sum(refs.get(int(z), 0.0) for z in self.atoms.numbers)],
                                            dtype=torch.float64)
            batch = cast_batch(batch.to(self.device), self.precision)
            out = member.model(batch, forces=True, stress=periodic)
            energies.append(float(out["energy"].double().sum()))
            forces.append(out["forces"].double().cpu().numpy())
            if periodic:
                stresses.append(out["stress"][0].double().cpu().numpy())
        e = np.array(energies)
        f = np.stack(forces)
        self.results["energy"] = self.results["free_energy"] = float(e.mean())
        self.results["forces"] = f.mean(axis=0)
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.mean(stresses, axis=0))
        if len(self.members) > 1:
            self.results["energy_std"] = float(e.std())
            self.results["forces_std"] = f.std(axis=0)
            self.results["energies_members"] = e
