"""The Python API: the same operations as the CLI, for notebooks and scripts.

Example (``docs/python-api.md`` has a worked one, which the tests run)::

    from campaign import api
    outcome = api.run("recipes/hpo.yaml")
    best = api.trials(k=1)                      # a pandas DataFrame: the best trial of each study
    for model in api.models(role="promoted"):   # typed records
        print(model.id, model.family, model.objective, model.checkpoint)
    df = api.table("SELECT hpo, MIN(objective) AS best FROM trials GROUP BY hpo")

Nothing here imports torch or parsl until a campaign is run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from campaign.recipe import Recipe
    from campaign.runner import RunOutcome

__all__ = [
    "CancelOutcome",
    "Recipe",
    "RunOutcome",
    "cancel",
    "export_model",
    "grant_reader",
    "hits",
    "lineage",
    "list_named_queries",
    "list_sites",
    "load_recipe",
    "models",
    "named_query",
    "parse_recipe",
    "query",
    "recipe_schema",
    "render_site_script",
    "render_site_scripts",
    "report",
    "resume",
    "retry",
    "run",
    "schema_revisions",
    "status",
    "table",
    "trials",
    "upgrade_database",
]


def __getattr__(name: str) -> Any:
    """``api.Recipe`` and ``api.RunOutcome``, imported on first use (the read-only commands never need them)."""
    if name == "Recipe":
        from campaign.recipe import Recipe

        return Recipe
    if name == "RunOutcome":
        from campaign.runner import RunOutcome

        return RunOutcome
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_recipe(path: str | Path, *, profile: str | None = None, site: str | None = None,
                check_files: bool = True) -> Recipe:
    """Read and validate a recipe file (see :func:`campaign.recipe.parse_recipe`)."""
    from campaign.recipe import load_recipe as load

    return load(path, profile=profile, site=site, check_files=check_files)


def parse_recipe(text: str, path: str = "<recipe>", *, profile: str | None = None, site: str | None = None,
                 check_files: bool = True) -> Recipe:
    """Validate recipe YAML text (see :func:`campaign.recipe.parse_recipe`)."""
    from campaign.recipe import parse_recipe as parse

    return parse(text, path, profile=profile, site=site, check_files=check_files)


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe."""
    from campaign.recipe import recipe_schema as schema

    return schema()


def run(recipe: str | Path, *, db: str | None = None, profile: str | None = None,
        site: str | None = None) -> RunOutcome:
    """Run (or resume) the campaign a recipe file declares."""
    from campaign.runner import run_campaign

    return run_campaign(recipe, db=db, profile=profile, site=site)


def resume(name: str, *, db: str | None = None) -> RunOutcome:
    """Resume a campaign by name from the recipe recorded in the database."""
    from campaign.runner import resume_campaign

    return resume_campaign(name, db=db)


@dataclass(frozen=True)
class CancelOutcome:
    """What :func:`cancel` did: the campaign's status, the driver asked to stop (``None``: none was running) and
    whether it stopped within the wait."""

    status: str
    driver: str | None
    stopped: bool


def cancel(name: str, *, db: str | None = None, wait: bool = True, timeout_s: float = 120.0,
           poll_s: float = 0.5) -> CancelOutcome:
    """Ask the driver running campaign ``name`` to stop (see ``campaign cancel``), and wait for it.

    Raises:
        CampaignInputError: no campaign of that name.
    """
    import time

    from campaign.ledger import Ledger
    from campaign.runner import database_url
    from db.engine import check_connection, make_engine, require_existing

    url = database_url(db, None)
    require_existing(url)  # cancelling never creates a database
    engine = make_engine(url)
    try:
        check_connection(engine)
        ledger = Ledger(engine)
        req = ledger.request_cancel(name)
        if req.driver is None:
            return CancelOutcome(req.status, None, False)
        deadline = time.monotonic() + timeout_s
        stopped = False
        while wait and not (stopped := ledger.lease_token(req.campaign_id) is None):
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        status = ledger.campaign_status(req.campaign_id)
        return CancelOutcome(status, req.driver.describe(), stopped)
    finally:
        engine.dispose()


#: Stages whose failed tasks ``retry`` refuses to run again, and why.
NOT_RETRYABLE = {"hpo": "a failed trial was told to the optimizer as a failure, and the study has asked its next "
                        "trials knowing it; raise the study's max_trials to run more trials instead"}


def retry(name: str, stage: str, *, db: str | None = None) -> int:
    """Make the failed tasks of ``stage`` ready again (their retry budget afresh); ``resume`` then runs them.
    Returns how many tasks were made ready.

    Raises:
        CampaignInputError: no such campaign or stage, a stage whose tasks cannot be retried, or the campaign is
            running (its driver holds it: cancel it or let it finish first).
    """
    from sqlalchemy import select

    from campaign.errors import CampaignInputError
    from campaign.lease import this_driver
    from campaign.ledger import Ledger
    from campaign.runner import database_url
    from db import models as m
    from db.engine import check_connection, make_engine, require_existing, session_factory

    url = database_url(db, None)
    require_existing(url)
    engine = make_engine(url)
    try:
        check_connection(engine)
        with session_factory(engine)() as s:
            row = s.execute(select(m.Campaign.id).where(m.Campaign.name == name)).first()
            kind = s.scalar(select(m.Stage.kind).join(m.Campaign).where(m.Campaign.name == name, m.Stage.name == stage))
        if row is None:
            raise CampaignInputError(f"no campaign named {name!r}")
        if kind in NOT_RETRYABLE:
            raise CampaignInputError(f"stage {stage!r} cannot be retried: {NOT_RETRYABLE[kind]}")
        ledger = Ledger(engine)
        driver = this_driver(None)
        ledger.acquire_lease(row.id, driver)  # DriverBusy (exit 2) while the campaign runs
        try:
            return ledger.retry_failed(row.id, stage)
        finally:
            ledger.release_lease(row.id, driver.token)
    finally:
        engine.dispose()


def _dialect(db: str | None) -> str:
    from db.url import backend_of, resolve_url

    return backend_of(resolve_url(db))


def query(sql: str, params: Any = (), *, db: str | None = None, timeout_s: float | None = None) -> Any:
    """Run one read-only SQL statement of the user's; returns a :class:`db.readonly.QueryResult` (``.rows``,
    ``.as_dicts()``, ``.to_dataframe()``). On PostgreSQL the URL must name a role that can only read (see
    :func:`grant_reader`)."""
    from db.readonly import run_readonly

    return run_readonly(sql, params, url=db, user_sql=True, timeout_s=timeout_s)


def row_exists(table: str, column: str, value: Any, *, db: str | None = None) -> bool:
    """Whether the campaign table ``table`` has a row whose ``column`` equals ``value`` (read-only).

    ``table`` and ``column`` are the caller's identifiers, never a user's: anything but a plain name is refused.
    """
    from db.readonly import readonly_snapshot

    if not (_IDENTIFIER.fullmatch(table) and _IDENTIFIER.fullmatch(column)):
        raise ValueError(f"not a table and column name: {table!r}, {column!r}")
    with readonly_snapshot(db) as snap:
        return bool(snap.rows(f"SELECT 1 FROM {table} WHERE {column} = :value LIMIT 1", {"value": value}))


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def grant_reader(role: str, *, password: str | None = None, db: str | None = None) -> list[str]:
    """(PostgreSQL) Create or update ``role`` as a login role that can only read the campaign tables; run with
    the owner's URL. Returns the tables granted."""
    from campaign.errors import CampaignInputError
    from campaign.runner import database_url
    from db.engine import check_connection, make_engine, parse_url
    from db.roles import grant_reader as grant

    url = database_url(db, None)
    if parse_url(url).get_backend_name() != "postgresql":
        raise CampaignInputError("grant-reader is for PostgreSQL; a SQLite database is protected by its file's "
                                 "permissions (owner-only by default)")
    engine = make_engine(url)
    try:
        check_connection(engine)
        try:
            return grant(engine, role, password=password)
        except ValueError as exc:
            raise CampaignInputError(str(exc)) from None
    finally:
        engine.dispose()


def list_named_queries(db: str | None = None) -> list[Any]:
    """The named queries shipped with campaign (for the database's dialect)."""
    from db.queries import list_queries

    return list_queries(_dialect(db))


def named_query(name: str, params: Mapping[str, Any] | None = None, *, db: str | None = None,
                timeout_s: float | None = None) -> Any:
    """Run a named query from ``db/queries`` with ``params`` (Python values, or strings as the command line
    gives them: numbers and ``null`` converted)."""
    from db.queries import get_query
    from db.readonly import run_readonly

    dialect = _dialect(db)
    q = get_query(name, dialect)
    return run_readonly(q.for_dialect(dialect), q.bind(params or {}), url=db, timeout_s=timeout_s)


def table(sql: str, params: Any = (), *, db: str | None = None, timeout_s: float | None = None) -> Any:
    """:func:`query` as a pandas DataFrame (one column per selected column)."""
    return query(sql, params, db=db, timeout_s=timeout_s).to_dataframe()


def trials(campaign: str | None = None, *, k: int = 5, db: str | None = None) -> Any:
    """The best ``k`` trials of each HPO study as a pandas DataFrame (columns: campaign, hpo, rank, family,
    trial, objective, best_epoch, config), best first."""
    return named_query("top_trials", {"k": k} | ({"campaign": campaign} if campaign else {}), db=db).to_dataframe()


def models(campaign: str | None = None, *, role: str | None = None, db: str | None = None) -> list[Any]:
    """Every model (of ``role``: promoted, trained, finetuned, scratch) as a :class:`campaign.browse.ModelInfo`
    (id, family, role, objective, checkpoint, ...)."""
    from campaign.browse import models as read

    return read(campaign, role=role, db=db)


def hits(campaign: str, *, top: int | None = None, db: str | None = None) -> list[Any]:
    """The screening hits of ``campaign``, best first, as :class:`campaign.browse.Hit` (``.atoms()`` gives the
    structure as ``ase.Atoms``)."""
    from campaign.browse import hits as read

    return read(campaign, top=top, db=db)


def lineage(node: str | int, *, db: str | None = None) -> Any:
    """Everything upstream of a model (``3``) or any node (``"hit:17"``): a :class:`campaign.lineage.Lineage`
    (``.rows()`` for a DataFrame, ``.labels`` names every node)."""
    from campaign.lineage import parse_node, walk

    return walk(parse_node(str(node)), db=db)


def export_model(model: int, out: str | Path, *, db: str | None = None) -> Path:
    """Export model ``model`` as a self-contained package in ``out`` (see :mod:`campaign.export`)."""
    from campaign.export import export_model as export

    return export(model, out, db=db)


def status(campaign: str | None = None, *, db: str | None = None) -> dict[str, Any]:
    """A snapshot of a campaign (default: the most recent): stages with tasks by state, best objective per HPO
    campaign, attempts in flight (queued or running, host, elapsed seconds, a training attempt's epoch) and failures by cause, as JSON-able data.

    ``failures`` maps exit cause -> failed attempts; ``failures_detail`` adds tasks, last seen and latest error.
    """
    from campaign.status import collect_status

    return collect_status(db, campaign).to_dict()


def report(campaign: str, out: str | Path, *, db: str | None = None) -> Any:
    """Write the HTML report of ``campaign`` (figures as PNGs) into the folder ``out``; returns a
    :class:`campaign.report.ReportOutcome` (``.index``, ``.images``, ``.empty_sections``)."""
    from campaign.report import build_report

    return build_report(campaign, out, db=db)


def list_sites() -> list[Any]:
    """Facts about every site (no Parsl import)."""
    import sites

    return sites.list_sites()


def render_site_scripts(name: str | None = None, *, recipe: str | Path | None = None, profile: str | None = None,
                        overrides: Mapping[str, Any] | None = None,
                        executors: list[str] | None = None) -> dict[str, str]:
    """The batch script Parsl would submit for each executor of a site (nothing is submitted), ``{executor:
    script}``: the site as ``recipe`` (with ``profile``) configures it, or site ``name`` with only ``overrides``
    (which also override the recipe's values). ``executors`` default to every executor the site has.

    Raises:
        CampaignInputError: an unknown site, a site without batch jobs, a recipe of another site, or a missing
            required parameter (named).
    """
    import sites
    from campaign.errors import CampaignInputError

    params: dict[str, Any] = {}
    if recipe is not None:
        from campaign.dispatch import site_config_params
        from campaign.recipe import load_recipe as load

        r = load(recipe, profile=profile, check_files=False)
        if name is not None and name != r.site.name:
            raise CampaignInputError(f"{recipe} runs on site {r.site.name!r}"
                                     f"{f' with profile {profile!r}' if profile else ''}, not {name!r}")
        name = r.site.name
        params = site_config_params(name, r.site.dispatch_params())
    assert name is not None
    if name not in sites.site_names():
        raise CampaignInputError(f"unknown site {name!r}; known sites: {', '.join(sites.site_names())}")
    params.update(overrides or {})
    params.setdefault("nodes_per_block", 1)
    from sites.render import render_batch_script

    chosen = executors or _executors_of(name)
    try:
        return {ex: render_batch_script(name, executor=ex, **params) for ex in chosen}
    except (TypeError, ValueError) as exc:
        raise CampaignInputError(f"site {name}: {exc}") from exc


def _executors_of(name: str) -> list[str]:
    from sites.facts import get_site

    facts = get_site(name)
    if facts.kind != "parsl":
        from campaign.errors import CampaignInputError

        raise CampaignInputError(f"site {name!r} ({facts.kind}) submits no batch script")
    return ["htex", "mpi"] if facts.scheduler in ("slurm", "pbspro") else ["htex"]


def render_site_script(name: str, params: dict[str, Any]) -> str:
    """The batch script Parsl would submit for site ``name`` with ``params`` (nothing is submitted)."""
    import sites
    from campaign.errors import CampaignInputError

    if name not in sites.site_names():
        raise CampaignInputError(f"unknown site {name!r}; known sites: {', '.join(sites.site_names())}")
    from sites.render import render_batch_script

    try:
        return render_batch_script(name, **params)
    except (TypeError, ValueError) as exc:
        raise CampaignInputError(f"site {name}: {exc}") from exc


def upgrade_database(db: str | None = None) -> str:
    """Create or upgrade the schema; returns the revision."""
    from campaign.runner import database_url
    from db.engine import check_connection, make_engine
    from db.migrate import upgrade

    engine = make_engine(database_url(db, None))
    check_connection(engine)
    upgrade(engine)
    from db.migrate import current_revision

    return current_revision(engine) or ""


def schema_revisions(db: str | None = None) -> tuple[str | None, str]:
    """(current revision of the database, head revision of this code)."""
    from campaign.runner import database_url
    from db.engine import check_connection, make_engine, require_existing
    from db.migrate import current_revision, head_revision

    require_existing(database_url(db, None))  # asking for the revision never creates a database
    engine = make_engine(database_url(db, None))
    check_connection(engine)
    return current_revision(engine), head_revision()

