"""Export the screening hits of a campaign as extxyz (ASE), best first (an active-learning loop's selections, which
are recorded as hits for their lineage, are not exported: :func:`is_selection`).

Each frame is one :class:`db.models.ScreeningHit`: its numbers, positions, cell and pbc (as recorded by the
screen stage), ``info`` with the rank, structure id, formula, score, energy per atom, uncertainty, criterion
head, the hit/model/task ids and every head's energy (``energy_<head>``), and, when the screening computed them,
the criterion head's energy and forces as the frame's calculator results (so ``ase.io.read`` gives them back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from campaign.errors import CampaignInputError
from models.atomic_files import atomic_path


def is_selection(data: Any) -> bool:
    """Whether a hit's ``data`` marks it as a structure an active-learning round chose to label (recorded as a
    hit for its lineage) rather than a discovery; hit listings and exports leave those out."""
    return isinstance(data, dict) and data.get("purpose") == "selection"


def hit_atoms(hit: Any) -> Any:
    """The ``ase.Atoms`` of one ScreeningHit row (``data`` must carry numbers and positions)."""
    import numpy as np
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    data = hit.data or {}
    if "numbers" not in data or "positions" not in data:
        raise CampaignInputError(f"hit {hit.id} has no structure recorded (numbers/positions)")
    pbc = data.get("pbc", [False, False, False])
    cell = np.asarray(data.get("cell") or np.zeros((3, 3)), dtype=float)
    atoms = Atoms(numbers=data["numbers"], positions=data["positions"], cell=cell if any(pbc) else None,
                  pbc=pbc)
    atoms.info.update({"rank": int(hit.rank), "structure_id": hit.structure_id, "formula": hit.formula,
                       "score": float(hit.score), "hit_id": int(hit.id), "task_id": hit.task_id,
                       "head": hit.head or ""})
    if hit.energy_per_atom is not None:
        atoms.info["energy_per_atom"] = float(hit.energy_per_atom)
    if hit.uncertainty is not None:
        atoms.info["uncertainty"] = float(hit.uncertainty)
    if hit.model_id is not None:
        atoms.info["model_id"] = int(hit.model_id)
    for h, e in (data.get("energies") or {}).items():
        atoms.info[f"energy_{h}"] = float(e)
    head_id = data.get("head_id")
    energy = (data.get("energies") or {}).get(str(head_id))
    if energy is not None:
        results: dict[str, Any] = {"energy": float(energy)}
        if data.get("forces") is not None:
            results["forces"] = np.asarray(data["forces"], dtype=float)
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def export_hits(engine: Any, campaign: str, path: str | os.PathLike[str], *, top: int | None = None) -> int:
    """Write the hits of ``campaign`` (ordered by rank, at most ``top``) to ``path`` as extxyz, atomically.

    Args:
        engine: A SQLAlchemy engine on the campaign database (only read).
        campaign: Campaign name.
        path: Output file (``.extxyz``/``.xyz``).
        top: Keep the best ``top`` hits (default: all).

    Returns:
        The number of structures written.

    Raises:
        CampaignInputError: no such campaign, or it has no screening hits.
    """
    import ase.io
    from sqlalchemy import select

    from db import models as m
    from db.engine import session_factory

    with session_factory(engine)() as s:
        cid = s.scalar(select(m.Campaign.id).where(m.Campaign.name == campaign))
        if cid is None:
            raise CampaignInputError(f"no campaign named {campaign!r} in the database")
        q = (select(m.ScreeningHit).join(m.Task, m.ScreeningHit.task_id == m.Task.id)
             .where(m.Task.campaign_id == cid).order_by(m.ScreeningHit.rank, m.ScreeningHit.id))
        found = [h for h in s.scalars(q) if not is_selection(h.data)]
        frames = [hit_atoms(h) for h in found[:top]]
    if not frames:
        raise CampaignInputError(f"campaign {campaign!r} has no screening hits")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return len(frames)
