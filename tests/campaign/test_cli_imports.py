"""The read-only commands import only what they use, so that they answer in a fraction of a second.

Start-up dominates these commands: on the main job's database the query itself takes milliseconds, while
importing SQLAlchemy costs about 0.15 s, the recipe schemas 0.15 s, pandas or matplotlib 0.4 s and Parsl over a
second. Each command runs in a fresh interpreter against a generated campaign database; the modules it loaded
are checked against what it may not need. (The times themselves are measured by ``benchmarks/bench_cli.py``.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report.campaign_fixture import build_campaign

ROOT = Path(__file__).resolve().parents[2]
#: Never needed to read a campaign: the modules of running one, of reports and of notebooks.
HEAVY = ("torch", "parsl", "deephyper", "matplotlib", "pandas", "numpy", "scipy", "ase", "globus_compute_sdk")
#: Not needed to read a SQLite database, nor to print a table.
DB_READ_EXTRA = ("sqlalchemy", "campaign.recipe", "models.contracts", "sites", "yaml", "campaign.runner")

_PROBE = """
import json, sys
from campaign.cli.app import main
sys.argv = ["campaign", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("\\nMODULES=" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded_modules(args: list[str], cwd: Path) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True,
                         cwd=cwd, timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "120",
                                                    "PYTHONPATH": str(ROOT)})
    line = out.stdout.rsplit("MODULES=", 1)
    assert len(line) == 2, out.stdout[-2000:] + out.stderr[-2000:]
    probe = json.loads(line[1])
    assert probe["code"] in (0, None), out.stdout[-2000:] + out.stderr[-2000:]
    return set(probe["modules"])


def _top(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules)


@pytest.fixture(scope="module")
def campaign_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    from db.engine import make_engine
    from db.migrate import ensure_schema

    tmp = tmp_path_factory.mktemp("cli-imports")
    url = f"sqlite:///{tmp / 'campaign.db'}"
    engine = make_engine(url)
    ensure_schema(engine)
    build_campaign(engine, tmp)
    engine.dispose()
    return url


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--format", "json"], ["trials"], ["lineage", "1"],
    ["sql", "SELECT kind, state, COUNT(*) FROM tasks GROUP BY 1, 2"], ["sql", "--list"],
    ["sql", "--query", "failed_attempts"],
], ids=lambda a: " ".join(a))
def test_reading_a_campaign_imports_neither_sqlalchemy_nor_the_recipe(campaign_db: str, args: list[str],
                                                                      tmp_path: Path) -> None:
    mods = loaded_modules([*args, "--db", campaign_db], tmp_path)
    assert _top(mods, (*HEAVY, *DB_READ_EXTRA)) == []


def test_validate_imports_the_recipe_but_nothing_that_runs_it(tmp_path: Path) -> None:
    mods = loaded_modules(["validate", str(ROOT / "recipes" / "hpo.yaml"), "--elsewhere"], tmp_path)
    assert "campaign.recipe" in mods  # the probe really ran the command
    assert _top(mods, (*HEAVY, "sqlalchemy", "campaign.runner")) == []


def test_the_probe_sees_a_heavy_import(campaign_db: str, tmp_path: Path) -> None:
    """The check above can fail: a command that does import SQLAlchemy is seen doing so."""
    mods = loaded_modules(["db", "current", "--db", campaign_db], tmp_path)
    assert "sqlalchemy" in mods
