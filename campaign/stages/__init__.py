"""Campaign stages: preprocess, hpo, promote, scaling, train, evaluate, screen, finetune, active.

:func:`build_stages` turns a recipe's ``stages`` section into stage objects, in the workflow's order. A stage
kind this version cannot run yet is reported as such (and recorded as ``skipped``), never silently dropped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from campaign.stages.base import PlannedTask, Stage, StageContext

if TYPE_CHECKING:
    from campaign.recipe import Recipe

STAGE_ORDER: tuple[str, ...] = ("preprocess", "hpo", "promote", "scaling", "train", "evaluate", "screen", "finetune",
                                "active")


#: Stage kind -> (module, class). A module that does not exist yet makes its stage "not available" (recorded as
#: ``skipped``); any other import error is a bug and propagates.
STAGE_CLASSES: dict[str, tuple[str, str]] = {
    "preprocess": ("campaign.stages.preprocess", "PreprocessStage"),
    "hpo": ("campaign.stages.hpo", "HPOStage"),
    "promote": ("campaign.stages.promote", "PromoteStage"),
    "scaling": ("campaign.stages.scaling", "ScalingStage"),
    "train": ("campaign.stages.train", "TrainStage"),
    "evaluate": ("campaign.stages.evaluate", "EvaluateStage"),
    "screen": ("campaign.stages.screen", "ScreenStage"),
    "finetune": ("campaign.stages.finetune", "FinetuneStage"),
    "active": ("campaign.stages.active", "ActiveStage"),
}


def _builders() -> dict[str, Callable[[Recipe], Stage]]:
    builders: dict[str, Callable[[Recipe], Stage]] = {}
    for kind, (module_name, cls_name) in STAGE_CLASSES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        builders[kind] = getattr(module, cls_name)
    return builders


def build_stages(recipe: Recipe) -> list[tuple[str, Stage | None]]:
    """``(kind, stage)`` for every stage the recipe declares; ``stage`` is None where not available yet."""
    builders = _builders()
    out: list[tuple[str, Stage | None]] = []
    for kind in STAGE_ORDER:
        section = getattr(recipe.stages, kind)
        if section is None or (isinstance(section, list) and not section):
            continue
        build = builders.get(kind)
        out.append((kind, build(recipe) if build else None))
    return out


__all__ = ["STAGE_CLASSES", "STAGE_ORDER", "PlannedTask", "Stage", "StageContext", "build_stages"]
