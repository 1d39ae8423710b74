"""Credentials (the Globus Compute client secret, database passwords) never reach the database, the logs, the
task directories or what the CLI prints: every byte of each is searched for them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL
from tests.reliability.driver_kill import CAMPAIGN_EXE

SECRET = "s3cr3t-GLOBUS-ab12cd34"
PASSWORD = "pw-SENTINEL-9f8e7d"


def _leaks(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` holding any of ``needles``."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {n}" for n in needles if n.encode() in data]
    return hits


def _pg_dump_text(url: str) -> str:
    from db.readonly import run_readonly

    out = []
    for table in ("campaigns", "stages", "tasks", "attempts", "artifacts", "datasets", "lineage"):
        out += [repr(r) for r in run_readonly(f"SELECT * FROM {table}", url=url).rows]
    return "\n".join(out)


@pytest.mark.postgres
def test_database_password_and_globus_secret_never_recorded(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from tests.conftest import _pg_database

    gen = _pg_database()
    url = next(gen)
    try:
        # the same server, with a password in the URL (the test server trusts local connections, so any
        # password is accepted: what matters is where it ends up)
        with_pw = make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"campaign: creds\ndatabase: {with_pw}\n")
        env = {**os.environ, "GLOBUS_COMPUTE_CLIENT_ID": "0000-client", "GLOBUS_COMPUTE_CLIENT_SECRET": SECRET,
               "CAMPAIGN_DB": ""}
        proc = subprocess.run([CAMPAIGN_EXE, "run", str(recipe), "--quiet"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        printed = proc.stdout + proc.stderr
        assert PASSWORD not in printed, "the CLI printed the database password"
        dump = _pg_dump_text(url)
        assert SECRET not in dump
        assert PASSWORD not in dump, "the database holds the database password (recipe_text)"
        assert _leaks(tmp_path / "runs", [SECRET, PASSWORD]) == []
    finally:
        gen.close()
    assert PG_ADMIN_URL


@pytest.mark.slow
def test_globus_secret_not_in_db_logs_or_task_files(tiny_recipe: Path, tmp_path: Path) -> None:
    """A real campaign run with Globus credentials in the environment: the secret is in no file it writes."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {**os.environ, "GLOBUS_COMPUTE_CLIENT_ID": "0000-client", "GLOBUS_COMPUTE_CLIENT_SECRET": SECRET,
           "CAMPAIGN_DB": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([CAMPAIGN_EXE, "run", str(tiny_recipe), "--db", url, "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    import sqlite3

    conn = sqlite3.connect(tmp_path / "c.db")
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert SECRET not in dump
    assert _leaks(tmp_path, [SECRET]) == []
