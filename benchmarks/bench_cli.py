"""Start-up-to-answer time of the read-only commands, each in a fresh process, against the pandas one-liner a
user would otherwise type for the same answer.

The database is the main job's (``--db PATH``: run ``campaign run recipes/hpo.yaml`` first) or, by default, a
generated campaign of the same shape (the test suite's report fixture: six HPO studies of six trials, promoted
and trained models, screening hits, fine-tuning, a few hundred attempts). Each command runs ``--repeats``
times as ``campaign ...`` (the installed console script); the median is kept.

* ours — ``campaign status``, ``trials``, ``lineage 1``, ``models``, ``sql "<statement>"``, ``validate``,
  ``sites show`` (which renders the script with Parsl's own provider classes, and importing Parsl alone takes
  over a second: it is reported, not held to the budget's peer comparison).
* peer — ``python -c "import sqlite3, pandas; print(pandas.read_sql_query(<the same question>, con))"``: the
  question each command answers, asked with pandas (a notebook user's way). ``validate`` and ``sites show``
  have no such peer.

The target of the read-only commands is 0.5 s each (``budget_s``). Last line: one JSON object, ``ratio =
peer / ours`` over the commands that have a peer (> 1: ours answers sooner).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGET_S = 0.5
STATUS_SQL = ("SELECT s.name, t.state, COUNT(*) FROM stages s JOIN tasks t ON t.stage_id = s.id "
              "GROUP BY s.name, t.state")
TRIALS_SQL = ("SELECT hpo, number, objective FROM (SELECT hpo, number, objective, ROW_NUMBER() OVER "
              "(PARTITION BY hpo ORDER BY objective) AS r FROM trials WHERE objective IS NOT NULL) WHERE r <= 5")
LINEAGE_SQL = ((ROOT / "db" / "queries" / "model_lineage.sql").read_text().split("\n", 4)[4]
               .replace(":model", "'1'").replace(":kind", "'model'"))
MODELS_SQL = "SELECT id, name, role, family, metrics FROM models"
SQL = "SELECT kind, state, COUNT(*) FROM tasks GROUP BY 1, 2"


def make_database(path: Path) -> None:
    from db.engine import make_engine
    from db.migrate import ensure_schema
    from tests.report.campaign_fixture import build_campaign

    engine = make_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    build_campaign(engine, path.parent)
    engine.dispose()


def timed(argv: list[str], cwd: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={"PATH": str(Path(sys.executable).parent)
                                                                                + ":/usr/bin:/bin", "COLUMNS": "120"})
        times.append(time.perf_counter() - t)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {out.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, help="A campaign database (default: a generated one).")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    exe = shutil.which("campaign", path=str(Path(sys.executable).parent))
    if exe is None:
        raise SystemExit("no `campaign` console script next to this interpreter: pip install -e . first")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        db = cwd / "campaign.db"
        if args.db is not None:
            shutil.copy(args.db, db)
        else:
            make_database(db)
        model = subprocess.run([exe, "sql", "--format", "csv", "SELECT MIN(id) FROM models"], cwd=cwd,
                               capture_output=True, text=True).stdout.splitlines()[1]
        commands = {
            "status": ([exe, "status"], STATUS_SQL),
            "trials": ([exe, "trials"], TRIALS_SQL),
            "lineage": ([exe, "lineage", model], LINEAGE_SQL.replace("'1'", f"'{model}'")),
            "models": ([exe, "models"], MODELS_SQL),
            "sql": ([exe, "sql", SQL], SQL),
            "validate": ([exe, "validate", str(ROOT / "recipes" / "hpo.yaml"), "--elsewhere"], None),
            "sites show": ([exe, "sites", "show", "frontier", "--account", "CHM136", "--executor", "htex"], None),
        }
        rows = {}
        for name, (argv, question) in commands.items():
            ours = timed(argv, cwd, args.repeats)
            peer = None
            if question is not None:
                code = ("import sqlite3, pandas; con = sqlite3.connect('campaign.db'); "
                        f"print(pandas.read_sql_query({question!r}, con))")
                peer = timed([sys.executable, "-c", code], cwd, args.repeats)
            rows[name] = {"ours_s": round(ours, 3), "peer_s": None if peer is None else round(peer, 3),
                          "within_budget": ours <= BUDGET_S}
            print(f"{name:10s} ours {ours:.3f} s  peer {'–' if peer is None else f'{peer:.3f} s'}"
                  f"{'' if ours <= BUDGET_S else '  OVER BUDGET'}", file=sys.stderr)
    paired = [r for r in rows.values() if r["peer_s"] is not None]
    ours_mean = statistics.mean(r["ours_s"] for r in paired)
    peer_mean = statistics.mean(r["peer_s"] for r in paired)
    print(json.dumps({"benchmark": "cli_read_commands", "ours": round(ours_mean, 3), "peer": round(peer_mean, 3),
                      "unit": "s (mean over status, trials, lineage, models, sql)",
                      "ratio": round(peer_mean / ours_mean, 2), "budget_s": BUDGET_S, "commands": rows,
                      "peer_is": "python -c 'import sqlite3, pandas; pandas.read_sql_query(same question)'"}))


if __name__ == "__main__":
    main()
