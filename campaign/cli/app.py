"""The ``campaign`` command line (Typer + Rich), a thin layer over :mod:`campaign.api`.

Exit codes: 0 success; 1 the campaign ran and something failed; 2 bad input (missing file, malformed YAML,
schema error, unknown site, unreachable database), reported as one message without a traceback. Heavy modules
(torch, parsl) are imported only by the commands that run work: ``--help``, ``validate`` and ``sql`` stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

app = typer.Typer(
    name="campaign",
    help="HPC campaign manager for training graph foundation models of atoms and materials.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sites_app = typer.Typer(help="Sites the campaign can run on, and the batch scripts it would submit.",
                        no_args_is_help=True)
db_app = typer.Typer(help="The campaign database: migrations and the reader role.", no_args_is_help=True)
recipe_app = typer.Typer(help="Recipe tools.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: check downloaded files against the registry.", no_args_is_help=True)
app.add_typer(sites_app, name="sites")
app.add_typer(data_app, name="data")
app.add_typer(db_app, name="db")
app.add_typer(recipe_app, name="recipe")

console = Console()
err_console = Console(stderr=True)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _print_version(value: bool) -> None:
    if value:
        from campaign import __version__

        console.print(f"campaign {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """HPC campaign manager for training graph foundation models of atoms and materials."""

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: $CAMPAIGN_DB or sqlite:///campaign.db).")]
F = TypeVar("F", bound=Callable[..., Any])


def bad_input_types() -> tuple[type[BaseException], ...]:
    """Exception types the CLI reports as bad input (exit 2). Imports db lazily (it pulls sqlalchemy)."""
    from campaign.dispatch.errors import CredentialsMissing
    from campaign.errors import CampaignInputError
    from campaign.ledger import CampaignConflict
    from campaign.recipe import RecipeError
    from db.engine import DatabaseError
    from db.queries import QueryParamError, UnknownQuery
    from db.readonly import QueryError, ReadOnlyViolation

    return (RecipeError, CampaignInputError, DatabaseError, QueryError, ReadOnlyViolation, UnknownQuery,
            QueryParamError, CampaignConflict, CredentialsMissing)


def bad_input_exit(func: F) -> F:
    """Turn bad-input exceptions into one message on stderr and exit status 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except bad_input_types() as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ run
@app.command()
@bad_input_exit
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    db: DbOpt = None,
    profile: Annotated[str | None, typer.Option(help="Recipe profile to apply (e.g. frontier).")] = None,
    site: Annotated[str | None, typer.Option(help="Override the recipe's site (its profile is applied too).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (stages, tasks, node-hours, batch scripts) and run nothing.")] = False,
) -> None:
    """Validate RECIPE and run its campaign. Running the same recipe again resumes it."""
    from campaign.recipe import load_recipe
    from campaign.runner import run_campaign

    r = load_recipe(recipe, profile=profile, site=site, check_files=not dry_run)  # validate before anything
    if dry_run:
        _print_plan(r, recipe, profile)
        return
    from campaign.cli.live import LiveDisplay

    with LiveDisplay(console, enabled=not quiet) as live:
        outcome = run_campaign(recipe, db=db, profile=profile, site=site, on_progress=live.update)
    _print_outcome(outcome)


@app.command()
@bad_input_exit
def resume(
    campaign: Annotated[str, typer.Argument(help="Campaign name (or a recipe file, which is re-run).")],
    db: DbOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Resume a campaign from the database: done tasks are kept, lost ones re-submitted."""
    from campaign.cli.live import LiveDisplay
    from campaign.runner import resume_campaign, run_campaign

    with LiveDisplay(console, enabled=not quiet) as live:
        if campaign.endswith((".yaml", ".yml")) and Path(campaign).exists():
            outcome = run_campaign(campaign, db=db, on_progress=live.update)
        else:
            outcome = resume_campaign(campaign, db=db, on_progress=live.update)
    _print_outcome(outcome)


@app.command()
@bad_input_exit
def cancel(
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    db: DbOpt = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until its driver has stopped.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.", min=1)] = 120.0,
) -> None:
    """Stop a running campaign, from any host that reaches its database: its driver stops the attempts in flight
    and records the campaign cancelled. Nothing done is lost; `campaign resume NAME` continues it."""
    from campaign import api

    outcome = api.cancel(campaign, db=db, wait=wait, timeout_s=timeout)
    if outcome.driver is None:
        console.print(f"campaign {campaign!r} is not running (status: {outcome.status}): nothing to cancel",
                      highlight=False)
    elif not wait:
        console.print(f"asked the driver of {campaign!r} ({outcome.driver}) to stop; it does within a few seconds",
                      highlight=False)
    elif outcome.stopped:
        console.print(f"campaign {campaign!r} cancelled: its driver ({outcome.driver}) stopped; "
                      f"`campaign resume {campaign}` continues it", highlight=False)
    else:
        err_console.print(f"[bold red]error:[/] the driver of {campaign!r} ({outcome.driver}) has not stopped "
                          f"after {timeout:g} s; it will at its next check (see `campaign status {campaign}`)",
                          highlight=False)
        raise typer.Exit(EXIT_FAILED)


@app.command()
@bad_input_exit
def retry(
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    stage: Annotated[str, typer.Option("--stage", "-s", help="The stage whose failed tasks to run again.")],
    db: DbOpt = None,
) -> None:
    """Make the failed tasks of a stage ready again, with their retry budget afresh (their earlier attempts stay
    recorded); `campaign resume NAME` then runs them. Refused while the campaign runs."""
    from campaign import api

    n = api.retry(campaign, stage, db=db)
    if n == 0:
        console.print(f"stage {stage!r} of {campaign!r} has no failed task", highlight=False)
    else:
        console.print(f"{n} failed task(s) of stage {stage!r} are ready again: `campaign resume {campaign}` runs them",
                      highlight=False)


@app.command()
@bad_input_exit
def logs(
    task: Annotated[str, typer.Argument(help="Task id (or its first 8+ characters, as tables show it) or task key.")],
    campaign: Annotated[str | None, typer.Option("--campaign", "-c", help="The campaign of a task key.")] = None,
    attempt: Annotated[int | None, typer.Option("--attempt", "-a", help="Attempt number (default: latest).")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines of each stream.", min=1, max=100_000)] = 40,
    stream: Annotated[str, typer.Option(help="stdout, stderr or both.")] = "both",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the attempt ends.")] = False,
    db: DbOpt = None,
) -> None:
    """The tail of a task attempt's output (stdout and stderr, as its worker wrote them), also while it runs."""
    from campaign.attempt_logs import find_attempt, follow_attempt, tail_lines
    from campaign.errors import CampaignInputError

    if stream not in ("stdout", "stderr", "both"):
        raise CampaignInputError(f"--stream must be stdout, stderr or both (got {stream!r})")
    att = find_attempt(task, campaign=campaign, attempt=attempt, db=db)
    console.print(f"[bold]{att.key}[/] ({att.task_id[:8]}…, campaign {att.campaign}) attempt {att.number} of "
                  f"{att.attempts}: {att.describe()}", highlight=False, soft_wrap=True)
    streams = ("stdout", "stderr") if stream == "both" else (stream,)
    for name in streams:
        path = att.stdout if name == "stdout" else att.stderr
        if path is None:
            console.print(f"[dim]── {name}: not recorded (the attempt ran inside its worker)[/]")
            continue
        console.print(f"[dim]── {name}: {path}[/]", highlight=False, soft_wrap=True)
        shown = tail_lines(path, lines)
        for line in shown:
            console.out(line, highlight=False)
        if not shown:
            console.print("[dim](empty)[/]")
    if follow:
        for name, line in follow_attempt(att, streams, db=db):
            console.out(line if len(streams) == 1 else f"{name}: {line}", highlight=False)


def _print_plan(r: Any, path: Path, profile: str | None) -> None:
    """``run --dry-run``: the stages' tasks and node-hours, then the site's batch scripts."""
    from rich.table import Table

    from campaign.plan import plan
    from campaign.status import format_duration

    table = Table(title=f"plan of campaign {r.campaign!r} on {r.site.name} (nothing is run)", title_justify="left")
    for col in ("stage", "tasks", "each task", "node-hours ≤"):
        table.add_column(col, justify="right" if col in ("tasks", "node-hours ≤") else "left", no_wrap=True)
    total = 0.0
    stages = plan(r)
    for p in stages:
        nh = p.node_hours
        total += nh or 0.0
        each = "–" if not p.nodes else (f"{p.nodes} node{'s' if p.nodes > 1 else ''}, {p.ranks:,} rank"
                                         f"{'s' if p.ranks > 1 else ''}")
        if p.nodes and p.walltime_s is not None:
            each += f", ≤ {format_duration(p.walltime_s)}"
        table.add_row(p.stage, p.tasks_text(), each, "–" if nh is None else f"{nh:,.0f}")
    console.print(table)
    for p in stages:
        if p.note:
            console.print(f"  {p.stage}: {p.note}", highlight=False, soft_wrap=True)
    if r.site.name != "local":
        console.print(f"at most {total:,.0f} node-hours where a walltime bounds the tasks", highlight=False)
        from campaign import api

        for label, script in api.render_site_scripts(recipe=path, profile=profile).items():
            console.rule(f"batch script of executor {label} (one block)")
            console.out(script, highlight=False)


def _print_outcome(outcome: Any) -> None:
    from rich.table import Table

    table = Table(title=f"campaign {outcome.campaign}", show_lines=False)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("note")
    colors = {"done": "green", "failed": "red", "skipped": "yellow", "cancelled": "yellow"}
    for st in outcome.stages:
        table.add_row(st.kind, f"[{colors.get(st.status, 'white')}]{st.status}[/]", st.note)
    console.print(table)
    _print_results(outcome)
    console.print(f"database: {outcome.database}")
    console.print(f'try: campaign sql --db {outcome.database} "SELECT kind, state, COUNT(*) FROM tasks GROUP BY 1, 2"',
                  highlight=False, soft_wrap=True)
    if not outcome.ok:
        raise typer.Exit(EXIT_FAILED)


def _print_results(outcome: Any) -> None:
    """What the campaign found: each HPO campaign's best trial and the promoted models (when it has them)."""
    from rich.table import Table
    from sqlalchemy import select

    from campaign.status import collect_status, hpo_table
    from db import models as m
    from db.engine import make_engine, session_factory

    snap = collect_status(outcome.url, outcome.campaign)
    if snap.hpo:
        console.print(hpo_table(snap.hpo))
    engine = make_engine(outcome.url)
    try:
        with session_factory(engine)() as s:
            promoted = list(s.scalars(select(m.Model).where(m.Model.campaign_id == outcome.campaign_id,
                                                            m.Model.role == "promoted").order_by(m.Model.id)))
        if promoted:
            table = Table(title="promoted models (ready for the train stage)", title_justify="left")
            for col in ("model", "name", "family", "objective", "why"):
                table.add_column(col)
            for row in promoted:
                met = row.metrics or {}
                obj = met.get("objective")
                table.add_row(str(row.id), row.name, row.family, "–" if obj is None else f"{obj:.4g}",
                              ", ".join(met.get("reasons", [])))
            console.print(table)
    finally:
        engine.dispose()


@app.command()
@bad_input_exit
def hits(
    campaign: Annotated[str, typer.Argument(help="Campaign whose screening hits to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="extxyz file to write (atomically).")] = Path("hits.extxyz"),
    top: Annotated[int | None, typer.Option("--top", "-k", help="Only the best K hits.")] = None,
    db: DbOpt = None,
) -> None:
    """Export a campaign's screening hits, best first, as extxyz (energies, forces, rank and per-head energies)."""
    from campaign.hits import export_hits
    from campaign.runner import database_url
    from db.engine import check_connection, make_engine, require_existing

    require_existing(database_url(db, None))
    engine = make_engine(database_url(db, None))
    try:
        check_connection(engine)
        n = export_hits(engine, campaign, out, top=top)
    finally:
        engine.dispose()
    console.print(f"wrote {n} hit(s) to {out}")


# ------------------------------------------------------------------------------------------- validate
@app.command()
@bad_input_exit
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    profile: Annotated[str | None, typer.Option(help="Validate with this profile applied.")] = None,
    site: Annotated[str | None, typer.Option(help="Validate with this site.")] = None,
    elsewhere: Annotated[bool, typer.Option(
        "--elsewhere", help="The recipe runs on another machine: skip checking its dataset files here.")] = False,
) -> None:
    """Check a recipe: every error with its YAML path and line number (exit 2 if any), including that each
    dataset file exists and looks like its reader's format."""
    from campaign.recipe import load_recipe
    from campaign.recipe_advice import advise

    r = load_recipe(recipe, profile=profile, site=site, check_files=not elsewhere)
    from campaign.stages import STAGE_ORDER

    stages = [k for k in STAGE_ORDER if getattr(r.stages, k)]
    console.print(f"[green]ok[/] {recipe}: campaign {r.campaign!r}, site {r.site.name}, "
                  f"{len(r.datasets)} datasets, stages: {', '.join(stages) or 'none'}, hash {r.hash()[:12]}")
    chosen = profile or (site if site in r.profiles else None)
    for advice in advise(r, recipe.read_text(), profile=chosen):
        err_console.print(f"[yellow]warning:[/] {recipe}: {advice}", highlight=False, soft_wrap=True)


@recipe_app.command("schema")
def recipe_schema() -> None:
    """Print the JSON Schema of a recipe."""
    from campaign.recipe import recipe_schema as schema

    sys.stdout.write(json.dumps(schema(), indent=2) + "\n")


@recipe_app.command("reference")
@bad_input_exit
def recipe_reference(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")] = None,
) -> None:
    """Print (or write) the Markdown recipe reference generated from the schema (docs/recipe-reference.md)."""

    from campaign.cli.recipe_reference import render_reference
    from campaign.errors import CampaignInputError

    text = render_reference()
    if out is None:
        sys.stdout.write(text)
        return
    if not out.parent.is_dir():
        raise CampaignInputError(f"--out {out}: directory {out.parent} does not exist")
    from models.atomic_files import write_text_atomic

    write_text_atomic(out, text)
    console.print(f"wrote {out}", highlight=False)


# ------------------------------------------------------------------------------------------------ sql
@app.command()
@bad_input_exit
def sql(
    statement: Annotated[str | None, typer.Argument(help="One read-only SQL statement.")] = None,
    query: Annotated[str | None, typer.Option("--query", "-Q", help="Run a named query instead.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value for a named query.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    list_queries: Annotated[bool, typer.Option("--list", help="List the named queries.")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="Seconds a statement may run (default $CAMPAIGN_SQL_TIMEOUT_S or 300).", min=0.001,
        max=86400)] = None,
    schema: Annotated[bool, typer.Option("--schema", help="Describe every table and column instead.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="With --schema: write the description (Markdown) here.")]
        = None,
    db: DbOpt = None,
) -> None:
    """Query the campaign database, read-only (writes and DDL are refused; on PostgreSQL only through a role
    that can do nothing but read: see `campaign db grant-reader`)."""
    from campaign import api

    if fmt not in ("table", "csv", "json"):
        from campaign.errors import CampaignInputError

        raise CampaignInputError(f"--format must be table, csv or json (got {fmt!r})")
    if schema:
        from db.schema_doc import schema_markdown

        if out is None:
            sys.stdout.write(schema_markdown())
            return
        from models.atomic_files import write_text_atomic

        if not out.parent.is_dir():
            from campaign.errors import CampaignInputError

            raise CampaignInputError(f"--out {out}: directory {out.parent} does not exist")
        write_text_atomic(out, schema_markdown())
        console.print(f"wrote {out}")
        return
    if list_queries:
        from rich.table import Table

        table = Table(title="named queries")
        for col in ("name", "parameters", "description"):
            table.add_column(col)
        for q in api.list_named_queries(db):
            shown = ", ".join(k if v is None else f"{k}={v}" for k, v in q.params.items())
            table.add_row(q.name, shown, q.description)
        console.print(table)
        return
    if query is not None:
        params: dict[str, str] = {}
        for item in param or []:
            key, sep, value = item.partition("=")
            if not sep:
                from db.queries import QueryParamError

                raise QueryParamError(f"--param needs key=value (got {item!r})")
            params[key.strip()] = value
        result = api.named_query(query, params, db=db, timeout_s=timeout)
    elif statement:
        result = api.query(statement, db=db, timeout_s=timeout)
    else:
        from campaign.errors import CampaignInputError

        raise CampaignInputError("give a SQL statement, --query NAME or --list")
    _print_rows(result, fmt)


def _print_rows(result: Any, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(result.as_dicts(), indent=2, default=str) + "\n")
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        from rich.table import Table

        cells = [[_cell(v) for v in row] for row in result.rows]
        longest = [max([len(col), *(len(r[k]) for r in cells)]) for k, col in enumerate(result.columns)]
        free = [n > _NO_WRAP_WIDTH for n in longest]  # free text: wrapped in what width the others leave
        needed = 1 + sum(3 + (_MIN_FREE_WIDTH if f else n) for f, n in zip(free, longest, strict=True))
        if needed > console.width:
            _print_records(result.columns, cells)
        else:
            table = Table(show_lines=False)
            for col, is_free in zip(result.columns, free, strict=True):
                if is_free:
                    table.add_column(col, overflow="fold", ratio=1)
                else:  # names, numbers, states: never wrapped
                    table.add_column(col, no_wrap=True)
            for row_cells in cells:
                table.add_row(*row_cells)
            console.print(table)
        console.print(f"{len(result.rows)} row(s)")
        if any(_is_task_id(v) for row in result.rows for v in row):
            console.print("(task ids shortened to 8 characters; --format csv or json shows them whole)")


#: A column whose values are all this short (names, numbers, states) is never wrapped.
_NO_WRAP_WIDTH = 24
#: The narrowest a free-text column may be before the table gives way to one record per row.
_MIN_FREE_WIDTH = 20


def _print_records(columns: list[str], cells: list[list[str]]) -> None:
    """One block per row, one ``column │ value`` line per column: what a table too wide for the terminal
    becomes (like psql's expanded display)."""
    from rich.table import Table

    for i, row_cells in enumerate(cells, start=1):
        console.rule(f"row {i}", align="left", style="dim")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold", ratio=1)
        for col, value in zip(columns, row_cells, strict=True):
            grid.add_row(col, "│", value)
        console.print(grid)


def _is_task_id(value: Any) -> bool:
    """A task id: 32 lower-case hex digits."""
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _cell(value: Any) -> str:
    """A value as a table shows it: floats to 5 significant digits, task ids to their first 8 characters (the
    machine-readable formats keep everything)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    if _is_task_id(value):
        return value[:8] + "…"
    return str(value)


@app.command()
@bad_input_exit
def lineage(node: Annotated[str, typer.Argument(
                help="A model id, or KIND:ID with KIND model, hit, dataset, trial, task or artifact.")],
            db: DbOpt = None,
            fmt: Annotated[str, typer.Option("--format", "-f", help="tree, table, csv or json.")] = "tree") -> None:
    """Everything upstream of a model or a hit, as a tree with names: the tasks that made it, the trials and
    models it came from, the datasets they trained on (level of theory, size, content hash), the raw files."""
    from campaign.errors import CampaignInputError
    from campaign.lineage import parse_node, render_tree, walk

    if fmt not in ("tree", "table", "csv", "json"):
        raise CampaignInputError(f"--format must be tree, table, csv or json (got {fmt!r})")
    lin = walk(parse_node(node), db=db)
    if fmt == "tree":
        console.print(render_tree(lin), highlight=False)
        return
    from db.readonly import QueryResult

    rows = lin.rows()
    columns = ["depth", "node_kind", "node_id", "node", "via", "from_kind", "from_id"]
    _print_rows(QueryResult(columns, [tuple(r[c] for c in columns) for r in rows]), fmt)


@app.command()
@bad_input_exit
def trials(campaign: Annotated[str | None, typer.Argument(help="Campaign name (default: all).")] = None,
           top: Annotated[int, typer.Option("--top", "-k", help="Trials per HPO campaign.")] = 5,
           db: DbOpt = None, fmt: Annotated[str, typer.Option("--format", "-f")] = "table") -> None:
    """The best trials of each HPO campaign."""
    from campaign import api
    from campaign.errors import CampaignInputError

    if campaign and not api.row_exists("campaigns", "name", campaign, db=db):
        raise CampaignInputError(f"no campaign named {campaign!r} in the campaign database")
    params = {"k": str(top)} | ({"campaign": campaign} if campaign else {})
    _print_rows(api.named_query("top_trials", params, db=db), fmt)


@app.command()
@bad_input_exit
def models(campaign: Annotated[str | None, typer.Argument(help="Campaign name (default: all).")] = None,
           db: DbOpt = None, fmt: Annotated[str, typer.Option("--format", "-f")] = "table") -> None:
    """Every model (promoted, trained, fine-tuned, from scratch) with its family, objective, checkpoint file and
    origin; `campaign lineage MODEL` shows all of where it came from."""
    from campaign import api
    from campaign.errors import CampaignInputError

    if campaign and not api.row_exists("campaigns", "name", campaign, db=db):
        raise CampaignInputError(f"no campaign named {campaign!r} in the campaign database")
    _print_rows(api.named_query("models", {"campaign": campaign} if campaign else {}, db=db), fmt)


@app.command()
@bad_input_exit
def export(model: Annotated[int, typer.Argument(help="Model id (see `campaign models`).")],
           out: Annotated[Path, typer.Option("--out", "-o", help="Directory to create (must not exist).")],
           db: DbOpt = None) -> None:
    """Export a model as a self-contained package: weights with head names, references and graph settings
    (model.pt), a manifest with every file's sha256 (model.json) and a model card (MODEL_CARD.md) written from
    the database. Loading it needs neither the database nor the recipe."""
    from campaign import api

    dest = api.export_model(model, out, db=db)
    console.print(f"exported model {model} to {dest} (model.pt, model.json, MODEL_CARD.md)", highlight=False,
                  soft_wrap=True)


@app.command()
@bad_input_exit
def status(
    campaign: Annotated[str | None, typer.Argument(help="Campaign name (default: the latest).")] = None,
    db: DbOpt = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh live until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.", min=0.2)] = 2.0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """Stages, tasks by state, best objective per HPO campaign, attempts in flight and failures by cause."""
    from campaign.errors import CampaignInputError
    from campaign.status import collect_status, render_status

    if fmt not in ("table", "json"):
        raise CampaignInputError(f"--format must be table or json (got {fmt!r})")
    if watch and fmt == "json":
        raise CampaignInputError("--watch shows a table; leave out --format json")
    snap = collect_status(db, campaign)  # bad input (unknown campaign, no database) fails here, once
    if fmt == "json":
        sys.stdout.write(json.dumps(snap.to_dict(), indent=2) + "\n")
    elif watch:
        from campaign.cli.live import watch as watch_live

        watch_live(console, lambda: render_status(collect_status(db, snap.campaign)), interval=interval)
    else:
        console.print(render_status(snap))


@app.command()
@bad_input_exit
def report(
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (index.html and its PNG figures).")],
    db: DbOpt = None,
) -> None:
    """Write a static HTML report with figures: HPO, hyperparameters, promotion, loss curves, parity,
    screening, fine-tuning and resources. Readable offline."""
    from campaign import api

    outcome = api.report(campaign, out, db=db)
    console.print(f"report: {outcome.index} ({len(outcome.images)} figures)", highlight=False, soft_wrap=True)
    if outcome.empty_sections:
        console.print(f"no data yet: {', '.join(outcome.empty_sections)}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------- sites
@sites_app.command("list")
def sites_list() -> None:
    """The sites this version knows, with their facts."""
    from rich.table import Table

    from campaign import api

    table = Table(title="sites")
    for col in ("name", "scheduler", "launcher", "GPUs/node", "description"):
        table.add_column(col)
    for f in api.list_sites():
        table.add_row(f.name, f.scheduler, f.launcher, str(f.gpus_per_node), f.description)
    console.print(table)


@sites_app.command("show")
@bad_input_exit
def sites_show(
    name: Annotated[str | None, typer.Argument(help="Site name (default: the recipe's).")] = None,
    recipe: Annotated[Path | None, typer.Option(help="Render the site as this recipe configures it.")] = None,
    profile: Annotated[str | None, typer.Option(help="With --recipe: apply this profile.")] = None,
    executor: Annotated[str, typer.Option(help="htex (single-node workers), mpi (multi-node apps) or all.")] = "all",
    nodes: Annotated[int | None, typer.Option(help="Nodes per batch job.")] = None,
    account: Annotated[str | None, typer.Option(help="Allocation to charge.")] = None,
    partition: Annotated[str | None, typer.Option(help="Partition or queue.")] = None,
    qos: Annotated[str | None, typer.Option(help="Quality of service.")] = None,
    walltime: Annotated[str | None, typer.Option(help="HH:MM:SS.")] = None,
    worker_init: Annotated[str | None, typer.Option(help="Shell run before workers start.")] = None,
) -> None:
    """Render the exact batch scripts Parsl would submit for a site, without submitting them: from a recipe and
    its profile (walltime, account, worker_init, nodes), or from the options given (which also override the
    recipe's)."""
    from campaign import api
    from campaign.errors import CampaignInputError

    if executor not in ("htex", "mpi", "all"):
        raise CampaignInputError(f"--executor must be htex, mpi or all (got {executor!r})")
    if recipe is None and name is None:
        raise CampaignInputError("give a site name or --recipe")
    if recipe is None and profile is not None:
        raise CampaignInputError("--profile needs --recipe")
    overrides: dict[str, Any] = {"nodes_per_block": nodes, "walltime": walltime, "worker_init": worker_init,
                                 "account": account, "partition": partition, "qos": qos}
    scripts = api.render_site_scripts(name, recipe=recipe, profile=profile,
                                      overrides={k: v for k, v in overrides.items() if v is not None},
                                      executors=None if executor == "all" else [executor])
    for label, script in scripts.items():
        if len(scripts) > 1:
            sys.stdout.write(f"# ---- executor {label} " + "-" * 60 + "\n")
        sys.stdout.write(script)


# ------------------------------------------------------------------------------------------------- db
@data_app.command("check")
def data_check(
    name: Annotated[str, typer.Argument(help="Dataset name from the registry (models/datasets.yaml).")],
    paths: Annotated[list[Path], typer.Argument(help="The downloaded files.")],
    sample: Annotated[int, typer.Option(help="Structures read per file (0: all of them).", min=0)] = 1000,
    reader: Annotated[str | None, typer.Option(help="Reader override (as a recipe's reader:).")] = None,
    option: Annotated[list[str] | None, typer.Option(
        help="A reader option KEY=VALUE (as a recipe's reader_options:), e.g. --option energy=total.")] = None,
) -> None:
    """Check downloaded files before a long preprocess: readable by the registry's reader, labels plausible in
    its units, and (when every structure was read) about as many as published; exit 2 naming the file and the
    problem otherwise."""
    from rich.table import Table

    from campaign.data_check import check_dataset

    options: dict[str, str] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            err_console.print(f"error: --option {item!r}: expected KEY=VALUE", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT)
        options[key.strip()] = value.strip()
    try:
        res = check_dataset(name, paths, sample=sample or None, reader=reader, reader_options=options)
    except KeyError as exc:
        err_console.print(f"error: {exc.args[0]}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    table = Table(title=f"dataset {name} ({res.reader or 'no reader'})", show_header=False)
    epa = res.energy_per_atom
    rows = [("files", ", ".join(res.files)),
            ("structures read", f"{res.structures:,}" + ("" if res.complete else f" (first {sample:,} per file)")),
            ("atoms", f"{res.atoms:,}"), ("elements", f"{len(res.elements)} ({', '.join(map(str, sorted(res.elements)[:20]))}"
                                             + ("…" if len(res.elements) > 20 else "") + ")"),
            ("energy per atom (eV)", f"{epa[0]:.4g} … {epa[1]:.4g}" if epa else "–"),
            ("largest force component (eV/Å)", f"{res.max_force:.4g}" if res.max_force is not None else "–"),
            ("with forces / stress", f"{res.with_forces:,} / {res.with_stress:,}"),
            ("median shortest H–X distance (Å)", f"{res.median_xh:.3f}" if res.median_xh is not None else "–"),
            ("published", f"{res.published.get('n_structures') or '?'} structures, "
                          f"{res.published.get('elements') or '?'} elements, {res.published.get('source_format')} "
                          f"at {res.published.get('url') or '–'}")]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    for problem in res.problems:
        err_console.print(f"error: {problem}", highlight=False, soft_wrap=True)
    if not res.ok:
        raise typer.Exit(EXIT_BAD_INPUT)
    console.print(f"[green]ok[/] {name}: {res.structures:,} structures look like {res.published.get('level_of_theory')}")


@db_app.command("upgrade")
@bad_input_exit
def db_upgrade(db: DbOpt = None) -> None:
    """Create or upgrade the campaign database schema to this version's head."""
    from campaign import api

    rev = api.upgrade_database(db)
    console.print(f"database at schema revision {rev}")


@db_app.command("current")
@bad_input_exit
def db_current(db: DbOpt = None) -> None:
    """Show the database's schema revision and this version's head."""
    from campaign import api

    cur, head = api.schema_revisions(db)
    console.print(f"current: {cur or 'empty'}  head: {head}")


@db_app.command("grant-reader")
@bad_input_exit
def db_grant_reader(
    role: Annotated[str, typer.Argument(help="Name of the reader role to create or update.")] = "campaign_reader",
    password_env: Annotated[str | None, typer.Option(
        "--password-env", help="Environment variable holding the role's password (never on the command line).")] = None,
    db: DbOpt = None,
) -> None:
    """(PostgreSQL) Create a login role that can only read the campaign tables, for `campaign sql` users. Run it
    with the owner's URL."""
    from campaign import api

    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            from campaign.errors import CampaignInputError

            raise CampaignInputError(f"--password-env {password_env}: the variable is unset or empty")
    tables = api.grant_reader(role, password=password, db=db)
    console.print(f"role {role!r} may read {len(tables)} campaign tables and nothing else; users connect as "
                  f"postgresql+psycopg://{role}@HOST/DB", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point: files are created owner-only unless ``CAMPAIGN_SHARING=group``."""
    from campaign.errors import CampaignInputError
    from campaign.sharing import apply_sharing

    try:
        apply_sharing()
    except CampaignInputError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_BAD_INPUT) from None
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
