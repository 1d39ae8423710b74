"""An existing campaign world (a database with a campaign in it, and earlier outputs on disk) and snapshots of
it, so that a refused command can be shown to have changed nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from campaign.dispatch.failures import RetryPolicy
from campaign.ledger import Ledger
from campaign.tasks import ExitCause, TaskResult, TaskSpec, utcnow
from db.engine import make_engine
from db.migrate import ensure_schema


def make_world(root: Path) -> str:
    """A SQLite campaign database under ``root`` holding one finished campaign, and an earlier output tree
    ``root/runs/earlier/``. Returns the database URL."""
    url = f"sqlite:///{root / 'campaign.db'}"
    engine = make_engine(url)
    ensure_schema(engine)
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="earlier", recipe_text="campaign: earlier\n", recipe_hash="e" * 64, site="local").id
    sid = ledger.stage(cid, "preprocess", "preprocess").id
    out = root / "runs" / "earlier"
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"status": "ok"}\n')
    (out / "store.bin").write_bytes(bytes(range(256)) * 8)
    task = ledger.create_task(cid, sid, "generate/x/000", TaskSpec(kind="generate", app="models.demo",
                                                                      workdir=str(out)))
    n = ledger.begin_attempt(task.id, site="local")
    ledger.record_attempt(TaskResult(task_id=task.id, attempt=n, exit_cause=ExitCause.OK, result={"a": 1},
                                     started_at=utcnow(), ended_at=utcnow()), policy=RetryPolicy(0, 0))
    ledger.add_artifact(out / "store.bin", "graph-store", task_id=task.id)
    ledger.finish_stage(sid, "done")
    ledger.finish_campaign(cid, "done")
    engine.dispose()
    return url


def db_dump(url: str) -> list[str]:
    """Every row of a SQLite campaign database as SQL text (its logical content, not its bytes)."""
    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def tree(root: Path, skip: tuple[str, ...] = ("campaign.db-wal", "campaign.db-shm")) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (directories as ``<dir>``)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name in skip or "__pycache__" in rel:
            continue
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_refused(args: list[str], root: Path, url: str | None) -> str:
    """Run the CLI in-process and check a refusal: exit 2, one ``error:`` message, no traceback, and the database
    (when ``url`` is given) and every file under ``root`` unchanged. Returns the output on one line."""
    from typer.testing import CliRunner

    from campaign.cli.app import app

    before_db, before_files = (db_dump(url) if url else None), tree(root)
    res = CliRunner().invoke(app, args)
    out = res.output.replace("\n", "")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert out.count("error:") == 1, res.output
    if url:
        assert db_dump(url) == before_db, "the database changed"
    assert tree(root) == before_files, "files changed"
    return out
