"""What every stage implements, and what the steering loop hands it.

A stage plans tasks (:class:`PlannedTask`: a key unique in the campaign plus a :class:`~campaign.tasks.TaskSpec`)
and consumes their results, possibly planning more (an HPO stage asks for a new trial whenever one is told).
It never talks to the dispatcher, and records what it produces only through the ledger's typed provenance calls
(:class:`~campaign.provenance.Provenance`: trials, models, hits, metrics, lineage), receiving plain rows
(:mod:`campaign.records`); an import contract keeps SQLAlchemy and the tables out of every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from campaign.errors import CampaignInputError
from campaign.tasks import TaskResult, TaskSpec
from models.appio import BadInput
from models.contracts import validate

if TYPE_CHECKING:
    from campaign.ledger import Ledger
    from campaign.recipe import Recipe
    from campaign.records import TaskRow


C = TypeVar("C", bound=BaseModel)


def app_config(schema: type[C], raw: dict[str, Any], where: str) -> C:
    """An app config a stage built from the recipe, validated against the app's contract before dispatch.

    Raises:
        CampaignInputError: (exit 2) naming ``where`` (the recipe's stage) and the field the app would refuse.
    """
    try:
        return validate(schema, raw, where)
    except BadInput as exc:
        raise CampaignInputError(str(exc)) from None


def app_task_config(config: BaseModel) -> dict[str, Any]:
    """The JSON a task carries for its app: every field set, unset optional ones (None) left out."""
    return config.model_dump(mode="json", exclude_none=True)


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Split ``count`` items into ``shards`` contiguous ``(start, n)`` ranges (no empty shard)."""
    shards = max(1, min(shards, count))
    base, extra = divmod(count, shards)
    out, start = [], 0
    for k in range(shards):
        n = base + (1 if k < extra else 0)
        out.append((start, n))
        start += n
    return out


@dataclass(frozen=True)
class PlannedTask:
    """A task a stage wants run. ``key`` makes it idempotent: the same key is never run twice.

    ``inputs`` are the lineage endpoints the task reads (``("dataset", 3)``, ``("model", 7)``): recorded as
    ``input_of`` edges with the task, in the transaction that creates it, so that lineage walks from anything
    the task made back to what it was made from.
    """

    key: str
    spec: TaskSpec
    inputs: tuple[tuple[str, Any], ...] = ()


@dataclass
class StageContext:
    """Everything a stage may use: the recipe, the ledger, the campaign row and its directories."""

    recipe: Recipe
    ledger: Ledger
    campaign_id: int
    stage_id: int
    workdir: Path
    site: str
    shared: dict[str, Any] = field(default_factory=dict)  # outputs of earlier stages (datasets, models, …)

    def task_dir(self, *parts: str) -> Path:
        """A directory under the campaign's workdir for one task's files."""
        return self.workdir.joinpath(*parts)


class Stage(Protocol):
    """A campaign stage."""

    name: str
    kind: str

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """Tasks to run first (already-done ones are recognised by key and not re-run)."""
        ...

    def on_done(self, ctx: StageContext, task: TaskRow, result: TaskResult) -> list[PlannedTask]:
        """A task succeeded (its result is already recorded). Return follow-up tasks."""
        ...

    def on_failed(self, ctx: StageContext, task: TaskRow, result: TaskResult | None) -> list[PlannedTask]:
        """A task failed for good. Return follow-up tasks (e.g. a new trial)."""
        ...

    def poll(self, ctx: StageContext, running: list[TaskRow]) -> list[PlannedTask]:
        """Called about once a second while tasks are in flight (``running``: this stage's tasks now in
        flight). Return follow-up tasks. A stage with nothing to watch returns ``[]`` (early stopping of HPO
        trials reads their per-epoch metrics here)."""
        ...

    def finish(self, ctx: StageContext) -> str:
        """All tasks settled: record the stage's outputs, put them in ``ctx.shared``; return ``done``/``failed``."""
        ...
