"""Reading a campaign from Python (a notebook, a script): tables as pandas DataFrames, models and hits as typed
records. :mod:`campaign.api` exposes these; see ``docs/python-api.md`` for a worked example.

Everything here only reads, through :mod:`db.readonly` (``campaign sql``'s read-only path), so it is safe on a
database a campaign is writing, and on a shared PostgreSQL database through a reader role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign.errors import CampaignInputError
from campaign.hits import is_selection
from db.readonly import as_json, readonly_snapshot


@dataclass(frozen=True)
class ModelInfo:
    """One model of a campaign.

    Attributes:
        id: ``models.id`` (what ``campaign lineage`` and the recipes' ``model:`` take).
        campaign: The campaign's name.
        name: e.g. ``painn-trial1``.
        role: ``promoted``, ``trained``, ``finetuned`` or ``scratch``.
        family: Message-passing family (``painn``, ``mace``, ...).
        objective: Best-epoch validation loss (the HPO objective; lower is better), when recorded.
        trial: ``"<hpo> #<number>"`` of the trial it came from, if any.
        parent: The model it was trained or fine-tuned from, if any.
        checkpoint: Its checkpoint file, if recorded.
        hyperparameters: The family's hyperparameters.
        metrics: Everything recorded about it (objective, rank, reasons, test metrics, ...).
    """

    id: int
    campaign: str
    name: str
    role: str
    family: str
    objective: float | None
    trial: str | None
    parent: int | None
    checkpoint: Path | None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One screening hit, best first by ``rank``.

    Attributes:
        id: ``screening_hits.id``.
        campaign: The campaign's name.
        rank: 1 for the best.
        structure_id: The candidate's id in its source.
        formula: Hill formula.
        natoms: Number of atoms.
        score: What the ranking minimised (the criterion head's energy per atom, eV/atom, by default).
        energy_per_atom: Predicted energy of the criterion head (eV/atom).
        uncertainty: Ensemble spread of that energy (eV/atom), when screened with an ensemble.
        head: The criterion head (dataset name).
        model_id: The model (or first model of the ensemble) that predicted it.
        task_id: The screening task that found it.
        data: The recorded structure and per-head energies.
    """

    id: int
    campaign: str
    rank: int
    structure_id: str
    formula: str
    natoms: int
    score: float
    energy_per_atom: float | None
    uncertainty: float | None
    head: str | None
    model_id: int | None
    task_id: str
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    def atoms(self) -> Any:
        """The structure as ``ase.Atoms`` (with the criterion head's energy and forces as its calculator's results
        when the screening computed them)."""
        from campaign.hits import hit_atoms

        return hit_atoms(self)


def models(campaign: str | None = None, *, role: str | None = None, db: str | None = None) -> list[ModelInfo]:
    """Every model (of ``campaign``, or of every campaign; of that ``role`` only, when given), oldest first."""
    with readonly_snapshot(db) as snap:
        _require_campaign(snap, campaign)
        rows = snap.rows(
            "SELECT m.id, c.name, m.name, m.role, m.family, m.metrics, m.parent_id, tr.hpo, tr.number, a.path, "
            "m.hyperparameters FROM models m JOIN campaigns c ON c.id = m.campaign_id "
            "LEFT JOIN artifacts a ON a.id = m.checkpoint_id LEFT JOIN trials tr ON tr.id = m.trial_id "
            "WHERE (CAST(:campaign AS VARCHAR(200)) IS NULL OR c.name = :campaign) "
            "AND (CAST(:role AS VARCHAR(30)) IS NULL OR m.role = :role) "
            "ORDER BY c.name, m.id", {"campaign": campaign, "role": role})
    out = []
    for mid, cname, name, role, family, metrics, parent, hpo, number, path, hp in rows:
        met = as_json(metrics) or {}
        obj = met.get("objective")
        out.append(ModelInfo(int(mid), cname, name, role, family, None if obj is None else float(obj),
                             None if hpo is None else f"{hpo} #{number}", None if parent is None else int(parent),
                             None if path is None else Path(path), as_json(hp) or {}, met))
    return out


def hits(campaign: str, *, top: int | None = None, db: str | None = None) -> list[Hit]:
    """The screening hits of ``campaign``, best first (at most ``top``; an active-learning loop's selections left
    out)."""
    with readonly_snapshot(db) as snap:
        _require_campaign(snap, campaign)
        rows = snap.rows(
            "SELECT h.id, h.rank, h.structure_id, h.formula, h.natoms, h.score, h.energy_per_atom, h.uncertainty, "
            "h.head, h.model_id, h.task_id, h.data FROM screening_hits h JOIN tasks t ON t.id = h.task_id "
            "JOIN campaigns c ON c.id = t.campaign_id WHERE c.name = :campaign ORDER BY h.rank, h.id",
            {"campaign": campaign})
    found = [Hit(int(i), campaign, int(rank), sid, formula, int(n), float(score),
                 None if e is None else float(e), None if u is None else float(u), head,
                 None if mid is None else int(mid), tid, as_json(data) or {})
             for i, rank, sid, formula, n, score, e, u, head, mid, tid, data in rows]
    return [h for h in found if not is_selection(h.data)][:top]


def _require_campaign(snap: Any, campaign: str | None) -> None:
    if campaign is not None and not snap.rows("SELECT 1 FROM campaigns WHERE name = :n", {"n": campaign}):
        known = [r[0] for r in snap.rows("SELECT name FROM campaigns ORDER BY id DESC LIMIT 20")]
        raise CampaignInputError(f"no campaign named {campaign!r}; known: {', '.join(known) or 'none'}")
