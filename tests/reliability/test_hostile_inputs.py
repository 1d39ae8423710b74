"""A hostile user against a shared campaign database: inputs that would exhaust the machine, smuggle in
non-numbers, point the tool at the wrong file, leak a credential or reach past reading.

Every case asserts exit status 2, one message naming the file and the field or line, no traceback, and the
database and files left as they were (no database created by a command that only reads).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from campaign.cli.app import app
from tests.reliability.world import assert_refused, db_dump

runner = CliRunner()


# ------------------------------------------------------------------------------------ bounded recipes
def _alias_bomb(levels: int, width: int) -> str:
    lines = ["campaign: bomb", "x-0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"x-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


HPO = """campaign: t
datasets:
  - {{name: demo-emt, count: 8}}
stages:
  hpo:
    - name: p
      family: painn
      search_space:
        lr: {{type: float, low: {low}, high: {high}}}
      fixed: {fixed}
"""

#: (id, recipe text, fragments of the message; ``{path}`` is the recipe file).
BOUNDED: list[tuple[str, str, tuple[str, ...]]] = [
    ("alias-bomb-9x9", _alias_bomb(9, 9), ("{path}:", "expands to more than 200000 values")),
    ("alias-bomb-30x2", _alias_bomb(30, 2), ("{path}:", "expands to more than 200000 values")),
    ("alias-bomb-in-mapping", "campaign: t\na: &a {k1: x, k2: x, k3: x, k4: x, k5: x, k6: x, k7: x, k8: x}\n"
     + "".join(f"b{i}: &b{i} [" + ", ".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 10) + "]\n"
               for i in range(6)), ("{path}:", "expands to more than")),
    ("recursive-alias", "campaign: t\nloop: &l [*l]\n", ("{path}:2:", "refers to a node that contains it")),
    ("nested-flow-brackets", "campaign: t\nx: " + "[" * 5000 + "]" * 5000 + "\n", ("{path}:2:", "nested more than 64")),
    ("nested-block-mappings", "campaign: t\n" + "".join("  " * i + f"k{i}:\n" for i in range(80)) + "  " * 80 + "v\n",
     ("{path}:", "nested more than 64")),
    ("oversized", "campaign: t\n" + "# padding\n" * 120_000, ("{path}:", "bytes; the limit is 1048576")),
    ("inf-search-bound", HPO.format(low="0.0001", high=".inf", fixed="{}"), ("{path}:9:", "'.inf' is not a finite")),
    ("neg-inf-search-bound", HPO.format(low="-.inf", high="0.01", fixed="{}"), ("{path}:9:", "not a finite")),
    ("nan-search-bound", HPO.format(low=".nan", high="0.01", fixed="{}"), ("{path}:9:", "'.nan' is not a finite")),
    ("nan-fixed-lr", HPO.format(low="0.0001", high="0.01", fixed="{weight_decay: .NaN}"), ("{path}:10:", "not a finite")),
    ("overflow-string-bound", HPO.format(low="0.0001", high="'1e999'", fixed="{}"),
     ("{path}:9:", "stages.hpo[0].search_space.lr.high", "finite")),
    ("inf-string-cutoff", "campaign: t\nstages:\n  preprocess: {cutoff: 'inf'}\n",
     ("{path}:3:", "stages.preprocess.cutoff", "finite")),
    ("inf-dataset-weight", "campaign: t\ndatasets:\n  - {name: demo-emt, weight: .inf}\n", ("{path}:3:", "not a finite")),
    ("nan-split", "campaign: t\nstages:\n  preprocess: {split: [.nan, 0.5, 0.5]}\n", ("{path}:3:", "not a finite")),
    ("inf-max-force", "campaign: t\nstages:\n  preprocess: {max_force: .Inf}\n", ("{path}:3:", "not a finite")),
    ("inf-fixed-cutoff", HPO.format(low="0.0001", high="0.01", fixed="{cutoff: .inf}"), ("{path}:10:", "not a finite")),
]


@pytest.mark.parametrize(("case_id", "text", "fragments"), BOUNDED, ids=[c[0] for c in BOUNDED])
def test_recipe_beyond_bounds_is_refused(case_id: str, text: str, fragments: tuple[str, ...],
                                         world: tuple[Path, str]) -> None:
    root, url = world
    recipe = root / "bad.yaml"
    recipe.write_text(text)
    out = assert_refused(["run", str(recipe), "--db", url, "--quiet"], root, url)
    for frag in fragments:
        assert frag.format(path=recipe) in out, f"{frag!r} not in {out[:400]!r}"


# ------------------------------------------------------------------------- dataset files at validate
def _lmdb_like_text(p: Path) -> None:
    p.write_text("not an lmdb file at all, just text that is long enough to hold a header\n")


def _html(p: Path) -> None:
    p.write_text("<html><body>404 Not Found</body></html>\n")


#: (id, file name, how to make it (None: do not), recipe dataset line, fragments).
DATASET_FILES: list[tuple[str, str, Callable[[Path], None] | None, str, tuple[str, ...]]] = [
    ("missing-file", "nope.extxyz", None, "{{name: demo-emt, files: [{f}]}}", ("datasets[0]", "does not exist")),
    ("a-directory", "adir.extxyz", lambda p: p.mkdir(), "{{name: demo-emt, files: [{f}]}}",
     ("datasets[0]", "not a file")),
    ("empty-file", "empty.extxyz", lambda p: p.write_text(""), "{{name: demo-emt, files: [{f}]}}",
     ("datasets[0]", "the file is empty")),
    ("html-as-extxyz", "page.extxyz", _html, "{{name: demo-emt, files: [{f}]}}",
     ("datasets[0]", "not an (ext)xyz file")),
    ("html-as-hdf5", "ani.h5", _html, "{{name: ani1x, files: [{f}]}}", ("datasets[0]", "not an HDF5 file")),
    ("text-as-aselmdb", "omat.aselmdb", _lmdb_like_text, "{{name: omat24, files: [{f}]}}",
     ("datasets[0]", "not an LMDB file")),
    ("text-as-ase-db", "nabla.db", _html, "{{name: nabla2dft, files: [{f}]}}",
     ("datasets[0]", "not an ASE database")),
    ("unknown-reader", "x.extxyz", lambda p: p.write_text("1\n\nH 0 0 0\n"),
     "{{name: demo-emt, files: [{f}], reader: csv}}", ("datasets[0]", "'csv' is not a reader")),
    ("published-dataset-without-files", "", None, "{{name: omat24}}", ("datasets[0]", "list its files")),
]


@pytest.mark.parametrize(("case_id", "name", "make", "line", "fragments"), DATASET_FILES,
                         ids=[c[0] for c in DATASET_FILES])
def test_dataset_files_are_checked_at_validate(case_id: str, name: str, make: Callable[[Path], None] | None,
                                               line: str, fragments: tuple[str, ...],
                                               world: tuple[Path, str]) -> None:
    root, url = world
    data = root / "data"
    data.mkdir()
    target = data / name if name else data
    if make is not None:
        make(target)
    recipe = root / "r.yaml"
    recipe.write_text(f"campaign: files\ndatasets:\n  - {line.format(f=target)}\n")
    out = assert_refused(["validate", str(recipe)], root, url)
    assert f"{recipe}:3:" in out
    for frag in fragments:
        assert frag in out, f"{frag!r} not in {out!r}"


def test_real_files_of_each_format_pass_validate(world: tuple[Path, str]) -> None:
    """The sniffs accept what the readers read: an extxyz, an HDF5 file and an LMDB file."""
    h5py = pytest.importorskip("h5py")
    lmdb = pytest.importorskip("lmdb")
    root, _ = world
    (root / "a.extxyz").write_text("1\nProperties=species:S:1:pos:R:3 energy=-1.0\nH 0 0 0\n")
    with h5py.File(root / "a.h5", "w") as fh:
        fh.create_dataset("x", data=[1])
    env = lmdb.open(str(root / "a.aselmdb"), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    recipe = root / "r.yaml"
    recipe.write_text("campaign: ok\ndatasets:\n"
                      f"  - {{name: demo-emt, files: [{root / 'a.extxyz'}]}}\n"
                      f"  - {{name: ani1x, files: [{root / 'a.h5'}]}}\n"
                      f"  - {{name: omat24, files: [{root / 'a.aselmdb'}]}}\n")
    res = runner.invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 0, res.output
    assert struct.unpack_from("<I", (root / "a.aselmdb").read_bytes(), 16)[0] == 0xBEEFC0DE


def test_validate_elsewhere_skips_the_file_checks(world: tuple[Path, str]) -> None:
    root, _ = world
    recipe = root / "r.yaml"
    recipe.write_text("campaign: frontier\ndatasets:\n  - {name: omat24, files: [/lustre/omat24/train.aselmdb]}\n")
    assert runner.invoke(app, ["validate", str(recipe)]).exit_code == 2
    assert runner.invoke(app, ["validate", str(recipe), "--elsewhere"]).exit_code == 0


# ------------------------------------------------------------------ database locations and exit codes
READ_ONLY_COMMANDS: list[list[str]] = [
    ["status"], ["resume", "earlier"], ["sql", "SELECT 1"], ["trials"], ["lineage", "1"],
    ["report", "earlier", "--out", "rep"], ["hits", "earlier", "--out", "h.extxyz"], ["db", "current"],
]


@pytest.mark.parametrize("args", READ_ONLY_COMMANDS, ids=lambda a: a[0] + ("-" + a[1] if a[0] == "db" else ""))
def test_read_only_commands_never_create_a_database(args: list[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    out = assert_refused(args, tmp_path, None)
    assert "no campaign database" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["run", "r.yaml"], ["status"], ["sql", "SELECT 1"], ["db", "upgrade"],
                                  ["resume", "earlier"]], ids=lambda a: "-".join(a[:2]))
@pytest.mark.parametrize("value", ["::::", "postgres//nobody", "my campaign"])
def test_db_value_that_is_neither_url_nor_file_is_refused(args: list[str], value: str,
                                                          world: tuple[Path, str]) -> None:
    root, url = world
    (root / "r.yaml").write_text("campaign: x\n")
    out = assert_refused([*args, "--db", value], root, url)
    assert f"database {value!r} is neither a URL nor an existing file" in out


@pytest.mark.parametrize("args", [["run", "r.yaml", "--quiet"], ["status"], ["sql", "SELECT 1"], ["resume", "x"],
                                  ["report", "x", "--out", "rep"], ["db", "upgrade"], ["db", "current"],
                                  ["trials"]], ids=lambda a: "-".join(a[:2]))
def test_a_file_that_is_not_sqlite_is_refused_by_name(args: list[str], world: tuple[Path, str]) -> None:
    root, url = world
    (root / "r.yaml").write_text("campaign: x\n")
    fake = root / "notes.db"
    fake.write_text("these are my notes, not a database\n" * 10)
    out = assert_refused([*args, "--db", str(fake)], root, url)
    assert f"{fake} is not a SQLite database" in out
    assert fake.read_text().startswith("these are my notes")


@pytest.mark.parametrize(("args", "words"), [
    (["lineage", "999"], "no model with id 999"),
    (["trials", "nope"], "no campaign named 'nope'"),
    (["status", "nope"], "nope"),
    (["resume", "nope"], "no campaign named 'nope'"),
    (["report", "nope", "--out", "rep"], "nope"),
    (["hits", "nope", "--out", "h.extxyz"], "nope"),
])
def test_unknown_ids_and_campaigns_exit_2(args: list[str], words: str, world: tuple[Path, str]) -> None:
    root, url = world
    out = assert_refused([*args, "--db", url], root, url)
    assert words in out


def test_sqlite_statement_time_limit(world: tuple[Path, str]) -> None:
    root, url = world
    forever = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    out = assert_refused(["sql", "--db", url, "--timeout", "0.5", forever], root, url)
    assert "ran past its time limit of 0.5 s" in out


def test_sqlite_time_limit_from_the_environment(world: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = world
    monkeypatch.setenv("CAMPAIGN_SQL_TIMEOUT_S", "0.3")
    forever = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT max(n) FROM r"
    assert "time limit of 0.3 s" in assert_refused(["sql", "--db", url, forever], root, url)
    monkeypatch.setenv("CAMPAIGN_SQL_TIMEOUT_S", "inf")
    assert "CAMPAIGN_SQL_TIMEOUT_S" in assert_refused(["sql", "--db", url, "SELECT 1"], root, url)


# --------------------------------------------------------------------------------- secrets and files
SECRET = "Hunter2-s3cr3t"
URL_WITH = f"postgresql+psycopg://alice:{SECRET}@db.example.org/campaigns"

SPELLINGS = {
    "plain": f"campaign: s\ndatabase: {URL_WITH}\n",
    "flow": f'{{campaign: s, database: "{URL_WITH}"}}\n',
    "double-quoted-key": f'campaign: s\n"database": "{URL_WITH}"\n',
    "single-quoted-key": f"campaign: s\n'database': '{URL_WITH}'\n",
    "escaped": "campaign: s\ndatabase: \"" + URL_WITH.replace("s3cr3t", "\\x733cr3t") + "\"\n",
    "folded": f"campaign: s\ndatabase: >-\n  {URL_WITH}\n",
    "in-profile": f"campaign: s\nprofiles:\n  prod: {{database: '{URL_WITH}'}}\n",
    "anchor-reused": f"campaign: s\nprofiles:\n  a: {{database: &u '{URL_WITH}'}}\n  b: {{database: *u}}\n",
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_no_spelling_of_a_database_password_is_stored(spelling: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SPELLINGS[spelling])
    url = f"sqlite:///{tmp_path / 'c.db'}"
    res = runner.invoke(app, ["run", str(recipe), "--db", url, "--quiet"])
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output
    stored = "\n".join(db_dump(url))
    assert SECRET not in stored and "733cr3t" not in stored
    assert "***" in stored
    # the stored recipe still resumes
    assert runner.invoke(app, ["resume", "s", "--db", url, "--quiet"]).exit_code == 0


def test_files_are_owner_only_by_default(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CAMPAIGN_DB", "CAMPAIGN_SHARING")}
    exe = [sys.executable, "-c", "from campaign.cli.app import main; main()"]
    for sharing, mode in ((None, 0o600), ("group", 0o640)):
        db = tmp_path / f"{sharing or 'owner'}.db"
        run_env = env | ({"CAMPAIGN_SHARING": sharing} if sharing else {})
        proc = subprocess.run([*exe, "db", "upgrade", "--db", str(db)], env=run_env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert stat.S_IMODE(db.stat().st_mode) == mode
    proc = subprocess.run([*exe, "status"], env=env | {"CAMPAIGN_SHARING": "world"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "CAMPAIGN_SHARING='world'" in proc.stderr


@pytest.mark.postgres
@pytest.mark.parametrize(("case_id", "text", "fragments"), BOUNDED, ids=[c[0] for c in BOUNDED])
def test_recipe_beyond_bounds_leaves_postgres_untouched(case_id: str, text: str, fragments: tuple[str, ...],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same refusals with a PostgreSQL campaign database: nothing reaches it."""
    from sqlalchemy import text as sql

    from db.engine import make_engine
    from db.migrate import ensure_schema
    from tests.conftest import _pg_database

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    gen = _pg_database()
    url = next(gen)
    try:
        engine = make_engine(url)
        ensure_schema(engine)

        def rows() -> list[tuple[object, ...]]:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sql(
                    "SELECT (SELECT count(*) FROM campaigns), (SELECT count(*) FROM tasks), "
                    "(SELECT count(*) FROM stages)"))]

        before = rows()
        recipe = tmp_path / "bad.yaml"
        recipe.write_text(text)
        out = assert_refused(["run", str(recipe), "--db", url, "--quiet"], tmp_path, None)
        for frag in fragments:
            assert frag.format(path=recipe) in out
        assert rows() == before
        engine.dispose()
    finally:
        gen.close()


def test_a_stage_that_refuses_its_input_fails_the_campaign_instead_of_leaving_it_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input found by a stage at run time (a model id that does not exist): exit 2, and the campaign and
    the stage are recorded failed with the reason, never left 'running'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("campaign: ghost\nstages:\n  screen: {model: 4242}\n")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    res = runner.invoke(app, ["run", str(recipe), "--db", url, "--quiet"])
    assert res.exit_code == 2 and "model 4242 is not in the database" in res.output
    assert "Traceback" not in res.output
    status = runner.invoke(app, ["status", "ghost", "--db", url, "--format", "json"])
    import json

    snap = json.loads(status.stdout)
    assert snap["status"] == "failed"
    (stage,) = [s for s in snap["stages"] if s["kind"] == "screen"]
    assert stage["status"] == "failed" and "model 4242 is not in the database" in (stage.get("failure") or "")
