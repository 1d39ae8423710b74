"""Fine-tuning app: ``python -m models.finetune --config ft.json --result result.json``.

Loads a pre-trained checkpoint (sha256-verified), adds an energy head for a new dataset or property (or reuses
the head when the model already has it), keeps the other heads fixed, optionally freezes the shared encoder, trains on a small dataset
(~100 structures is the intended size) with early stopping on its validation split, and reports the test
metrics of the best epoch. ``from_scratch: true`` trains the same architecture from a fresh initialisation
with only the new head: the baseline that tells whether pre-training helped.

Config keys (JSON): ``checkpoint`` (required unless ``from_scratch`` with ``model``), ``data_root``,
``dataset``, ``head`` (default: the store's head id), ``init_from_head`` (copy an existing head's weights),
``freeze_encoder`` (default false), ``from_scratch`` (default false), ``model`` (scratch architecture when no
checkpoint), ``epochs`` (50), ``batch_size`` (8), ``optimizer`` / ``scheduler`` (as in :mod:`models.train`),
``precision`` (fp32), ``force_weight`` (10), ``energy_loss`` (mse), ``patience`` (10), ``grad_clip`` (10),
``output_dir``, ``seed`` (0).

Downstream data (``prepare``): the app can also build the small dataset itself, deterministic by seed, as an
ADIOS2 store ``<data_root>/<dataset>/{train,val,test}`` (:func:`build_downstream`): ``xtb-molecules`` (rattled
G2 molecules at indices disjoint from the demo pre-training set, labelled by GFN2-xTB through ``tblite``: total
energy and forces, HOMO-LUMO gap in eV, or dipole magnitude in Debye), ``emt-alloys`` (rattled, strained bcc and
hcp alloys of the given elements, absent from the fcc-only demo pre-training, labelled by ASE's EMT: energy and
forces), or ``files`` (ASE-readable files; the target read from ``atoms.info[target]`` or the calculator's
energy). The target is stored in the store's energy field (no forces for gap/dipole). With ``prepare_only``
the app builds the store and returns its summary without training; a store whose ``summary.json`` has the same
content hash is not rebuilt.

The result holds ``test_metrics`` (per head: energy MAE per atom, force MAE, loss), ``test_loss``,
``objective`` (= the best validation loss), ``best_epoch``, ``epochs_run``, ``trainable_parameters``,
``test_target_mae`` (mean absolute error of the target per structure on the test split, in the target's unit),
``history`` (per-epoch rows ``{epoch, split, head, name, value}``), and the fine-tuned checkpoint (``best.pt``, with its sha256), which :class:`models.inference.Predictor` reads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import checkpoint
from models.appio import BadInput, main_for, write_json_atomic
from models.contracts.finetune import (
    TARGET_UNITS,
    DownstreamData,
    DownstreamSummary,
    FinetuneConfig,
    FinetuneResult,
    PrepareResult,
    parse_config,
)
from models.distributed import GradSync, init, shutdown
from models.inference import load_model
from models.launch import detect
from models.nn.precision import param_dtype
from models.training.data import dataset_head, eval_batches, open_stores
from models.training.early_stopping import EarlyStopping
from models.training.loop import Trainer
from models.training.metrics import MetricsWriter
from models.training.schedule import Schedule

HARTREE_EV = 27.211386245988
BOHR_ANGSTROM = 0.529177210903
E_BOHR_DEBYE = 2.541746473
#: Index offset of the downstream molecules: disjoint from the demo pre-training set's indices.
MOLECULE_OFFSET = 1_000_000


# ---------------------------------------------------------------------------------------- downstream data
def _xtb_label(atoms: Any, target: str) -> tuple[float, np.ndarray | None]:
    """GFN2-xTB (tblite) label of a molecule: (target value, forces in eV/Å or None)."""
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / BOHR_ANGSTROM)
    calc.set("verbosity", 0)
    res = calc.singlepoint()
    if target == "energy":
        forces = -np.asarray(res.get("gradient")) * HARTREE_EV / BOHR_ANGSTROM
        return float(res.get("energy")) * HARTREE_EV, forces
    if target == "gap":
        eps = np.asarray(res.get("orbital-energies"))
        occ = np.asarray(res.get("orbital-occupations"))
        homo = round(float(occ.sum()) / 2.0) - 1  # closed shell: doubly occupied up to HOMO
        return float(eps[homo + 1] - eps[homo]) * HARTREE_EV, None
    dipole = np.asarray(res.get("dipole"))  # e·Bohr
    return float(np.linalg.norm(dipole)) * E_BOHR_DEBYE, None


def emt_alloy(seed: int, index: int, elements: list[str]) -> Any:
    """Unlabelled structure ``index`` of the emt-alloys set: a random bcc (60 %) or hcp alloy cell of
    ``elements`` (lattice constant from the composition-weighted fcc volumes), strained and rattled."""
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    rng = np.random.default_rng([seed, index, 31])
    frac = rng.dirichlet(np.ones(len(elements)))
    vols = np.array([reference_states[atomic_numbers[e]]["a"] ** 3 / 4.0 for e in elements])
    vol = float(frac @ vols)  # Å^3 per atom
    if rng.random() < 0.6:
        atoms = bulk("Fe", "bcc", a=(2.0 * vol) ** (1.0 / 3.0), cubic=True).repeat((2, 2, 2))  # 16 atoms
    else:
        a = (vol * 4.0 / np.sqrt(3.0) / 1.633) ** (1.0 / 3.0)
        atoms = bulk("Mg", "hcp", a=a, c=1.633 * a).repeat((2, 2, 2))  # 16 atoms
    symbols = rng.choice(elements, size=len(atoms), p=frac)
    atoms.set_chemical_symbols([str(x) for x in symbols])
    strain = np.eye(3) + rng.normal(0.0, 0.02, (3, 3))
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    atoms.positions += rng.normal(0.0, rng.uniform(0.02, 0.1), atoms.positions.shape)
    return atoms


def _labelled(data: DownstreamData) -> list[tuple[Any, float, np.ndarray | None]]:
    """``(atoms, target, forces)`` of every structure of the downstream set."""
    out = []
    if data.kind == "xtb-molecules":
        from models.data.demo import molecule_structure

        for k in range(data.count):
            atoms = molecule_structure(data.seed, MOLECULE_OFFSET + k)
            out.append((atoms, *_xtb_label(atoms, data.target)))
    elif data.kind == "emt-alloys":
        from ase.calculators.emt import EMT

        if data.target != "energy":
            raise BadInput(f"field 'prepare.target': emt-alloys has only 'energy', not {data.target!r}")
        calc = EMT()
        for k in range(data.count):
            atoms = emt_alloy(data.seed, k, data.elements)
            atoms.calc = calc
            out.append((atoms, float(atoms.get_potential_energy()), atoms.get_forces().copy()))
    else:
        out = _read_labelled(data, data.files, data.count)
    return out


def _read_labelled(data: DownstreamData, files: list[str], count: int) -> list[tuple[Any, float, np.ndarray | None]]:
    """``(atoms, target, forces)`` of the first ``count`` structures of labelled ASE-readable ``files``."""
    import ase.io

    out: list[tuple[Any, float, np.ndarray | None]] = []
    for f in files:
        try:
            frames = list(ase.io.iread(f, index=":"))
        except Exception as exc:
            raise BadInput(f"{f}: cannot read structures ({type(exc).__name__}: {exc})") from exc
        for k, atoms in enumerate(frames):
            if len(out) >= count:
                break
            if data.target in atoms.info:
                value, forces = float(atoms.info[data.target]), None
            elif data.target == "energy" and atoms.calc is not None:
                value = float(atoms.get_potential_energy())
                forces = atoms.get_forces().copy() if "forces" in atoms.calc.results else None
            else:
                raise BadInput(f"{f}: record {k}: no {data.target!r} in atoms.info")
            out.append((atoms, value, forces))
    return out


def downstream_hash(data: DownstreamData, name: str, head: int) -> str:
    """Content hash of a downstream store: its spec, the input files' bytes and the store schema."""
    from models.data.shards import SCHEMA_VERSION

    files = {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in [*data.files, *data.test_files]
             if Path(f).is_file()}
    payload = json.dumps({"data": data.model_dump(mode="json"), "name": name, "head": head, "files": files,
                          "reference_store": _reference_store(data), "schema": SCHEMA_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _reference_store(data: DownstreamData) -> dict[str, Any] | None:
    """What a dataset feeding an existing head takes from that head's store (``data.reference_from``): the
    element references (``{Z: eV}``) and the graph construction (``cutoff`` Å, ``max_neighbours``); None when
    the dataset fits its own references and uses its own graph settings."""
    if data.reference_from is None:
        return None
    from models.data.store import open_split

    ref = data.reference_from
    try:
        store = open_split(ref.root, ref.dataset, "train")
    except (FileNotFoundError, KeyError, OSError) as exc:
        raise BadInput(f"field 'prepare.reference_from': {ref.root}: dataset {ref.dataset!r} cannot be opened "
                       f"({exc})") from exc
    return {"refs": {int(z): float(e) for z, e in (store.reference_energies or {}).items()},
            "cutoff": float(store.attrs.get("cutoff", data.cutoff)),
            "max_neighbours": store.attrs.get("max_neighbours", data.max_neighbours)}


def build_downstream(data: DownstreamData, root: str | Path, name: str, head: int) -> dict[str, Any]:
    """Build (or find intact) the downstream store ``<root>/<name>/{train,val,test}``.

    Returns:
        Its summary: ``content_hash``, ``counts`` per split, ``elements``, ``target``, ``unit``, ``head_id``,
        ``reference_energies``, ``target_stats``, ``output_files`` (path, sha256, bytes), ``skipped``.
    """
    from models.data.graphs import radius_graph_pbc
    from models.data.reference import fit_reference_energies, reference_sum
    from models.data.shards import pack_graphs, write_split
    from models.data.split import assign_split, check_fractions, structure_id

    out_dir = Path(root) / name
    chash = downstream_hash(data, name, head)
    summary_path = out_dir / "summary.json"
    if summary_path.is_file():
        try:
            old = DownstreamSummary.model_validate_json(summary_path.read_text())
        except ValueError:  # unreadable, or written by a version with another summary: rebuilt
            old = None
        if old is not None and old.content_hash == chash and all(
                Path(f.path).is_file() and Path(f.path).stat().st_size == f.bytes for f in old.output_files):
            return {**old.model_dump(mode="json"), "skipped": True}
    try:
        fractions = check_fractions(data.split)
    except (ValueError, AttributeError) as exc:
        raise BadInput(f"field 'prepare.split': {exc}") from exc
    if data.test_files and fractions["test"] > 0:
        raise BadInput("field 'prepare.split': with test_files the test split is theirs; give train and val only")
    given = _reference_store(data)
    cutoff = given["cutoff"] if given else data.cutoff
    max_neighbours = given["max_neighbours"] if given else data.max_neighbours
    held_out = _read_labelled(data, data.test_files, 10**12) if data.test_files else []
    labelled = _labelled(data)
    n_own = len(labelled)
    records = []
    for k, (atoms, value, forces) in enumerate([*labelled, *held_out]):
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell[:], dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        pos = np.asarray(atoms.positions, dtype=np.float64)
        z = np.asarray(atoms.numbers, dtype=np.int64)
        ei, shift, _ = radius_graph_pbc(pos, cell, pbc, cutoff, max_neighbours)
        sid = structure_id(z, pos, cell, pbc)
        records.append({"z": z, "pos": pos, "forces": forces, "cell": cell, "pbc": pbc, "energy": value,
                        "stress": None, "sid": sid, "edge_index": ei, "shift": shift,
                        "split": "test" if k >= n_own else assign_split(sid, data.seed, fractions)})
    if not records:
        raise BadInput("field 'prepare': the downstream dataset is empty")
    own = [r for r in records if r["split"] != "test"] if held_out else records
    if held_out and own and not any(r["split"] == "val" for r in own) and len(own) > 1:
        min(own, key=lambda r: r["sid"])["split"] = "val"  # a few labels: the hash split may leave val empty
    refs = given["refs"] if given else None
    if refs is None:  # fitted on the data trained on (the held-out labels stay unseen)
        refs = fit_reference_energies([r["z"] for r in own], np.array([r["energy"] for r in own]))
    missing = sorted({int(x) for r in records for x in r["z"]} - set(refs))
    if missing:
        raise BadInput(f"field 'prepare.reference_from': no reference energy for elements {missing}")
    for r in records:
        r["eref"] = reference_sum(r["z"], refs)
    unit = TARGET_UNITS[data.target]
    meta = {"dataset": name, "head_id": head, "target": data.target, "target_unit": unit,
            "units": {"energy": unit, "forces": "eV/Å", "length": "Å"},
            "reference_energies": {str(z): e for z, e in sorted(refs.items())},
            "cutoff": cutoff, "max_neighbours": max_neighbours, "seed": data.seed,
            "level_of_theory": {"xtb-molecules": "GFN2-xTB (tblite)", "emt-alloys": "EMT (ASE)"}.get(data.kind, "")}
    counts = {}
    for split in ("train", "val", "test"):
        part = [r for r in records if r["split"] == split]
        write_split(out_dir / split, pack_graphs(part), {**meta, "split": split})
        counts[split] = len(part)
    needed = ("train", "val", "test") if n_own else ("test",)  # held-out files only: a test-only store
    if any(counts[split] == 0 for split in needed):
        raise BadInput(f"field 'prepare.count': {data.count} structures leave an empty split ({counts})")
    files = [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
             for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != "summary.json"
             and not any(part.startswith(".") for part in p.relative_to(out_dir).parts)]
    values = np.array([r["energy"] for r in records])
    summary = {
        "content_hash": chash, "dataset": name, "head_id": head, "kind": data.kind, "target": data.target,
        "unit": unit, "counts": counts, "elements": sorted({int(x) for r in records for x in r["z"]}),
        "reference_energies": meta["reference_energies"], "level_of_theory": meta["level_of_theory"],
        "target_stats": {"mean": float(values.mean()), "std": float(values.std()),
                         "min": float(values.min()), "max": float(values.max())},
        "with_forces": int(sum(r["forces"] is not None for r in records)),
        "store_path": str(Path(root)), "output_files": files, "skipped": False,
    }
    write_json_atomic(summary_path, summary)
    return summary


def _target_mae(model: Any, store: Any, batch_size: int, device: torch.device, precision: str) -> float | None:
    """Mean absolute error of the predicted total (energy field) per structure over ``store``."""
    from models.nn.precision import cast_batch, precision_context

    model.eval()
    err, n = 0.0, 0
    for start in range(0, len(store), batch_size):
        batch = cast_batch(store.get_batch(list(range(start, min(len(store), start + batch_size)))).to(device),
                           precision)
        with precision_context(precision, device):
            pred = model(batch, forces=False)["energy"]
        err += float((pred.double() - batch.energy.double()).abs().sum())
        n += int(batch.num_graphs)
    return err / n if n else None


def _base_stores(cfg: FinetuneConfig, config_path: Path | str, dtype: torch.dtype, split: str) -> dict[str, Any]:
    """``split`` of the base model's pre-training datasets, each with its own head (the fine-tuned head's own
    pre-training data too, when it fine-tunes an existing head), or ``{}``."""
    if not cfg.base_datasets or cfg.base_data_root is None or cfg.from_scratch:
        return {}
    try:
        stores = open_stores(cfg.base_data_root, cfg.base_datasets, split, dtype)
    except BadInput as exc:
        raise BadInput(f"{config_path}: field 'base_datasets': {exc}") from exc
    for name, store in stores.items():
        store.head_id = dataset_head(store, name, cfg.base_dataset_heads)
    return {n: s for n, s in stores.items() if len(s)}


def _prepare_model(cfg: FinetuneConfig, head: int, config_path: Path | str) -> tuple[Any, dict[str, Any]]:
    """The model to fine-tune and the head references inherited from the checkpoint."""
    ckpt: dict[str, Any] | None = None
    if cfg.checkpoint is not None:
        try:
            ckpt = checkpoint.load(cfg.checkpoint)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{config_path}: field 'checkpoint': {exc}") from exc
    from models.nn.model import build_model

    if cfg.from_scratch:
        base = dict(ckpt["model_config"]) if ckpt is not None else cfg.model.model_dump(mode="json") if cfg.model else {}
        base["heads"] = [head]
        torch.manual_seed(cfg.seed)
        return build_model(base), {}
    assert ckpt is not None
    model = load_model(ckpt)
    if head not in model.head_ids:
        if cfg.init_from_head is not None and cfg.init_from_head not in model.head_ids:
            raise BadInput(
                f"{config_path}: field 'init_from_head': head {cfg.init_from_head} not in the model"
            )
        torch.manual_seed(cfg.seed)
        model.add_head(head, cfg.init_from_head)
    return model, dict(ckpt.get("head_references") or {})


def finetune(cfg: FinetuneConfig, config_path: Path | str = "<config>") -> dict[str, Any]:
    """Fine-tune as configured; returns the result (:class:`models.contracts.finetune.FinetuneResult`, or
    :class:`~models.contracts.finetune.PrepareResult` with ``prepare_only``).

    Raises:
        BadInput: unusable config, checkpoint or data.
        RunFailed: non-finite loss or gradient (``reason="nan"``).
    """
    t0 = time.perf_counter()
    prepared: dict[str, Any] | None = None
    if cfg.prepare is not None:
        if cfg.head is None:
            raise BadInput(f"{config_path}: field 'head': required with prepare (the new head's id)")
        try:
            prepared = build_downstream(cfg.prepare, cfg.data_root, cfg.dataset, cfg.head)
        except BadInput as exc:
            raise BadInput(f"{config_path}: {exc}") from None
        if cfg.prepare_only:
            return PrepareResult.model_validate({"prepared": prepared, "wall_time_s": time.perf_counter() - t0}
                                                ).model_dump(mode="json")
    denv = detect()
    device = init(denv)
    try:
        result = _finetune(cfg, config_path, denv.rank, denv.world_size, device, t0)
        # validated against the contract the campaign reads it with (a drift fails here, named)
        return FinetuneResult.model_validate({**result, "prepared": prepared}).model_dump(mode="json")
    finally:
        shutdown()


def _finetune(
    cfg: FinetuneConfig, config_path: Path | str, rank: int, world: int, device: torch.device, t0: float
) -> dict[str, Any]:
    from models.data.loader import MultiDatasetLoader
    from models.nn.loss import multitask_loss

    dtype = param_dtype(cfg.precision)
    splits = {
        s: open_stores(cfg.data_root, [cfg.dataset], s, dtype)[cfg.dataset] for s in ("train", "val", "test")
    }
    head = cfg.head if cfg.head is not None else int(splits["train"].head_id)
    if head < 0:
        raise BadInput(f"{config_path}: field 'head': the store has no head id, give one")
    for store in splits.values():
        store.head_id = head  # batches are labelled with the head being fine-tuned
    model, refs = _prepare_model(cfg, head, config_path)
    model = model.to(device=device, dtype=dtype)
    if splits["train"].reference_energies:
        refs[str(head)] = {str(z): e for z, e in splits["train"].reference_energies.items()}
    if cfg.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    for key, module in model.heads.heads.items():  # the other heads see no data here: keep them as they are
        if int(key) != head:
            module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    base_val = _base_stores(cfg, config_path, dtype, cfg.base_split)
    train_stores, weights, epoch_size = [splits["train"]], None, None
    if cfg.replay:  # rehearsal: a share of every epoch from the pre-training data, each dataset by its size
        replay = [s for _, s in sorted(_base_stores(cfg, config_path, dtype, "train").items())]
        total = sum(len(s) for s in replay)
        if total:
            train_stores += replay
            weights = [1.0 - cfg.replay] + [cfg.replay * len(s) / total for s in replay]
            epoch_size = math.ceil(len(splits["train"]) / (1.0 - cfg.replay))

    loader = MultiDatasetLoader(train_stores, cfg.batch_size, rank=rank, world_size=world, seed=cfg.seed,
                                weights=weights, epoch_size=epoch_size)
    sync = GradSync(model)
    sync.broadcast_all(0)
    opt = torch.optim.AdamW(
        trainable,
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
    )
    schedule = Schedule(opt, cfg.scheduler.model_dump(), total_steps=len(loader) * cfg.epochs)
    trainer = Trainer(
        model,
        optimizer=opt,
        schedule=schedule,
        sync=sync,
        loss_fn=multitask_loss,
        device=device,
        precision=cfg.precision,
        force_weight=cfg.force_weight,
        energy_loss=cfg.energy_loss,
        grad_clip=cfg.grad_clip,
    )
    base_before = (trainer.evaluate(eval_batches(base_val, cfg.batch_size, rank=rank, world_size=world)).per_head
                   if base_val else {})
    stopper = EarlyStopping(cfg.patience)
    out = Path(cfg.output_dir)
    writer = MetricsWriter(out / "metrics.jsonl") if rank == 0 else None
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    last = -1
    for epoch in range(cfg.epochs):
        loader.set_epoch(epoch)
        tr = trainer.train_epoch(loader, len(loader), epoch=epoch)
        va = trainer.evaluate(eval_batches({"v": splits["val"]}, cfg.batch_size, rank=rank, world_size=world))
        schedule.after_epoch(va.loss)
        if writer is not None:
            writer.write(epoch, "train", tr.as_rows())
            writer.write(epoch, "val", va.as_rows())
        for split, res in (("train", tr), ("val", va)):
            history += [{"epoch": epoch, "split": split, "head": h, "name": k, "value": float(v)}
                        for h, named in res.as_rows().items() for k, v in named.items()]
        if stopper.update(epoch, va.loss):
            best_state = copy.deepcopy(model.state_dict())
        last = epoch
        if stopper.should_stop:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    te = trainer.evaluate(eval_batches({"t": splits["test"]}, cfg.batch_size, rank=rank, world_size=world))
    if writer is not None:
        writer.write(stopper.best_epoch, "test", te.as_rows())
    history += [{"epoch": stopper.best_epoch, "split": "test", "head": h, "name": k, "value": float(v)}
                for h, named in te.as_rows().items() for k, v in named.items()]
    target_mae = _target_mae(model, splits["test"], cfg.batch_size, device, cfg.precision)
    base_after = (trainer.evaluate(eval_batches(base_val, cfg.batch_size, rank=rank, world_size=world)).per_head
                  if base_val else {})
    base_heads = ({str(h): {"before": base_before[h], "after": base_after[h]} for h in base_before if h in base_after}
                  if base_val else None)
    digest = ""
    path = out / "checkpoints" / "best.pt"
    if rank == 0:
        digest = checkpoint.save(
            {
                "model_config": dict(model.config),
                "model_state": model.state_dict(),
                "head_references": refs,
                "epoch": stopper.best_epoch,
                "val_loss": stopper.best_loss,
                "finetuned_from": cfg.checkpoint,
                "test_metrics": {str(h): m for h, m in te.per_head.items()},
            },
            path,
        )
    return {
        "objective": stopper.best_loss,
        "best_val_loss": stopper.best_loss,
        "best_epoch": stopper.best_epoch,
        "epochs_run": last + 1,
        "test_loss": te.loss if math.isfinite(te.loss) else None,
        "test_metrics": {str(h): m for h, m in te.per_head.items()},
        "test_target_mae": target_mae,
        "test_graphs": len(splits["test"]),
        "train_graphs": len(splits["train"]),
        "history": history,
        "head": head,
        "base_heads": base_heads,
        "from_scratch": cfg.from_scratch,
        "freeze_encoder": cfg.freeze_encoder,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "replayed_graphs_per_epoch": (int(loader.counts[1:].sum()) * world) if weights is not None else 0,
        "checkpoint": {"path": str(path), "sha256": digest},
        "wall_time_s": time.perf_counter() - t0,
    }


def app(raw: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``main_for`` entry."""
    return finetune(parse_config(raw, config_path), config_path)


if __name__ == "__main__":
    main_for(app, "Fine-tune a pre-trained multi-head GNN on a small dataset (new head, frozen or not).")
