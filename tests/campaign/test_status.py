"""campaign status: stages and tasks by state, best objective per HPO campaign, attempts in flight with host and
elapsed time, failures by cause; one campaign among several; JSON output; --watch; bad input."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from campaign.cli.app import app
from campaign.cli.live import watch
from campaign.status import UnknownCampaign, collect_status, format_duration, render_status
from tests.report.campaign_fixture import NOW, T0, build_campaign

runner = CliRunner()


@pytest.fixture
def two(engine: object, db_url: str, tmp_path: Path) -> tuple[str, dict, dict]:
    """A campaign still in its HPO stage (created first) and a finished one (the latest)."""
    hpo = build_campaign(engine, tmp_path, name="hpo-only", stages=("preprocess", "hpo"))  # type: ignore[arg-type]
    full = build_campaign(engine, tmp_path, name="demo-hpo")  # type: ignore[arg-type]
    return db_url, hpo, full


def test_snapshot_of_a_campaign_in_its_hpo_stage(two: tuple[str, dict, dict]) -> None:
    url, facts, _ = two
    snap = collect_status(url, "hpo-only", now=NOW)
    assert [(s.name, s.status) for s in snap.stages] == [("preprocess", "done"), ("hpo", "running")]
    assert snap.stages[0].tasks == {"DONE": 3}
    # 36 trials: 1 failed (painn #2), 2 in flight (mace #5, pna #5), the rest done; nothing of the other campaign
    assert snap.stages[1].tasks == {"DONE": 33, "FAILED": 1, "RUNNING": 2}
    best = {h.hpo: h.best_objective for h in snap.hpo}
    assert best == pytest.approx(facts["best_objective"])
    painn = next(h for h in snap.hpo if h.hpo == "painn")
    assert (painn.trials, painn.done, painn.pruned, painn.failed, painn.in_flight) == (6, 4, 1, 1, 0)
    assert painn.best_config is not None and set(painn.best_config) == {"hidden", "layers", "lr", "cutoff"}
    assert {h.hpo: h.in_flight for h in snap.hpo if h.in_flight} == {"mace": 1, "pna": 1}
    assert snap.running_total == 2 and {r.key for r in snap.running} == {"hpo/mace/5", "hpo/pna/5"}
    for r in snap.running:  # submitted, not started: elapsed counts from the submission
        assert r.attempt == 2 and r.site == "local" and r.host is None
        assert r.elapsed_s == pytest.approx((NOW - r.since).total_seconds()) and r.since > T0
    causes = {f.cause: (f.attempts, f.tasks) for f in snap.failures}
    assert causes == {"error": (3, 1), "node_lost": (6, 6), "walltime": (2, 2)}
    assert next(f for f in snap.failures if f.cause == "error").last_error.endswith("error in hpo/painn/2")


def test_default_is_the_latest_campaign_and_json(two: tuple[str, dict, dict]) -> None:
    url, _, full = two
    res = runner.invoke(app, ["status", "--db", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    snap = json.loads(res.stdout)
    assert snap["campaign"] == "demo-hpo" and [s["name"] for s in snap["stages"]] == [
        "preprocess", "hpo", "promote", "scaling", "train", "screen", "finetune", "active"]
    assert snap["tasks"]["SUBMITTED"] == 1 and snap["running_total"] == full["in_flight"]
    assert snap["running"][0]["site"] == "frontier" and snap["failures"]["walltime"] == 2  # the train chunks
    assert snap["failures_detail"][0]["cause"] == "node_lost"


def test_table_output_names_everything(two: tuple[str, dict, dict]) -> None:
    url, _, _ = two
    res = runner.invoke(app, ["status", "hpo-only", "--db", url], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    for text in ("campaign hpo-only running", "stages (tasks by state)", "HPO campaigns", "dimenet++",
                 "attempts in flight (2)", "hpo/mace/5", "failed attempts by cause", "node_lost",
                 "RuntimeError: error in hpo/painn/2"):
        assert text in res.output, text


def test_bad_input(two: tuple[str, dict, dict], tmp_path: Path) -> None:
    url, _, _ = two
    res = runner.invoke(app, ["status", "nope", "--db", url])
    assert res.exit_code == 2 and "no campaign named 'nope'; known: demo-hpo, hpo-only" in res.output
    res = runner.invoke(app, ["status", "--db", f"sqlite:///{tmp_path / 'absent.db'}"])
    assert res.exit_code == 2 and "no campaign database" in res.output and not (tmp_path / "absent.db").exists()
    res = runner.invoke(app, ["status", "--db", url, "--watch", "--format", "json"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_empty_database(engine: object, db_url: str) -> None:
    with pytest.raises(UnknownCampaign, match="holds no campaign yet"):
        collect_status(db_url)


def test_watch_refreshes_with_new_data(two: tuple[str, dict, dict]) -> None:
    url, _, _ = two
    snaps = []

    def render() -> object:
        snaps.append(collect_status(url, "hpo-only", now=NOW + timedelta(seconds=len(snaps))))
        return render_status(snaps[-1])

    console = Console(record=True, width=160, force_terminal=True)
    assert watch(console, render, interval=0.01, max_updates=3, sleep=lambda _s: None) == 3
    assert len(snaps) == 3 and snaps[2].running[0].elapsed_s == snaps[0].running[0].elapsed_s + 2
    assert "hpo/mace/5" in console.export_text()


def test_format_duration() -> None:
    assert [format_duration(s) for s in (4, 65, 3725, 90061)] == ["4s", "1m05s", "1h02m05s", "1d01h01m"]


def test_status_and_report_import_neither_torch_nor_parsl(two: tuple[str, dict, dict], tmp_path: Path) -> None:
    import subprocess
    import sys

    url, _, _ = two
    code = ("import sys\nfrom campaign.cli.app import app\n"
            f"for args in (['status', '--db', {url!r}], ['report', 'demo-hpo', '--out', {str(tmp_path / 'r')!r}, "
            f"'--db', {url!r}]):\n    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'parsl', 'deephyper') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "HEAVY=\n" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]
    assert (tmp_path / "r" / "index.html").exists()


def test_queued_until_the_worker_records_its_start_then_running_with_epoch_and_loss(
        two: tuple[str, dict, dict], engine: object, tmp_path: Path) -> None:
    """An attempt in flight is queued until its worker writes the start record (``attempt<N>.proc.json``, the
    file the worker writes before launching the app); then it runs since the time in that record, and a
    training attempt shows its epoch and validation loss from the ``metrics.jsonl`` the training loop writes."""
    from sqlalchemy import update

    from campaign.attempt_files import process_file
    from db import models as m
    from models.atomic_files import write_json_atomic
    from models.training.metrics import MetricsWriter

    url, _, _ = two
    workdir, out = tmp_path / "hpo" / "mace" / "trial-0005", tmp_path / "hpo" / "mace" / "trial-0005" / "run"
    spec = {"app": "models.train", "workdir": str(workdir), "config": {"epochs": 8, "output_dir": str(out)}}
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(update(m.Task).where(m.Task.key == "hpo/mace/5").values(spec=spec))

    before = {r.key: r for r in collect_status(url, "hpo-only", now=NOW).running}
    assert before["hpo/mace/5"].phase == "queued" and before["hpo/mace/5"].progress is None

    started = NOW - timedelta(minutes=3)
    workdir.mkdir(parents=True)
    write_json_atomic(process_file(workdir, 2), {"host": "nid00042", "pid": 4242, "worker_pid": 4200,
                                                "started_at": started.isoformat(), "attempt": 2})
    writer = MetricsWriter(out / "metrics.jsonl")
    for epoch, val in enumerate((3.0, 2.0, 1.25)):
        writer.write(epoch, "train", {None: {"loss": val + 1}})
        writer.write(epoch, "val", {None: {"loss": val}, 0: {"loss": val, "force_mae": 0.1}})
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 3, "split": "tr')  # the run is writing its next line

    snap = collect_status(url, "hpo-only", now=NOW)
    mace = next(r for r in snap.running if r.key == "hpo/mace/5")
    assert (mace.phase, mace.host, mace.since, mace.elapsed_s) == ("running", "nid00042", started, 180.0)
    assert mace.progress is not None and (mace.progress.epoch, mace.progress.epochs) == (2, 8)
    assert mace.progress.val_loss == pytest.approx(1.25)
    assert next(r for r in snap.running if r.key == "hpo/pna/5").phase == "queued"  # its spec names no workdir
    text = render_to_text(render_status(snap))
    assert "epoch 3/8, val loss 1.25" in text and "running" in text and "queued" in text


def render_to_text(renderable: object) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_watch_into_a_pipe_prints_every_snapshot(two: tuple[str, dict, dict]) -> None:
    """Not on a terminal (``status --watch > file``): each refresh is printed in full, not redrawn in place."""
    import io

    url, _, _ = two
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=False)
    assert not console.is_terminal
    n = watch(console, lambda: render_status(collect_status(url, "hpo-only", now=NOW)), interval=0.01,
              max_updates=3, sleep=lambda _s: None)
    assert n == 3 and buf.getvalue().count("campaign hpo-only running") == 3
    assert "\x1b[" not in buf.getvalue()  # plain text


def test_run_progress_as_plain_lines_when_not_on_a_terminal() -> None:
    """`campaign run > log`: one line per stage when its counts change, at most every PLAIN_EVERY_S seconds,
    and always the line of a stage that has finished."""
    import io

    from campaign.cli.live import PLAIN_EVERY_S, LiveDisplay
    from campaign.steer import StageProgress

    buf, now = io.StringIO(), [0.0]
    console = Console(file=buf, width=160, force_terminal=False)
    with LiveDisplay(console, clock=lambda: now[0]) as live:
        live.update(StageProgress("hpo", done=0, running=2, ready=4))
        now[0] += 1
        live.update(StageProgress("hpo", done=1, running=2, ready=3))  # too soon: not printed
        now[0] += PLAIN_EVERY_S
        live.update(StageProgress("hpo", done=1, running=2, ready=3))
        live.update(StageProgress("hpo", done=1, running=2, ready=3))  # unchanged: not printed
        live.update(StageProgress("hpo", done=6, failed=0, extra={"best": 23.5912}))  # finished: printed at once
    lines = buf.getvalue().splitlines()
    assert [ln.split(" ", 1)[1] for ln in lines] == [
        "hpo: 0 done, 2 in flight, 4 ready, 0 failed", "hpo: 1 done, 2 in flight, 3 ready, 0 failed",
        "hpo: 6 done, 0 in flight, 0 ready, 0 failed, best 23.59"]


def test_a_stage_s_warnings_are_shown(two: tuple[str, dict, dict], engine: object) -> None:
    """What a done stage found wrong (a fine-tune worse than its baseline) reaches `campaign status`."""
    from sqlalchemy import update

    from db import models as m

    url, _, _ = two
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(update(m.Stage).where(m.Stage.name == "finetune").values(config={"warnings": {
            "water": "fine-tuned model 9 is 3.5x worse than its from-scratch baseline 10"}}))
    snap = collect_status(url, "demo-hpo", now=NOW)
    assert next(s for s in snap.stages if s.name == "finetune").warnings == {
        "water": "fine-tuned model 9 is 3.5x worse than its from-scratch baseline 10"}
    assert "stage finetune warns (water): fine-tuned model 9 is 3.5x worse" in render_to_text(render_status(snap))
