"""Screening app: ``python -m models.screen --config screen.json --result result.json`` (one shard).

Evaluates one shard of a structure source with a trained model or an ensemble and streams the results to an
ADIOS2 output shard (:mod:`models.screen_output`); returns the shard's local top-k by value, ranked by the
configured criterion (:mod:`models.acquisition`: energy per atom for discovery, ensemble disagreement, a lower
confidence bound or a seeded random draw for choosing what to label).

Config (JSON)::

    {
      "models": [{"id": 7, "checkpoint": "runs/x/best.pt", "sha256": "…"}],   # one model, or an ensemble
      "source": {"kind": "generator", "seed": 0, "start": 0, "count": 2500,
                 "elements": ["Cu", "Ag", "Au"], "min_atoms": 2, "max_atoms": 64},
      #   or {"kind": "stores", "stores": [{"root": "graphs", "dataset": "demo-emt", "split": "test"}],
      #       "start": 0, "count": 100}
      #   or {"kind": "files", "files": ["a.extxyz"], "start": 0, "count": 100}
      "head": 100,                  # criterion head (default: the first model's first head)
      "heads": null,                # heads to evaluate (default: every head all members share)
      "precision": "fp32", "device": "auto", "forces": true, "write_forces": false,
      "max_atoms_per_batch": null,  # null: sized to the device's free memory
      "max_neighbours": null,       # null: the cap the models were trained with (none recorded: no cap)
      "top_k": 20, "max_uncertainty": null,
      "criterion": "energy",        # or uncertainty | lcb | random (models.acquisition): what top_k ranks by
      "kappa": 1.0, "criterion_seed": 0,
      "force_spread": "max",        # a structure's force disagreement: its worst atom's, the mean or the sum
      "exclude": [],                # source indices never returned in top (already labelled ones)
      "output": "screen-000.bp", "shard": 0, "threads": null
    }

The structures of a shard depend only on the source fields (the generator's candidate ``k`` on ``(seed, k)``),
and inference runs in a fixed order, so a failed shard re-runs identically. The criterion is the lowest energy
per atom of the criterion head; with an ensemble the energies are the members' mean and the uncertainty is the
members' standard deviation of that energy per atom (``max_uncertainty`` drops candidates above it; it needs
an ensemble). Ties are broken by the structure's index.

The result holds ``structures``, ``atoms``, ``seconds`` (whole shard), ``model_seconds`` (inference only),
``structures_per_s``, ``model_structures_per_s``, ``batches``, ``max_atoms_per_batch``, ``heads``, ``head``,
``top`` (the local top-k: ``structure_id``, ``index``, ``formula``, ``natoms``, ``score``, ``energy_per_atom``,
``uncertainty``, ``energies`` per head, ``numbers``, ``positions``, ``cell``, ``pbc``, ``forces`` when computed)
and ``output`` (the shard's path and its files with sha256).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import acquisition, checkpoint, keys
from models.appio import BadInput, main_for
from models.candidates import CandidateSpec, candidates
from models.contracts.screen import (
    FilesSource,
    GeneratorSource,
    ScreenConfig,
    ScreenResult,
    StoresSource,
    parse_config,
)
from models.data.graphs import radius_graph_pbc
from models.devices import rank_device
from models.inference import EnsemblePredictor, Predictor, load_model, memory_atom_budget
from models.screen_output import ScreenWriter


# ------------------------------------------------------------------------------------------------ blocks
@dataclass
class Block:
    """A batch of structures as numpy arrays (float64), graphs built.

    Attributes:
        z: [N] atomic numbers.  pos: [N, 3] Å.  cell: [G, 3, 3] Å (zeros when not periodic).  pbc: [G, 3].
        natoms: [G].  edge_index: [2, E] (batch-global).  shift: [E, 3] integer cell shifts.
        index: [G] position in the source.  sid: [G] stable id.  ids: structure id strings.
    """

    z: np.ndarray
    pos: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    natoms: np.ndarray
    edge_index: np.ndarray
    shift: np.ndarray
    index: np.ndarray
    sid: np.ndarray
    ids: list[str]

    def to_batch(self) -> Any:
        """A PyG ``Batch`` (float64) with the keys the predictor reads."""
        from models.data.store import make_batch

        g = self.natoms.size
        t = {
            keys.Z: torch.from_numpy(self.z),
            keys.POS: torch.from_numpy(self.pos),
            keys.CELL: torch.from_numpy(self.cell),
            keys.PBC: torch.from_numpy(self.pbc),
            keys.EDGE_INDEX: torch.from_numpy(self.edge_index),
            keys.SHIFT: torch.from_numpy(self.shift.astype(np.float64)),
            keys.NATOMS: torch.from_numpy(self.natoms),
            keys.BATCH: torch.from_numpy(np.repeat(np.arange(g, dtype=np.int64), self.natoms)),
            keys.EREF: torch.zeros(g, dtype=torch.float64),
            keys.HEAD: torch.zeros(g, dtype=torch.int64),
        }
        return make_batch(t)


def block_from_atoms(items: list[tuple[Any, int, str]], cutoff: float, max_neighbours: int | None) -> Block:
    """Graphs of ``(atoms, index, structure_id)`` items."""
    zs, poss, cells, pbcs, eis, shifts = [], [], [], [], [], []
    offset = 0
    for atoms, _, _ in items:
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell[:], dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        pos = np.asarray(atoms.positions, dtype=np.float64)
        ei, sh, _ = radius_graph_pbc(pos, cell, pbc, cutoff, max_neighbours)
        zs.append(np.asarray(atoms.numbers, dtype=np.int64))
        poss.append(pos)
        cells.append(cell)
        pbcs.append(pbc)
        eis.append(ei + offset)
        shifts.append(sh)
        offset += len(atoms)
    natoms = np.array([len(a) for a, _, _ in items], dtype=np.int64)
    index = np.array([i for _, i, _ in items], dtype=np.int64)
    return Block(
        z=np.concatenate(zs), pos=np.concatenate(poss), cell=np.stack(cells), pbc=np.stack(pbcs),
        natoms=natoms, edge_index=np.concatenate(eis, axis=1).astype(np.int64),
        shift=np.concatenate(shifts).astype(np.int32), index=index, sid=index.copy(),
        ids=[s for _, _, s in items],
    )


def _atoms_items(cfg: ScreenConfig) -> Iterator[tuple[Any, int, str]]:
    """``(atoms, index, structure_id)`` of a generator or files source, in order."""
    src = cfg.source
    if isinstance(src, GeneratorSource):
        try:
            spec = CandidateSpec(elements=tuple(src.elements), min_atoms=src.min_atoms, max_atoms=src.max_atoms,
                                 max_species=src.max_species, periodic=src.periodic)
        except ValueError as exc:
            raise BadInput(f"field 'source': {exc}") from exc
        for k, atoms in enumerate(candidates(src.seed, src.start, src.count, spec)):
            yield atoms, src.start + k, str(atoms.info["structure_id"])
        return
    assert isinstance(src, FilesSource)
    import ase.io

    stop = None if src.count is None else src.start + src.count
    k = 0
    for f in src.files:
        path = Path(f)
        if not path.is_file():
            raise BadInput(f"field 'source.files': {path} does not exist")
        try:
            frames = ase.io.iread(str(path), index=":", format=src.format)
            for frame, atoms in enumerate(frames):
                if stop is not None and k >= stop:
                    return
                if k >= src.start:
                    yield atoms, k, f"{path.name}:{frame}"
                k += 1
        except BadInput:
            raise
        except Exception as exc:
            raise BadInput(f"{path}: cannot read structures ({type(exc).__name__}: {exc})") from exc


def _atom_blocks(cfg: ScreenConfig, cutoff: float, budget: int, max_neighbours: int | None) -> Iterator[Block]:
    pending: list[tuple[Any, int, str]] = []
    atoms_in = 0
    for item in _atoms_items(cfg):
        n = len(item[0])
        if pending and atoms_in + n > budget:
            yield block_from_atoms(pending, cutoff, max_neighbours)
            pending, atoms_in = [], 0
        pending.append(item)
        atoms_in += n
    if pending:
        yield block_from_atoms(pending, cutoff, max_neighbours)


def training_cap(graphs: list[dict[str, Any]]) -> int | None:
    """The neighbour cap the models were trained with (their checkpoints' ``graph``), when they agree; else (or
    when none recorded one) no cap."""
    caps = {g.get("max_neighbours") for g in graphs}
    return caps.pop() if len(caps) == 1 else None


def _store_blocks(cfg: ScreenConfig, budget: int) -> Iterator[Block]:
    from models.data.store import open_split
    from models.inference import atom_budget_chunks

    src = cfg.source
    assert isinstance(src, StoresSource)
    stop = None if src.count is None else src.start + src.count
    base = 0
    for ref in src.stores:
        try:
            store = open_split(ref.root, ref.dataset, ref.split, dtype=torch.float64)
        except (OSError, ValueError) as exc:
            raise BadInput(f"field 'source.stores': {ref.root}/{ref.dataset}/{ref.split}: {exc}") from exc
        lo = max(src.start - base, 0)
        hi = len(store) if stop is None else min(len(store), stop - base)
        if hi > lo:
            for a, b in atom_budget_chunks(store.natoms[lo:hi], budget):
                g = store.gather(np.arange(lo + a, lo + b))
                sids = g[keys.SID].astype(np.int64)
                yield Block(z=g[keys.Z], pos=g[keys.POS], cell=g[keys.CELL].reshape(-1, 3, 3),
                            pbc=g[keys.PBC], natoms=g[keys.NATOMS], edge_index=g[keys.EDGE_INDEX],
                            shift=g[keys.SHIFT], index=np.arange(base + lo + a, base + lo + b, dtype=np.int64),
                            sid=sids, ids=[f"{ref.dataset}/{ref.split}/{int(s)}" for s in sids])
        base += len(store)
        if stop is not None and base >= stop:
            return


# -------------------------------------------------------------------------------------------------- run
def _load_members(cfg: ScreenConfig, device: torch.device) -> tuple[list[Predictor], list[dict[str, Any]]]:
    """The members' predictors, and the graph settings each was trained with (``{}`` when not recorded)."""
    members, graphs = [], []
    for k, ref in enumerate(cfg.models):
        try:
            ckpt = checkpoint.load(ref.checkpoint, expected_sha256=ref.sha256)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"field 'models[{k}].checkpoint': {exc}") from exc
        refs = ckpt.get("head_references")
        refs = {int(h): {int(z): float(e) for z, e in r.items()} for h, r in refs.items()} if refs else None
        members.append(Predictor(load_model(ckpt), device=device, precision=cfg.precision,
                                 head_references=refs, force_method=cfg.force_method))
        graphs.append(dict(ckpt.get("graph") or {}))
    return members, graphs


def _files_of(path: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(path.iterdir()):
        if p.is_file():
            h = hashlib.sha256(p.read_bytes()).hexdigest()
            out.append({"path": str(p), "sha256": h, "bytes": p.stat().st_size})
    return out


def _hit(block: Block, g: int, row: dict[str, Any], heads: list[int], forces: np.ndarray | None) -> dict[str, Any]:
    from ase import Atoms

    a0 = int(block.natoms[:g].sum())
    a1 = a0 + int(block.natoms[g])
    numbers = block.z[a0:a1]
    hit = {
        **row,
        "formula": Atoms(numbers=numbers).get_chemical_formula(mode="hill"),
        "natoms": int(block.natoms[g]),
        "numbers": numbers.tolist(),
        "positions": block.pos[a0:a1].tolist(),
        "cell": block.cell[g].tolist(),
        "pbc": [bool(x) for x in block.pbc[g]],
    }
    if forces is not None:
        hit["forces"] = forces[a0:a1].tolist()
    return hit


def screen(cfg: ScreenConfig) -> dict[str, Any]:
    """Screen one shard as configured; returns the result dict (:class:`models.contracts.screen.ScreenResult`)."""
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = torch.device(cfg.device) if ":" in cfg.device else rank_device(cfg.device)  # "cuda:1" as given
    except ValueError as exc:
        raise BadInput(f"screen config: field 'device': {exc}") from exc
    members, graphs = _load_members(cfg, device)
    ens = EnsemblePredictor(members)
    # graphs built as the models' training graphs were, unless the config says otherwise
    cap = cfg.max_neighbours if cfg.max_neighbours is not None else training_cap(graphs)
    heads = ens.head_ids if cfg.heads is None else [int(h) for h in cfg.heads]
    missing = sorted(set(heads) - set(ens.head_ids))
    if missing or not heads:
        raise BadInput(f"field 'heads': {missing or 'none'} not in every model (common heads: {ens.head_ids})")
    head = int(cfg.head) if cfg.head is not None else members[0].head_ids[0]
    if head not in heads:
        raise BadInput(f"field 'head': head {head} is not among the evaluated heads {heads}")
    col = heads.index(head)
    budget = cfg.max_atoms_per_batch or memory_atom_budget(
        members[0].model.config, cfg.precision, device, max_neighbours=cap or 32)
    blocks = (_store_blocks(cfg, budget) if isinstance(cfg.source, StoresSource)
              else _atom_blocks(cfg, ens.cutoff, budget, cap))
    meta = {"heads": heads, "head": head, "criterion": cfg.criterion, "shard": cfg.shard,
            "models": [m.id for m in cfg.models], "source": cfg.source.model_dump(mode="json"),
            "precision": cfg.precision}
    top: list[dict[str, Any]] = []
    n_struct = n_atoms = n_batches = passed = excluded = 0
    exclude = np.asarray(sorted(set(cfg.exclude)), dtype=np.int64)
    model_s = 0.0
    pending: list[dict[str, np.ndarray]] = []
    pending_g = 0
    with ScreenWriter(cfg.output, meta, with_forces=cfg.write_forces) as writer:

        def flush() -> None:
            nonlocal pending, pending_g
            if pending:
                writer.write({k: np.concatenate([p[k] for p in pending]) for k in pending[0]})
            pending, pending_g = [], 0

        for block in blocks:
            batch = block.to_batch()
            t1 = time.perf_counter()
            pred = ens.predict(batch, heads=heads, forces=cfg.forces, force_heads=[head])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            model_s += time.perf_counter() - t1
            energy = pred["energy"].cpu().numpy()  # [G, H]
            std = pred["energy_std"].cpu().numpy()
            natoms = block.natoms.astype(np.float64)
            e_atom = energy[:, col] / natoms
            unc = std[:, col] / natoms if len(members) > 1 else np.full(e_atom.shape, np.nan)
            forces = pred["forces"][:, 0].cpu().numpy() if cfg.forces else None
            f_unc = None
            if cfg.forces and len(members) > 1:
                f_unc = acquisition.structure_force_spread(pred["force_std"][:, 0].cpu().numpy(), block.natoms,
                                                           cfg.force_spread)  # [G] eV/Å
            try:
                score = acquisition.scores(cfg.criterion, index=block.index, energy_per_atom=e_atom,
                                           energy_std_per_atom=unc, force_std_max=f_unc, kappa=cfg.kappa,
                                           seed=cfg.criterion_seed)
            except ValueError as exc:
                raise BadInput(f"field 'criterion': {exc}") from exc
            out = {"index": block.index, "sid": block.sid, "natoms": block.natoms, "energy": energy,
                   "energy_std": std, "score": score, "uncertainty": unc}
            if cfg.write_forces:
                assert forces is not None
                out["z"], out["forces"] = block.z, forces
            pending.append(out)
            pending_g += block.natoms.size
            if pending_g >= cfg.flush_every:
                flush()
            ok = np.isfinite(score) & np.isfinite(e_atom)
            if cfg.max_uncertainty is not None:
                ok &= unc <= cfg.max_uncertainty
            if exclude.size:
                dropped = np.isin(block.index, exclude)
                excluded += int(dropped.sum())
                ok &= ~dropped
            passed += int(ok.sum())
            if cfg.top_k:
                cand = np.flatnonzero(ok)
                best = cand[np.lexsort((block.index[cand], score[cand]))][: cfg.top_k]
                for g in best.tolist():
                    row = {"structure_id": block.ids[g], "index": int(block.index[g]), "sid": int(block.sid[g]),
                           "score": float(score[g]), "energy_per_atom": float(e_atom[g]),
                           "uncertainty": None if np.isnan(unc[g]) else float(unc[g]),
                           "force_uncertainty": None if f_unc is None else float(f_unc[g]), "head": head,
                           "energies": {str(h): float(energy[g, c]) for c, h in enumerate(heads)}}
                    top.append(_hit(block, g, row, heads, forces))
                top.sort(key=lambda h: (h["score"], h["index"]))
                del top[cfg.top_k :]
            n_struct += block.natoms.size
            n_atoms += int(block.natoms.sum())
            n_batches += 1
        flush()
    seconds = time.perf_counter() - t0
    return ScreenResult.model_validate({
        "shard": cfg.shard,
        "structures": n_struct,
        "atoms": n_atoms,
        "passed": passed,
        "batches": n_batches,
        "max_atoms_per_batch": budget,
        "seconds": seconds,
        "model_seconds": model_s,
        "structures_per_s": n_struct / seconds if seconds > 0 else None,
        "model_structures_per_s": n_struct / model_s if model_s > 0 else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": cfg.precision,
        "heads": heads,
        "head": head,
        "criterion": cfg.criterion,
        "excluded": excluded,
        "models": [m.id for m in cfg.models],
        "top": top,
        "output": {"path": str(Path(cfg.output)), "files": _files_of(Path(cfg.output))},
    }).model_dump(mode="json")


def app(raw: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``main_for`` entry: relative paths resolve against the config's directory."""
    cfg = parse_config(raw, config_path)
    base = config_path.parent
    if not Path(cfg.output).is_absolute():
        cfg.output = str(base / cfg.output)
    try:
        return screen(cfg)
    except BadInput as exc:
        raise BadInput(f"{config_path}: {exc}") from None


if __name__ == "__main__":
    main_for(app, "Screen one shard of candidate structures with a trained model or an ensemble.")
