"""Recipes: the YAML file that declares a campaign, validated by pydantic models.

Loading is cheap (no torch, parsl or sqlalchemy: an import-linter contract checks it) so that ``campaign
validate`` answers instantly on a login node. Every error names the file, the YAML path and the line.

A recipe may carry ``profiles``: named partial recipes deep-merged over the base before validation, so the
same recipe scales from the laptop defaults to Frontier (``campaign run recipe.yaml --profile frontier``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from campaign.recipe_yaml import RecipeYAMLError, load_bounded
from models.appio import BadInput
from models.contracts.finetune import GENERATED_KINDS
from models.contracts.hyperparams import FAMILIES, parse_hyperparameters, searchable

#: Training hyperparameters: optimizer (lr, weight_decay), schedule (warmup_steps) and loop settings.
TRAINING_KEYS: frozenset[str] = frozenset({"lr", "weight_decay", "warmup_steps", "batch_size", "force_weight",
                                           "grad_clip"})
PRECISIONS: tuple[str, ...] = ("fp64", "fp32", "bf16")


def _known_precision(v: str) -> str:
    if v not in PRECISIONS:
        raise ValueError(f"unknown precision {v!r}; use one of {', '.join(PRECISIONS)}")
    return v


#: A run's numeric precision (every stage that trains or evaluates takes one).
Precision = Annotated[str, AfterValidator(_known_precision)]


def _chemical_symbols(v: list[str]) -> list[str]:
    from ase.data import atomic_numbers

    bad = [e for e in v if e not in atomic_numbers or e == "X"]
    if bad:
        raise ValueError(f"not chemical symbols: {bad}")
    return v


#: Elements to draw candidate structures from (chemical symbols, at least one).
ChemicalSymbols = Annotated[list[str], AfterValidator(_chemical_symbols), Field(min_length=1)]


class RecipeError(ValueError):
    """A recipe is unreadable or invalid. ``errors`` holds one ``(location, line, message)`` per problem."""

    def __init__(self, path: str, errors: list[tuple[str, int | None, str]]) -> None:
        self.path = path
        self.errors = errors
        lines = [f"{path}:{line if line else '?'}: {loc}: {msg}" if loc else f"{path}:{line or '?'}: {msg}"
                 for loc, line, msg in errors]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------------- site
#: Tasks a campaign keeps running behind a Globus Compute endpoint when the recipe gives no ``site.workers``.
GLOBUS_DEFAULT_CONCURRENCY = 64


class SiteSpec(_Strict):
    """Where the campaign runs. The fields become keyword arguments of the site's Parsl config factory."""

    name: str = Field("local", description="Site name from `campaign sites list` (local, slurm, frontier, aurora, …).")
    account: str | None = Field(None, description="Allocation/project to charge (Frontier, Aurora, Perlmutter).")
    partition: str | None = Field(None, description="Slurm partition (or PBS queue for Aurora).")
    qos: str | None = Field(None, description="Slurm quality of service (Perlmutter: regular, debug, …).")
    walltime: str = Field("01:00:00", pattern=r"^\d{1,3}:\d{2}:\d{2}$", description="Batch job walltime, HH:MM:SS.")
    nodes_per_block: int = Field(1, ge=1, description="Nodes in each batch job Parsl submits.")
    init_blocks: int = Field(1, ge=0)
    min_blocks: int = Field(0, ge=0)
    max_blocks: int = Field(1, ge=1)
    worker_init: str = Field("", description="Shell lines run before workers start (module loads, venv activation).")
    scheduler_options: str = Field("", description="Extra #SBATCH / #PBS lines.")
    workers: int | None = Field(None, ge=1, description="Tasks run at once: this machine's worker count (default: "
                                "CPU count); on a batch site it overrides workers per node x nodes_per_block x "
                                "max_blocks.")
    endpoint_id: str | None = Field(None, description="Globus Compute endpoint UUID (site 'globus').")
    retries: int = Field(2, ge=0, description="Charged retries of a failed task (walltime/node loss are free).")
    queued_tasks: int = Field(
        32, ge=0, description="Tasks handed to the executor beyond the workers that can run them at once, so that "
        "a worker that finishes starts its next task without a round trip through the campaign driver. Lower it "
        "to let tasks planned later with a higher priority go first; raise it for floods of sub-second tasks.")
    parsl_log_level: Literal["debug", "info", "warning"] = Field(
        "info", description="Level of Parsl's own log (parsl.log under the run directory). Parsl's default, debug, "
        "writes about eight records per task, which the campaign database already holds; set it to debug to "
        "diagnose Parsl itself.")
    options: dict[str, Any] = Field(default_factory=dict, description="Site-specific extras passed through.")

    @field_validator("name")
    @classmethod
    def _known_site(cls, v: str) -> str:
        from sites.facts import site_names  # standard library only

        if v not in site_names():
            raise ValueError(f"unknown site {v!r}; known sites: {', '.join(site_names())}")
        return v

    @model_validator(mode="after")
    def _blocks(self) -> SiteSpec:
        if self.min_blocks > self.max_blocks:
            raise ValueError(f"min_blocks ({self.min_blocks}) exceeds max_blocks ({self.max_blocks})")
        if self.name == "globus" and not self.endpoint_id:
            raise ValueError("site 'globus' needs endpoint_id")
        return self

    def concurrency(self) -> int:
        """Tasks the site runs at once: ``workers`` when set; else, on a batch site, workers per node (one per
        accelerator, or per worker's share of the cores) x ``nodes_per_block`` x ``max_blocks``; on this machine
        its CPU count; behind a Globus Compute endpoint (whose configuration the campaign cannot see)
        :data:`GLOBUS_DEFAULT_CONCURRENCY`."""
        if self.workers:
            return self.workers
        from sites.facts import get_site  # standard library only

        facts = get_site(self.name)
        if facts.kind == "globus":
            return GLOBUS_DEFAULT_CONCURRENCY
        per_node = facts.workers_per_node if facts.gpus_per_node or facts.cores_per_node else os.cpu_count() or 1
        if facts.kind == "local":
            return per_node
        return per_node * self.nodes_per_block * self.max_blocks

    def shared_filesystem(self) -> bool:
        """Whether the workers see the campaign's workdir (see ``sites.facts.SiteFacts.shared_filesystem``): never
        through a Globus Compute endpoint."""
        from sites.facts import get_site  # standard library only

        return get_site(self.name).shared_filesystem and not self.endpoint_id

    @property
    def walltime_s(self) -> int:
        """``walltime`` (HH:MM:SS) in seconds."""
        h, m, sec = (int(x) for x in self.walltime.split(":"))
        return 3600 * h + 60 * m + sec

    def max_in_flight(self) -> int:
        """Tasks the steering loop keeps submitted at once: :meth:`concurrency` plus ``queued_tasks``."""
        return self.concurrency() + self.queued_tasks

    def dispatch_params(self) -> dict[str, Any]:
        """Parameters for ``campaign.dispatch.make_dispatcher``: the keys the recipe set, ``workers`` as
        ``max_workers``, ``retries``, and ``options`` merged in."""
        out = {k: v for k, v in self.model_dump(exclude_unset=True).items()
               if k not in ("name", "options", "queued_tasks")}
        if "workers" in out:
            out["max_workers"] = out.pop("workers")
        out.update(self.options)
        return out


# ---------------------------------------------------------------------------------------------- datasets
class DatasetSpec(_Strict):
    """One dataset of the campaign: a registry name and where its raw structures come from."""

    name: str = Field(description="Dataset name from the registry (models/datasets.yaml).")
    files: list[str] = Field(default_factory=list, description="Raw input files (extxyz, ASE db, HDF5, LMDB).")
    reader: str | None = Field(None, description="Reader override; default from the registry's source format.")
    reader_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, max_length=16,
        description="Options of the reader (e.g. energy: total for ocp-lmdb); the registry's own options apply "
        "only with its reader.")
    count: int | None = Field(None, ge=1, description="Demo datasets: structures to generate.")
    shards: int = Field(1, ge=1, le=10_000, description="Demo datasets: parallel generation tasks.")
    preprocess_shards: int = Field(
        1, ge=1, le=10_000,
        description="Parallel preprocessing tasks, each writing the graphs of a disjoint part (by structure id)"
        " to its own store; a merge task then fits the reference energies over all parts and writes the index"
        " that reads them as one store.",
    )  # fmt: skip
    weight: float = Field(1.0, gt=0, description="Loss weight w_d of this dataset's head.")
    max_structures: int | None = Field(None, ge=1, description="Keep at most this many structures.")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from models.registry import load_registry  # stdlib + yaml only

        reg = load_registry()
        if v not in reg.names():
            raise ValueError(f"unknown dataset {v!r}; registered: {', '.join(reg.names())}")
        return v

    @model_validator(mode="after")
    def _inputs_usable(self, info: ValidationInfo) -> DatasetSpec:
        """The files exist and look like what their reader reads (relative paths: to the working directory,
        where ``campaign run`` resolves them too). Skipped when the recipe is checked for another machine
        (``check_files=False``)."""
        from models.formats import READER_NAMES, file_problem
        from models.registry import load_registry

        check_files = (info.context or {}).get("check_files", True)

        entry = load_registry().get(self.name)
        reader = self.reader or entry.reader
        if self.reader is not None and self.reader not in READER_NAMES:
            raise ValueError(f"reader: {self.reader!r} is not a reader ({', '.join(READER_NAMES)})")
        if not self.files:
            if entry.generator is None:
                raise ValueError(f"dataset {self.name!r} has no generator: list its files")
            return self
        if reader is None:
            raise ValueError(f"files: no reader reads dataset {self.name!r} yet ({entry.notes or 'see the registry'});"
                             " name one with reader:")
        for k, name in enumerate(self.files if check_files else []):
            problem = file_problem(Path(name).expanduser(), reader)
            if problem is not None:
                raise ValueError(f"files[{k}]: {name}: {problem} (reader {reader!r})")
        return self


class PreprocessSpec(_Strict):
    """Graph construction and filtering, shared by all datasets."""

    cutoff: float = Field(5.0, gt=0, le=20, description="Neighbour cutoff radius, Å.")
    max_neighbours: int | None = Field(
        None, ge=1, le=1024, description="Cap on neighbours per atom: at least this many nearest are kept, and a shell "
        "of equidistant neighbours is never split (a perfect crystal keeps its symmetry). Default: no cap.")
    split: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="Train/val/test fractions.")
    max_force: float = Field(50.0, gt=0, description="Drop structures with any |F| above this, eV/Å.")
    min_distance: float = Field(0.5, ge=0, description="Drop structures with two atoms closer than this, Å.")
    seed: int = 0

    @field_validator("split")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-6 or v[0] <= 0:
            raise ValueError(f"split fractions must be non-negative, train > 0, and sum to 1 (got {list(v)})")
        return v


# -------------------------------------------------------------------------------------------------- HPO
class IntParam(_Strict):
    """An integer hyperparameter in [low, high]."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    def extremes(self) -> list[Any]:
        """The values at the ends of the range (checked against the model's schema)."""
        return [self.low, self.high]

    @model_validator(mode="after")
    def _order(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"empty or inverted range: low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-uniform range needs low > 0")
        return self


class FloatParam(_Strict):
    """A real hyperparameter, uniform or log-uniform in [low, high]."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    def extremes(self) -> list[Any]:
        """The values at the ends of the range (checked against the model's schema)."""
        return [self.low, self.high]

    @model_validator(mode="after")
    def _order(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"empty or inverted range: low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-uniform range needs low > 0")
        return self


class CategoricalParam(_Strict):
    """A choice among values."""

    type: Literal["categorical"]
    choices: list[int | float | str | bool] = Field(min_length=1)

    def extremes(self) -> list[Any]:
        """Every choice (checked against the model's schema)."""
        return list(self.choices)

    @field_validator("choices")
    @classmethod
    def _unique(cls, v: list[Any]) -> list[Any]:
        if len({json.dumps(x) for x in v}) != len(v):
            raise ValueError("choices must be distinct")
        return v


SearchParam = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]


class EarlyStopSpec(_Strict):
    """Early stopping of poor trials on the per-epoch validation loss."""

    rule: Literal["none", "median", "successive_halving"] = "median"
    min_epochs: int = Field(2, ge=1, description="Never stop a trial before this many epochs.")
    reduction_factor: int = Field(3, ge=2, description="Successive halving: keep 1/η at each rung.")
    min_peers: int = Field(2, ge=1, description="Median rule: other trials that must have reached the same epoch.")


class HPOSpec(_Strict):
    """One HPO campaign: a message-passing family searched with DeepHyper CBO."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    family: str
    datasets: list[str] | None = Field(None, description="Dataset names (default: every dataset of the recipe).")
    precision: Precision = "fp64"
    max_trials: int = Field(8, ge=1)
    trials_in_flight: int = Field(2, ge=1)
    nodes_per_trial: int = Field(1, ge=1)
    ranks_per_node: int = Field(1, ge=1)
    gpus_per_rank: int = Field(0, ge=0)
    head_groups: bool = Field(False, description="Multi-task parallelism: each trial's ranks grouped per head (the "
                              "encoder synchronised over all ranks, each head within its group); needs at least "
                              "one rank per dataset head.")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(16, ge=1)
    force_weight: float = Field(10.0, ge=0, description="Weight of the force loss in the objective.")
    search_space: dict[str, SearchParam] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict, description="Hyperparameters held constant.")
    early_stopping: EarlyStopSpec = Field(default_factory=EarlyStopSpec)
    warm_start_from: list[str] = Field(default_factory=list, description="'CAMPAIGN/HPO' whose trials seed this one.")
    seed: int = 0
    trial_timeout_s: int | None = Field(None, ge=1, description="Walltime of one trial attempt.")

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        key = v.lower()
        if key not in FAMILIES:
            raise ValueError(f"unknown family {v!r}; known families: {', '.join(FAMILIES)}")
        return key

    @model_validator(mode="after")
    def _overlap(self) -> HPOSpec:
        both = set(self.search_space) & set(self.fixed)
        if both:
            raise ValueError(f"{sorted(both)[0]!r} is both searched and fixed")
        model_keys = searchable(self.family)
        known = model_keys | TRAINING_KEYS
        unknown = sorted((set(self.search_space) | set(self.fixed)) - known)
        if unknown:
            raise ValueError(f"unknown hyperparameter {unknown[0]!r} for family {self.family!r}; "
                             f"known: {', '.join(sorted(known))}")
        # every value a trial can get must build the model: the fixed ones, and each end of each searched range
        fixed = {k: v for k, v in self.fixed.items() if k in model_keys}
        self._check_model({"family": self.family, **fixed}, "fixed")
        for name, param in self.search_space.items():
            if name in model_keys:
                for value in param.extremes():
                    self._check_model({"family": self.family, **fixed, name: value}, f"search_space.{name} = {value!r}")
        return self

    @staticmethod
    def _check_model(config: dict[str, Any], what: str) -> None:
        try:
            parse_hyperparameters(config, where=what)
        except BadInput as exc:
            raise ValueError(str(exc)) from None


class PromoteSpec(_Strict):
    """Which trials become models for long training."""

    top_overall: int = Field(2, ge=0, description="The best k trials across every HPO campaign.")
    best_per_family: bool = Field(True, description="Also the best trial of each family.")
    pareto: bool = Field(False, description="Also the accuracy/cost Pareto front.")
    pareto_cost: Literal["wall_time_s", "n_params"] = Field(
        "wall_time_s", description="Cost axis of the Pareto front: training wall time or parameter count.")
    ensemble_k: int = Field(3, ge=1, description="Size of the recorded ensemble: the k best promoted models.")

    @model_validator(mode="after")
    def _selects_something(self) -> PromoteSpec:
        if self.top_overall == 0 and not self.best_per_family and not self.pareto:
            raise ValueError("the rule selects nothing: set top_overall > 0, best_per_family or pareto")
        return self


class TrainSpec(_Strict):
    """Long training of promoted models."""

    models: Literal["promoted"] | list[int] = Field(
        "promoted", description="'promoted' (the promote stage's models) or model ids from the database.")
    from_campaign: str | None = Field(
        None, description="With models 'promoted': take the promoted models of this earlier campaign.")
    top: int | None = Field(None, ge=1, description="Train only the n best of those models (by objective).")
    epochs: int = Field(20, ge=1)
    nodes: int = Field(1, ge=1)
    ranks_per_node: int = Field(2, ge=1)
    gpus_per_rank: int = Field(0, ge=0)
    head_groups: bool = Field(False, description="Multi-task parallelism: ranks grouped per head (the encoder "
                              "synchronised over all ranks, each head within its group; a rank keeps optimizer "
                              "state for its own head only); needs at least one rank per dataset head.")
    precision: Precision = "fp32"
    from_checkpoint: bool = Field(True, description="Start from the promoted model's checkpoint (else scratch).")
    chunk_walltime_s: float | None = Field(
        None, gt=0, description="Seconds per chunk: each chunk stops at an epoch boundary before this, and the "
        "next chunk continues from its checkpoint (at least one epoch per chunk). Keep it under the site walltime.")

    @field_validator("models")
    @classmethod
    def _ids(cls, v: Literal["promoted"] | list[int]) -> Literal["promoted"] | list[int]:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one model id, or 'promoted'")
            if len(set(v)) != len(v):
                raise ValueError("model ids must be distinct")
        return v

    @model_validator(mode="after")
    def _source(self) -> TrainSpec:
        if self.from_campaign is not None and self.models != "promoted":
            raise ValueError("from_campaign goes with models: promoted (model ids need no campaign)")
        return self


ScalingMode = Literal["strong", "weak"]


class ScalingSpec(_Strict):
    """A strong- and weak-scaling study of the training app on one model, before its long training."""

    model: Literal["best"] | int = Field(
        "best", description="'best': the promoted model with the best objective (of this campaign, or of "
        "from_campaign); an integer: that models.id. Its training config gives the data and the architecture.")
    from_campaign: str | None = Field(None, description="With model 'best': take it from this earlier campaign.")
    ranks: list[int] = Field(default_factory=lambda: [1, 2, 4], description="Total ranks of each point.")
    ranks_per_node: int = Field(2, ge=1, description="Ranks per node: a point holds ceil(ranks / ranks_per_node) "
                                "nodes.")
    gpus_per_rank: int = Field(0, ge=0)
    modes: list[ScalingMode] = Field(
        default_factory=lambda: list(get_args(ScalingMode)),
        description="strong: the global batch (batch_size) is split over the ranks; weak: every rank takes "
        "batch_size graphs per step.")
    precision: list[Precision] = Field(default_factory=lambda: ["fp32"], description="One sweep per precision.")
    batch_size: int = Field(8, ge=1, description="Graphs per step: the global batch (strong), per rank (weak).")
    steps: int = Field(30, ge=2, le=1_000_000, description="Optimizer steps timed at each point.")

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, v: list[int]) -> list[int]:
        if not v or any(r < 1 for r in v):
            raise ValueError("give one or more rank counts >= 1")
        if len(set(v)) != len(v):
            raise ValueError("rank counts must be distinct")
        if max(v) > 1_000_000:
            raise ValueError("at most 1,000,000 ranks")
        return sorted(v)

    @field_validator("modes", "precision")
    @classmethod
    def _distinct(cls, v: list[Any]) -> list[Any]:
        if not v or len(set(v)) != len(v):
            raise ValueError("give one or more distinct values")
        return v

    @model_validator(mode="after")
    def _divisible(self) -> ScalingSpec:
        if self.from_campaign is not None and self.model != "best":
            raise ValueError("from_campaign goes with model: best (a model id needs no campaign)")
        if "strong" in self.modes:
            bad = [r for r in self.ranks if self.batch_size % r]
            if bad:
                raise ValueError(f"strong scaling splits batch_size {self.batch_size} over the ranks: it must be "
                                 f"divisible by every rank count (not by {bad[0]})")
        return self


class ScreenSpec(_Strict):
    """Screening of candidate structures with a trained model or the promoted ensemble."""

    model: Literal["best", "ensemble"] | int = Field(
        "best", description="'best': the best trained model (else the best promoted one); 'ensemble': the "
        "promoted ensemble; an integer: that models.id from the database.")
    from_campaign: str | None = Field(None, description="Take 'best'/'ensemble' from this earlier campaign.")
    ensemble: str | None = Field(None, description="Ensemble name (default: the campaign's newest ensemble).")
    source: Literal["generator", "datasets", "files"] = "generator"
    files: list[str] = Field(default_factory=list, description="source 'files': ASE-readable structure files.")
    datasets: list[str] = Field(default_factory=list,
                                description="source 'datasets': preprocessed datasets (default: all of them).")
    split: Literal["train", "val", "test"] = Field("test", description="source 'datasets': which split.")
    structures: int = Field(10_000, ge=1, description="Structures to screen in all (generator; cap otherwise).")
    shards: int = Field(4, ge=1, le=1_000_000, description="Independent screening tasks.")
    min_atoms: int = Field(2, ge=1)
    max_atoms: int = Field(64, ge=1, le=100_000)
    max_species: int = Field(4, ge=1, description="Generator: most distinct elements per candidate.")
    periodic: bool = Field(True, description="Generator: periodic cells (true) or clusters (false).")
    elements: ChemicalSymbols = Field(default_factory=lambda: ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"])
    head: str | int | None = Field(None, description="Criterion head: a dataset name or head id (default: the "
                                   "model's first head).")
    precision: Precision = "fp32"
    forces: bool = Field(True, description="Compute the criterion head's forces (one backward pass).")
    write_forces: bool = Field(False, description="Also stream the forces to the ADIOS2 output shards.")
    max_atoms_per_batch: int | None = Field(None, ge=1, description="Atom budget per batch (default: memory).")
    gpus_per_shard: int = Field(0, ge=0)
    top_k: int = Field(20, ge=1)
    criterion: Literal["energy_per_atom"] = "energy_per_atom"
    max_uncertainty: float | None = Field(None, gt=0, description="Drop candidates whose ensemble spread of "
                                          "the energy per atom exceeds this, eV/atom (needs model: ensemble).")
    seed: int = 0

    @field_validator("head")
    @classmethod
    def _head(cls, v: str | int | None) -> str | int | None:
        if isinstance(v, str):
            from models.registry import load_registry  # stdlib + yaml only

            if v not in load_registry().names():
                raise ValueError(f"unknown dataset {v!r} for the criterion head")
        elif isinstance(v, int) and v < 0:
            raise ValueError("a head id is >= 0")
        return v

    @model_validator(mode="after")
    def _atoms(self) -> ScreenSpec:
        if self.min_atoms > self.max_atoms:
            raise ValueError(f"min_atoms ({self.min_atoms}) exceeds max_atoms ({self.max_atoms})")
        if self.max_uncertainty is not None and self.model != "ensemble":
            raise ValueError("max_uncertainty needs model: ensemble (a single model has no spread)")
        if self.source == "files" and not self.files:
            raise ValueError("source 'files' needs files")
        if self.ensemble is not None and self.model != "ensemble":
            raise ValueError("ensemble is only used with model: ensemble")
        if self.from_campaign is not None and isinstance(self.model, int):
            raise ValueError("from_campaign picks 'best' or 'ensemble'; an explicit model id needs no campaign")
        return self


#: Downstream data the fine-tune app generates and labels itself.
FINETUNE_GENERATED: tuple[str, ...] = GENERATED_KINDS


class FinetuneTask(_Strict):
    """A downstream task: a small dataset fine-tuned with a new head and trained from scratch as baseline."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,100}$")
    dataset: str = Field("xtb-molecules", description="'xtb-molecules' (GFN2-xTB labels: energy, HOMO-LUMO gap, "
                         "dipole) or 'emt-alloys' (EMT energies of bcc/hcp alloys, absent from the demo "
                         "pre-training), generated and labelled by the fine-tune app; any other name needs files.")
    files: list[str] = Field(default_factory=list, description="ASE-readable files holding the labelled data "
                             "(the target in atoms.info[target], or the calculator's energy for 'energy').")
    target: Literal["energy", "gap", "dipole"] = "energy"
    count: int = Field(100, ge=10, description="Structures to generate (or at most to read from files).")
    elements: list[str] = Field(default_factory=lambda: ["Ni", "Al", "Cu"],
                                description="emt-alloys: the alloy's elements (EMT: Al Cu Ag Au Ni Pd Pt).")
    head: int | None = Field(None, ge=0, description="Head id of the new head (default 1000 + task position).")
    freeze_encoder: bool = False
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(10, ge=0)
    scratch: bool = Field(True, description="Also train the same architecture from scratch (the baseline).")
    seed: int = 0

    @model_validator(mode="after")
    def _data(self) -> FinetuneTask:
        if not self.files and self.dataset not in FINETUNE_GENERATED:
            raise ValueError(f"dataset {self.dataset!r} is not generated here ({', '.join(FINETUNE_GENERATED)}); "
                             "give files")
        if not self.files and self.target in ("gap", "dipole") and self.dataset != "xtb-molecules":
            raise ValueError(f"target {self.target!r} is a GFN2-xTB property: use dataset 'xtb-molecules'")
        if not self.files and self.dataset == "emt-alloys":
            bad = [e for e in self.elements if e not in ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")]
            if bad or not self.elements:
                raise ValueError(f"EMT has no parameters for {bad or 'no elements'} (use Al Cu Ag Au Ni Pd Pt)")
        return self


class FinetuneSpec(_Strict):
    """Fine-tuning of the best model on downstream tasks."""

    model: Literal["best"] | int = Field("best", description="'best': the best trained (else promoted) model; "
                                          "an integer: that models.id from the database.")
    from_campaign: str | None = Field(None, description="Take 'best' from this earlier campaign.")
    precision: Precision = "fp32"
    tasks: list[FinetuneTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> FinetuneSpec:
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate fine-tune task name {dup[0]!r}")
        heads = [t.head for t in self.tasks if t.head is not None]
        if len(set(heads)) != len(heads):
            raise ValueError("two fine-tune tasks use the same head id")
        if self.from_campaign is not None and isinstance(self.model, int):
            raise ValueError("from_campaign picks 'best'; an explicit model id needs no campaign")
        return self

    def head_of(self, position: int) -> int:
        """Head id of task ``position`` (its ``head`` or 1000 + position)."""
        task = self.tasks[position]
        return task.head if task.head is not None else 1000 + position


class EvaluateSpec(_Strict):
    """Evaluation of the campaign's models on each dataset's test split, per head (errors in meV/atom and meV/Å,
    parity data for the report)."""

    models: Literal["latest", "promoted", "trained"] | list[int] = Field(
        "latest", description="'latest': the trained models when a train stage made some, else the promoted ones; "
        "'promoted', 'trained', or model ids from the database.")
    split: Literal["test", "val"] = Field("test", description="The split to evaluate.")
    precision: Precision = Field("fp64", description="Precision of the evaluation (fp64, fp32, bf16).")
    batch_size: int = Field(32, ge=1, description="Graphs per batch.")
    max_parity_atoms: int = Field(20000, ge=0, description="Force components of at most this many atoms per "
                                  "dataset in the parity file (the metrics use every atom).")

    @field_validator("models")
    @classmethod
    def _ids(cls, v: Literal["latest", "promoted", "trained"] | list[int]) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one model id, or 'latest'")
        return v


class ActivePool(_Strict):
    """The candidates an active-learning loop chooses from: ``structures`` of the seeded generator (indices
    ``0 … structures-1``), and the held-out set labelled once to judge every round (the next ``heldout``
    indices: the same distribution, never selected)."""

    structures: int = Field(512, ge=2, le=100_000_000, description="Candidates screened every round.")
    heldout: int = Field(32, ge=2, le=100_000, description="Held-out structures, labelled once before round 1.")
    shards: int = Field(2, ge=1, le=100_000, description="Screening tasks per round.")
    min_atoms: int = Field(2, ge=1)
    max_atoms: int = Field(32, ge=1, le=100_000)
    max_species: int = Field(3, ge=1)
    periodic: bool = True
    elements: ChemicalSymbols = Field(default_factory=lambda: ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"])
    seed: int = 0

    @model_validator(mode="after")
    def _atoms(self) -> ActivePool:
        if self.min_atoms > self.max_atoms:
            raise ValueError(f"min_atoms ({self.min_atoms}) exceeds max_atoms ({self.max_atoms})")
        return self


class ActiveSelect(_Strict):
    """How a round picks what to label (:mod:`models.acquisition`)."""

    rule: Literal["uncertainty", "energy", "lcb", "random"] = Field(
        "uncertainty", description="uncertainty: the ensemble's largest force disagreement; energy: lowest energy "
        "per atom; lcb: energy - kappa * spread; random: the baseline.")
    batch: int = Field(16, ge=1, le=1_000_000, description="Structures labelled per round (the label budget is "
                       "batch x rounds).")
    kappa: float = Field(1.0, ge=0, description="lcb: weight of the spread.")
    force_spread: Literal["max", "mean", "sum"] = Field(
        "max", description="uncertainty: a structure's force disagreement is its worst atom's (max), the mean or "
        "the sum over its atoms.")
    diversity: bool = Field(False, description="Pick the batch from the best 4 x batch by the rule, greedily "
                            "spreading compositions (farthest point in element-fraction space).")


class ActiveFinetune(_Strict):
    """How each round's models are fine-tuned from the previous round's."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(10, ge=0)
    replay: float = Field(0.5, ge=0, lt=1, description="Share of every epoch drawn from the pre-training data's "
                          "train splits (keeps the base heads from degrading; 0: none).")
    freeze_encoder: bool = Field(False, description="Train the head only (the other way to protect the base).")


class ActiveStop(_Strict):
    """When the loop stops: after ``rounds``, or earlier once the held-out force error reaches a target or stops
    improving (figures: the ensemble members' mean held-out force MAE, meV/Å)."""

    rounds: int = Field(3, ge=1, le=1000)
    force_mae_mev_per_a: float | None = Field(None, gt=0, description="Stop once the held-out force MAE is at "
                                              "or below this, meV/Å.")
    patience: int | None = Field(None, ge=1, description="Stop after this many rounds without a new best "
                                 "held-out force MAE.")


class ActiveSpec(_Strict):
    """Closed-loop discovery: screen a pool with the ensemble, pick by an acquisition rule, label with the
    dataset's physics code, add the labels to a new dataset version, fine-tune every member, evaluate, repeat."""

    model: Literal["ensemble"] | list[int] = Field("ensemble", description="'ensemble': the promoted ensemble; "
                                                   "or model ids (two or more for the uncertainty rules).")
    from_campaign: str | None = Field(None, description="Take the ensemble from this earlier campaign.")
    ensemble: str | None = Field(None, description="Ensemble name (default: the newest).")
    dataset: str = Field("demo-emt", description="The pre-training dataset the labels extend: its head is "
                         "fine-tuned and its element references are kept.")
    method: Literal["emt", "gfn2-xtb", "gfn1-xtb", "dft"] = Field("emt", description="The labelling method.")
    pool: ActivePool = Field(default_factory=ActivePool)
    select: ActiveSelect = Field(default_factory=ActiveSelect)
    finetune: ActiveFinetune = Field(default_factory=ActiveFinetune)
    stop: ActiveStop = Field(default_factory=ActiveStop)
    precision: Precision = "fp32"
    max_force: float = Field(50.0, gt=0, description="A label with an atomic force above this (eV/Å) is recorded "
                             "as failed (unphysical) and not trained on.")
    top_k: int = Field(20, ge=0, description="Discovery: after the last round, screen the pool by energy per atom "
                       "with the final models and record this many hits (0: none).")

    @model_validator(mode="after")
    def _models(self) -> ActiveSpec:
        if isinstance(self.model, list) and len(self.model) < (2 if self.select.rule in ("uncertainty", "lcb")
                                                                else 1):
            raise ValueError(f"select.rule {self.select.rule!r} needs two or more models (an ensemble)")
        if self.from_campaign is not None and isinstance(self.model, list):
            raise ValueError("from_campaign picks the ensemble; explicit model ids need no campaign")
        if self.select.batch > self.pool.structures:
            raise ValueError(f"select.batch ({self.select.batch}) exceeds pool.structures ({self.pool.structures})")
        return self


class StagesSpec(_Strict):
    """The stages of a campaign, run in this order when present."""

    preprocess: PreprocessSpec | None = None
    hpo: list[HPOSpec] | None = None
    promote: PromoteSpec | None = None
    scaling: ScalingSpec | None = None
    train: TrainSpec | None = None
    evaluate: EvaluateSpec | None = None
    screen: ScreenSpec | None = None
    finetune: FinetuneSpec | None = None
    active: ActiveSpec | None = None

    @field_validator("hpo")
    @classmethod
    def _unique_names(cls, v: list[HPOSpec] | None) -> list[HPOSpec] | None:
        if v is not None:
            names = [h.name for h in v]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"duplicate HPO campaign name {sorted(dup)[0]!r}")
        return v


class Recipe(_Strict):
    """A campaign recipe."""

    campaign: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,200}$", description="Campaign name (unique in the database).")
    description: str = ""
    seed: int = 0
    workdir: str = Field("runs", description="Where task directories and outputs go (relative to the recipe's cwd).")
    database: str | None = Field(None, description="Database URL (overridden by --db and CAMPAIGN_DB).")
    site: SiteSpec = Field(default_factory=SiteSpec)
    datasets: list[DatasetSpec] = Field(default_factory=list)
    stages: StagesSpec = Field(default_factory=StagesSpec)
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Named partial recipes merged over this one by --profile."
    )
    hpo_defaults: dict[str, Any] = Field(default_factory=dict, description="Defaults applied to every HPO campaign.")

    @model_validator(mode="after")
    def _cross_refs(self) -> Recipe:
        names = [d.name for d in self.datasets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"dataset {sorted(dup)[0]!r} listed twice")
        for h in self.stages.hpo or []:
            for d in h.datasets or []:
                if d not in names:
                    raise ValueError(f"HPO campaign {h.name!r} uses dataset {d!r}, which the recipe does not list")
            if not (h.datasets or names):
                raise ValueError(f"HPO campaign {h.name!r} has no datasets")
            heads = len(h.datasets or names)
            if h.head_groups and h.nodes_per_trial * h.ranks_per_node < heads:
                raise ValueError(f"HPO campaign {h.name!r}: head_groups needs a rank per head: "
                                 f"{h.nodes_per_trial * h.ranks_per_node} ranks per trial for {heads} datasets")
            if h.early_stopping.rule != "none" and not self.site.shared_filesystem():
                raise ValueError(
                    f"HPO campaign {h.name!r}: early_stopping.rule {h.early_stopping.rule!r} watches each running "
                    f"trial's metrics and stop file in the campaign's workdir, which the workers of site "
                    f"{self.site.name!r} do not share (a Globus Compute endpoint); set early_stopping: {{rule: none}}")
        tr = self.stages.train
        if tr is not None and tr.head_groups and names and tr.nodes * tr.ranks_per_node < len(names):
            raise ValueError(f"stages.train: head_groups needs a rank per head: {tr.nodes * tr.ranks_per_node} "
                             f"ranks for {len(names)} datasets")
        return self

    def hash(self) -> str:
        """sha256 of the validated recipe in canonical JSON (stable across whitespace and key order)."""
        # where a campaign is stored (database URL, possibly with a password) is not part of what it is
        canon = json.dumps(self.model_dump(mode="json", exclude={"profiles", "database"}), sort_keys=True,
                           separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


def extension_of(old: Recipe, new: Recipe) -> list[str] | None:
    """What makes ``new`` an extension of ``old`` that the same campaign may run: HPO studies given more trials
    (``max_trials`` raised, in an entry or in ``hpo_defaults``) and nothing else changed. Returns the changes as
    readable lines, or ``None`` when ``new`` is not such an extension (another field differs, or a study would
    get fewer trials). The studies keep what they learned: resumed, each replays its own trials into the
    optimizer before asking the next ones.
    """
    def canonical(r: Recipe) -> dict[str, Any]:
        d = r.model_dump(mode="json", exclude={"profiles", "database"})
        (d.get("hpo_defaults") or {}).pop("max_trials", None)
        for h in (d.get("stages") or {}).get("hpo") or []:
            h["max_trials"] = None
        return d

    if canonical(old) != canonical(new):
        return None
    before = {h.name: h.max_trials for h in old.stages.hpo or []}
    changes = []
    for h in new.stages.hpo or []:
        if h.max_trials < before[h.name]:
            return None
        if h.max_trials > before[h.name]:
            changes.append(f"hpo {h.name}: max_trials {before[h.name]} -> {h.max_trials}")
    return changes or None


# ------------------------------------------------------------------------------------------- loading
def line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at pydantic location ``loc`` (the deepest existing node)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    node = v
                    line = k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def yaml_path(loc: Sequence[int | str]) -> str:
    """``["stages", "hpo", 0, "lr"]`` -> ``stages.hpo[0].lr``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_recipe(text: str, path: str = "<recipe>", *, profile: str | None = None,
                 site: str | None = None, check_files: bool = True) -> Recipe:
    """Validate recipe YAML text.

    Args:
        text: The YAML.
        path: File name used in messages.
        profile: A name from the recipe's ``profiles`` to merge over the base.
        site: Override of ``site.name`` (e.g. ``--site frontier``); a profile of that name is applied too.
        check_files: Check that the datasets' files exist here and look like their reader's format (False when
            checking a recipe for another machine).

    Raises:
        RecipeError: with every problem, its YAML path and line.
    """
    try:
        root, data = load_bounded(text)
    except RecipeYAMLError as exc:
        raise RecipeError(path, [("", exc.line, str(exc))]) from None
    if data is None:
        raise RecipeError(path, [("", 1, "the recipe is empty")])
    if not isinstance(data, dict):
        raise RecipeError(path, [("", 1, "a recipe must be a mapping (key: value) at the top level")])
    profiles = data.get("profiles") or {}
    chosen = profile or (site if isinstance(profiles, dict) and site in profiles else None)
    if chosen is not None:
        if not isinstance(profiles, dict) or chosen not in profiles:
            known = ", ".join(profiles) if isinstance(profiles, dict) else ""
            raise RecipeError(path, [("profiles", line_of(root, ["profiles"]),
                                      f"no profile {chosen!r} (known: {known or 'none'})")])
        data = _deep_merge(data, profiles[chosen])
    if site is not None:
        data = _deep_merge(data, {"site": {"name": site}})
    hpo_defaults = data.get("hpo_defaults") or {}
    stages = data.get("stages")
    own_hpo: list[Any] = []  # each HPO entry as written, before the defaults are merged in
    if isinstance(hpo_defaults, dict) and isinstance(stages, dict) and isinstance(stages.get("hpo"), list):
        own_hpo = list(stages["hpo"])
        stages["hpo"] = [_deep_merge(hpo_defaults, h) if isinstance(h, dict) else h for h in stages["hpo"]]
    try:
        return Recipe.model_validate(data, context={"check_files": check_files})
    except ValidationError as exc:
        errors: list[tuple[str, int | None, str]] = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p in ("int", "float", "categorical"))]
            loc = _where_written(loc, own_hpo, hpo_defaults)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key" + _did_you_mean(str(loc[-1]))
            entry = (yaml_path(loc), line_of(root, loc), msg)
            if entry not in errors:  # a mistake in hpo_defaults is reported once, where it is written
                errors.append(entry)
        raise RecipeError(path, errors) from None


def _where_written(loc: list[int | str], own_hpo: list[Any], hpo_defaults: Any) -> list[int | str]:
    """An error in an HPO entry whose key came from ``hpo_defaults`` is located in ``hpo_defaults``."""
    if len(loc) >= 4 and loc[:2] == ["stages", "hpo"] and isinstance(loc[2], int) and loc[2] < len(own_hpo):
        own, key = own_hpo[loc[2]], loc[3]
        if isinstance(own, dict) and key not in own and isinstance(hpo_defaults, dict) and key in hpo_defaults:
            return ["hpo_defaults", *loc[3:]]
    return loc


def _recipe_keys() -> set[str]:
    """Every key a recipe may hold, at any level (for "did you mean")."""
    schema = Recipe.model_json_schema()
    keys = set(schema.get("properties", {}))
    for d in schema.get("$defs", {}).values():
        keys |= set(d.get("properties", {}))
    return keys


def _did_you_mean(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(_recipe_keys()), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_recipe(path: str | Path, *, profile: str | None = None, site: str | None = None,
                check_files: bool = True) -> Recipe:
    """Read and validate a recipe file (see :func:`parse_recipe`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise RecipeError(str(p), [("", None, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(p), [("", None, f"cannot read: {exc}")]) from None
    return parse_recipe(text, str(p), profile=profile, site=site, check_files=check_files)


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe."""
    return Recipe.model_json_schema()
