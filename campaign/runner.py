"""Run or resume a campaign: validate, open the database, dispatch each stage, record everything.

The CLI's ``run`` and ``resume`` are thin layers over :func:`run_campaign` and :func:`resume_campaign`.
Nothing is written before the recipe validates and the database answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign.errors import CampaignInputError
from campaign.recipe import Recipe, RecipeError, extension_of, load_recipe, parse_recipe
from campaign.redact import redact_recipe_text
from campaign.sharing import apply_sharing


@dataclass
class StageOutcome:
    """How one stage ended."""

    kind: str
    status: str  # done | failed | cancelled | skipped
    note: str = ""


@dataclass
class RunOutcome:
    """The result of running (or resuming) a campaign."""

    campaign: str
    campaign_id: int
    database: str
    status: str  # done | failed | cancelled
    stages: list[StageOutcome] = field(default_factory=list)
    url: str = field(default="", repr=False)  # the full database URL (may hold a password: never print it)

    @property
    def ok(self) -> bool:
        """Whether every stage that ran succeeded."""
        return self.status == "done"


def database_url(cli_url: str | None, recipe: Recipe | None) -> str:
    """--db, then CAMPAIGN_DB, then the recipe's ``database``, then ``sqlite:///campaign.db``."""
    from db.engine import resolve_url

    if cli_url:
        return resolve_url(cli_url)
    if os.environ.get("CAMPAIGN_DB"):
        return resolve_url(None)
    return resolve_url(recipe.database if recipe else None)


def open_database(url: str | None = None) -> Any:
    """A migrated read-write engine (upgrades an older schema; refuses an unknown newer one)."""
    from db.engine import check_connection, make_engine
    from db.migrate import ensure_schema

    engine = make_engine(url)
    check_connection(engine)
    ensure_schema(engine)
    return engine


def _prepare_workdir(recipe: Recipe, base: Path) -> Path:
    workdir = (base / recipe.workdir / recipe.campaign).resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CampaignInputError(f"workdir {workdir} is not writable: {exc.strerror or exc}") from exc
    return workdir


def execute(recipe: Recipe, recipe_text: str, recipe_path: str | None, *, db: str | None = None,
            profile: str | None = None, resume_only: bool = False, base_dir: Path | None = None,
            on_progress: Callable[[Any], None] | None = None) -> RunOutcome:
    """Run every stage of a validated recipe, resuming whatever an earlier run of it left.

    The campaign's driver lease is taken before anything of an existing campaign is changed: a second driver is
    refused (:class:`~campaign.lease.DriverBusy`) and leaves the first one's rows as they were.

    Args:
        recipe: The validated recipe.
        recipe_text: Its YAML (recorded in the database).
        recipe_path: Where it came from (recorded).
        db: Database URL override.
        resume_only: Refuse to create a new campaign (``campaign resume NAME``).
        base_dir: Directory the recipe's ``workdir`` is relative to (default: cwd).
        on_progress: Live-display callback (see :class:`campaign.steer.StageProgress`).
    """
    from campaign.dispatch import make_dispatcher, retry_policy
    from campaign.lease import CampaignCancelled, LeaseLost, this_driver, write_lease_file
    from campaign.ledger import Ledger
    from campaign.stages import StageContext, build_stages
    from campaign.steer import Steerer
    from campaign.taskqueue import TaskQueue
    from db.engine import safe_url

    apply_sharing()  # the database and every output owner-only unless CAMPAIGN_SHARING=group
    url = database_url(db, recipe)
    engine = open_database(url)
    workdir = _prepare_workdir(recipe, base_dir or Path.cwd())
    ledger = Ledger(engine)
    def extension(stored_text: str) -> list[str] | None:
        try:
            stored = parse_recipe(stored_text, "<stored recipe>", profile=profile, site=recipe.site.name,
                                  check_files=False)
        except RecipeError:
            return None
        return extension_of(stored, recipe)

    row = ledger.open_campaign(name=recipe.campaign, recipe_text=redact_recipe_text(recipe_text),
                               recipe_hash=recipe.hash(),
                               site=recipe.site.name, recipe_path=recipe_path, profile=profile,
                               resume_only=resume_only, extension=extension)
    driver = this_driver(workdir)
    ledger.acquire_lease(row.id, driver)
    try:
        write_lease_file(driver)  # workers of an earlier driver that read it stop
        params = recipe.site.dispatch_params()
        try:
            dispatcher = make_dispatcher(recipe.site.name, params, workdir / "dispatch")
        except (KeyError, TypeError, ValueError) as exc:
            raise CampaignInputError(f"{recipe_path or recipe.campaign}: site: {exc}") from exc
        ledger.start_campaign(row.id)
        outcome = RunOutcome(recipe.campaign, row.id, safe_url(url), "done", url=url)
        tasks = TaskQueue(ledger, row.id, site=recipe.site.name, executor=dispatcher.name,
                          policy=retry_policy(params), driver=driver)
        steer = Steerer(tasks, dispatcher, max_in_flight=recipe.site.max_in_flight(),
                        concurrency=recipe.site.concurrency(), on_progress=on_progress)
        shared: dict[str, Any] = {}
        current: int | None = None  # the stage running now
        current_kind: str | None = None
        stop_now = False  # interrupted or cancelled: attempts in flight are stopped, not waited for
        try:
            for kind, stage in build_stages(recipe):
                stage_row = ledger.stage(row.id, kind, kind)
                current, current_kind = stage_row.id, kind
                if stage is None:
                    ledger.finish_stage(stage_row.id, "skipped")
                    outcome.stages.append(StageOutcome(kind, "skipped", "not available in this version of campaign"))
                    continue
                ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=row.id, stage_id=stage_row.id,
                                   workdir=workdir, site=recipe.site.name, shared=shared)
                status = steer.run_stage(stage, ctx)
                note = ledger.stage_failure(stage_row.id) if status != "done" else getattr(stage, "note", "") or ""
                outcome.stages.append(StageOutcome(kind, status, note))
                if status != "done":
                    outcome.status = "failed"
                    break
            current = None
        except CampaignCancelled:
            stop_now = True
            if current is not None:
                ledger.finish_stage(current, "cancelled")
            outcome.status = "cancelled"
            outcome.stages.append(StageOutcome(current_kind or "-", "cancelled",
                                               "cancelled by `campaign cancel`; `campaign resume` continues it"))
        except KeyboardInterrupt:
            stop_now = True
            ledger.finish_campaign(row.id, "interrupted")
            raise
        except LeaseLost:
            raise  # another driver holds the campaign now: its rows are not ours to write
        except Exception as exc:  # a stage raised (bad input it found, or a defect): never left "running"
            _record_crash(ledger, row.id, current, exc)
            raise
        finally:
            dispatcher.shutdown(wait=not stop_now)
        ledger.finish_campaign(row.id, outcome.status)
        return outcome
    finally:
        ledger.release_lease(row.id, driver.token)


def _record_crash(ledger: Any, campaign_id: int, stage_id: int | None, exc: BaseException) -> None:
    """Mark the running stage and the campaign failed with the exception as the reason (best effort: when the
    database itself is what failed, the original exception is what the caller sees)."""
    try:
        if stage_id is not None:
            ledger.finish_stage(stage_id, "failed", f"{type(exc).__name__}: {exc}"[:4000])
        ledger.finish_campaign(campaign_id, "failed")
    except Exception:  # the original exception is re-raised by the caller
        pass


def run_campaign(path: str | Path, *, db: str | None = None, profile: str | None = None,
                 site: str | None = None, on_progress: Callable[[Any], None] | None = None) -> RunOutcome:
    """Validate ``path`` and run it (a re-run of the same recipe resumes it)."""
    recipe = load_recipe(path, profile=profile, site=site)
    text = Path(path).read_text()
    return execute(recipe, text, str(Path(path).resolve()), db=db, profile=profile, base_dir=Path.cwd(),
                   on_progress=on_progress)


def resume_campaign(name: str, *, db: str | None = None,
                    on_progress: Callable[[Any], None] | None = None) -> RunOutcome:
    """Resume the campaign ``name`` from the recipe stored in the database."""
    from sqlalchemy import select

    from db import models as m
    from db.engine import require_existing, safe_url, session_factory

    require_existing(database_url(db, None))  # resuming never creates a database
    engine = open_database(database_url(db, None))
    with session_factory(engine)() as s:
        row = s.scalar(select(m.Campaign).where(m.Campaign.name == name))
    if row is None:
        raise CampaignInputError(f"no campaign named {name!r} in {safe_url(database_url(db, None))}")
    where = row.recipe_path or f"<campaign {name}>"
    recipe = parse_recipe(row.recipe_text, where, profile=row.profile)
    if recipe.site.name != row.site:  # the run overrode the site on the command line
        recipe = parse_recipe(row.recipe_text, where, profile=row.profile, site=row.site)
    # the database the campaign was found in (the stored recipe's own URL has its password redacted)
    return execute(recipe, row.recipe_text, row.recipe_path, db=database_url(db, None), profile=row.profile,
                   resume_only=True,
                   on_progress=on_progress)
