"""Shared fixtures: a fresh campaign database on SQLite (default) and on the local PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("CAMPAIGN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[1]


def _pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    name = f"campaign_test_{uuid.uuid4().hex[:10]}"
    kw = {"host": admin.host, "port": admin.port or 5432, "user": admin.username, "dbname": admin.database,
          "autocommit": True, "connect_timeout": 5}
    if admin.password:
        kw["password"] = admin.password
    with psycopg.connect(**kw) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**kw) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL on each backend (PostgreSQL runs with ``-m postgres``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'campaign.db'}"
    else:
        yield from _pg_database()


@pytest.fixture
def engine(db_url: str) -> Iterator[object]:
    """A migrated read-write engine on ``db_url``."""
    from db.engine import make_engine
    from db.migrate import ensure_schema

    eng = make_engine(db_url)
    ensure_schema(eng)
    yield eng
    eng.dispose()


def _postgres_up() -> bool:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(PG_ADMIN_URL)
        psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database,
                        connect_timeout=3).close()
        return True
    except Exception:
        return False


def _slurm_up() -> bool:
    import shutil
    import subprocess

    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in out.stdout.split())


def _mpi_up() -> bool:
    import shutil

    return shutil.which("mpiexec") is not None


def _cuda_up() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


_SERVICES = {
    "postgres": (_postgres_up, "CAMPAIGN_REQUIRE_POSTGRES", "PostgreSQL is not reachable on 127.0.0.1:5432"),
    "slurm": (_slurm_up, "CAMPAIGN_REQUIRE_SLURM", "no running Slurm (bash .ci/slurm.sh start)"),
    "mpi": (_mpi_up, "CAMPAIGN_REQUIRE_MPI", "no mpiexec (apt-get install openmpi-bin)"),
    "gpu": (_cuda_up, None, "no CUDA device"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests whose service is absent, with the reason; in CI (the REQUIRE variables) they run and fail."""
    status: dict[str, bool] = {}
    for item in items:
        for marker, (probe, require_var, reason) in _SERVICES.items():
            if item.get_closest_marker(marker) is None:
                continue
            if require_var and os.environ.get(require_var) == "1":
                continue
            if marker not in status:
                status[marker] = probe()
            if not status[marker]:
                item.add_marker(pytest.mark.skip(reason=reason))
