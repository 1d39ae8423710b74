"""campaign report: every section from a realistic database, "no data yet" for stages that did not run, bad input
refused with nothing written, and the page rendered in headless Chromium with every image loaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from campaign.cli.app import app
from campaign.report import build_report
from campaign.report.data import gather
from campaign.report.database import readonly_engine
from tests.report.campaign_fixture import NOW, build_campaign

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Flags from the machine notes: headless as root, no background connections to a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ALL_FIGURES = {"hpo_objectives.png", "hpo_parallel.png", "curves_1.png", "curves_2.png", "parity_1.png",
               "parity_2.png", "screening.png", "finetune.png", "active.png", "scaling.png", "resources.png",
               "timeline.png"}


@pytest.fixture
def full(engine: object, db_url: str, tmp_path: Path) -> tuple[str, dict]:
    return db_url, build_campaign(engine, tmp_path)  # type: ignore[arg-type]


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_gather_reads_every_section(full: tuple[str, dict]) -> None:
    url, facts = full
    eng = readonly_engine(url)
    data = gather(eng, "demo-hpo", now=NOW)
    eng.dispose()
    assert data.heads == {"None": "all", "0": "demo-emt", "1": "demo-gfn2", "2": "demo-gfn1"}
    assert len(data.trials) == 36 and {t.hpo for t in data.trials} == set(facts["best_objective"])
    assert [p.rank for p in data.promoted] == [1, 2, 3, 4, 5, 6]  # the two best, and the best of each family
    assert data.promoted[0].reasons == ["top_overall", "best_of_family"]
    assert data.promoted[0].objective == pytest.approx(min(facts["best_objective"].values()))
    assert [c.label.split()[0] for c in data.curves] == ["trained", "trained"]  # trained models win over trials
    assert set(data.curves[0].heads()) == {"all", "demo-emt", "demo-gfn2", "demo-gfn1"}
    epochs, _ = data.curves[0].values[("demo-emt", "val", "loss")]
    assert epochs.tolist() == list(range(12))
    assert sorted({p.dataset for p in data.parity}) == ["demo-emt", "demo-gfn1", "demo-gfn2"]
    assert data.parity[0].force_true is not None and data.parity[0].force_true.shape == (400, 3)
    assert len(data.screening.hits) == facts["hits"] and data.screening.screened <= facts["screened"]
    assert data.screening.screened > 0.95 * facts["screened"]  # summed over shards (tails outside the bins)
    assert {(p.task, p.finetuned, p.scratch) for p in data.finetune} == {
        (t, ft, sc) for t, (ft, sc) in facts["finetune"].items()}
    assert [(r.round, r.heldout_force_mae_mev_per_a, r.labelled, r.failed_labels) for r in data.active_rounds] == [
        (r, mae, 1 if r else 0, 1 if r else 0) for r, mae in facts["active"].items()]
    assert [(x.round, x.rank, x.label) for x in data.selections] == [(1, 1, "ok"), (1, 2, "unphysical"),
                                                                     (2, 1, "ok"), (2, 2, "unphysical")]
    train = [r for r in data.resources if r.stage == "train"]
    # two trained models, each a 90-min walltime attempt then a 90-min ok one, 2 nodes, 8 GPUs, on frontier
    assert len(train) == 1 and train[0].site == "frontier" and train[0].attempts == 4 and train[0].failed == 2
    assert train[0].gpu_hours == pytest.approx(4 * 1.5 * 8) and train[0].node_hours == pytest.approx(4 * 1.5 * 2)
    assert any(s.end is None for s in data.timeline)  # the attempt in flight is on the timeline
    assert data.timeline_total == len(data.timeline)


def test_report_writes_page_and_figures(full: tuple[str, dict], tmp_path: Path) -> None:
    url, _ = full
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", "demo-hpo", "--out", str(out), "--db", url])
    assert res.exit_code == 0, res.output
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == ALL_FIGURES
    assert all(_png_ok(out / p) for p in pngs)
    html = (out / "index.html").read_text()
    assert set(re.findall(r'<img src="([^"]+)"', html)) == ALL_FIGURES
    assert "No data yet" not in html and "<script" not in html
    for text in ("Promotion", "best_of_family", "AuCu3", "water", "qm9-gap", "frontier"):
        assert text in html
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


@pytest.mark.parametrize(("stages", "empty"), [
    (("preprocess",), {"HPO campaigns", "Hyperparameters", "Promotion", "Scaling", "Loss curves",
                       "Parity on the test split", "Screening", "Fine-tuning", "Active learning"}),
    (("preprocess", "hpo"), {"Promotion", "Scaling", "Parity on the test split", "Screening", "Fine-tuning",
                             "Active learning"}),
])
def test_sections_without_data_say_so(engine: object, tmp_path: Path, db_url: str, stages: tuple[str, ...],
                                      empty: set[str]) -> None:
    build_campaign(engine, tmp_path, stages=stages)  # type: ignore[arg-type]
    outcome = build_report("demo-hpo", tmp_path / "r", db=db_url, now=NOW)
    assert set(outcome.empty_sections) == empty
    html = outcome.index.read_text()
    assert html.count("No data yet") == len(empty)
    for img in re.findall(r'<img src="([^"]+)"', html):
        assert _png_ok(tmp_path / "r" / img)
    if "hpo" in stages:  # the best trial's curves stand in for trained models
        assert "best trial" in html and (tmp_path / "r" / "curves_1.png").exists()


def test_bad_input_writes_nothing(full: tuple[str, dict], tmp_path: Path) -> None:
    url, _ = full
    out = tmp_path / "nothing"
    res = runner.invoke(app, ["report", "no-such", "--out", str(out), "--db", url])
    assert res.exit_code == 2 and "no campaign named 'no-such'; known: demo-hpo" in res.output
    assert "Traceback" not in res.output and not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = runner.invoke(app, ["report", "demo-hpo", "--out", str(afile), "--db", url])
    assert res.exit_code == 2 and "is not a directory" in res.output and afile.read_text() == "x"
    missing = tmp_path / "missing.db"
    res = runner.invoke(app, ["report", "demo-hpo", "--out", str(out), "--db", f"sqlite:///{missing}"])
    assert res.exit_code == 2 and "no campaign database" in res.output
    assert not missing.exists() and not out.exists()


# ------------------------------------------------------------------------------------------ in Chromium
CHECK_PAGE = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="f" src="report/index.html" width="1200" height="800"></iframe>
<script>
document.getElementById("f").addEventListener("load", () => {
  const doc = document.getElementById("f").contentDocument;
  const imgs = Array.from(doc.images).map(i => ({src: i.getAttribute("src"), complete: i.complete,
                                                 w: i.naturalWidth, h: i.naturalHeight}));
  document.getElementById("result").textContent = JSON.stringify(
    {title: doc.title, images: imgs, sections: doc.querySelectorAll("section").length});
});
</script></body></html>"""


class _Recorder(SimpleHTTPRequestHandler):
    statuses: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.statuses.append((self.path, int(code)))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str, list[tuple[str, int]]]]:
    root = tmp_path / "site"
    root.mkdir()
    statuses: list[tuple[str, int]] = []
    handler = type("H", (_Recorder,), {"statuses": statuses})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", statuses
    finally:
        server.shutdown()
        server.server_close()


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CAMPAIGN_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(full: tuple[str, dict], tmp_path: Path,
                                            served: tuple[Path, str, list[tuple[str, int]]]) -> None:
    url, _ = full
    root, base, statuses = served
    build_report("demo-hpo", root / "report", db=url, now=NOW)
    (root / "check.html").write_text(CHECK_PAGE)
    out = _chromium(["--virtual-time-budget=15000", "--dump-dom", f"{base}/check.html"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r'<pre id="result">(.*?)</pre>', out.stdout, re.S)
    assert m is not None, out.stdout[-2000:]
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["title"] == "campaign demo-hpo: report" and result["sections"] == 10
    assert {i["src"] for i in result["images"]} == ALL_FIGURES
    for img in result["images"]:
        assert img["complete"] and img["w"] > 100 and img["h"] > 100, img
    assert statuses and all(code == 200 for _, code in statuses if not _.endswith("favicon.ico")), statuses
    assert {p.rsplit("/", 1)[-1] for p, _ in statuses} >= ALL_FIGURES | {"index.html"}
    # a screenshot of the page itself, for people looking at the CI artifacts
    shot = tmp_path / "report.png"
    out = _chromium(["--window-size=1280,2400", f"--screenshot={shot}", f"{base}/report/index.html"], tmp_path)
    assert out.returncode == 0 and _png_ok(shot)


def test_every_promoted_model_gets_its_loss_curves_with_integer_epochs_and_units(
        engine: object, db_url: str, tmp_path: Path) -> None:
    """A campaign that got to promotion: one loss-curve figure per promoted model (none left out), epochs and
    trials on integer ticks, the loss axis with its definition and units."""
    from matplotlib.ticker import MaxNLocator

    from campaign.report import figures

    facts = build_campaign(engine, tmp_path, stages=("preprocess", "hpo", "promote"))  # type: ignore[arg-type]
    eng = readonly_engine(db_url)
    data = gather(eng, "demo-hpo", now=NOW)
    eng.dispose()
    assert len(data.curves) == len(facts["promoted"]) == 6
    assert [c.label.split()[0] for c in data.curves] == ["promoted"] * len(facts["promoted"])
    fig = figures.loss_curves(data.curves[0])
    assert fig is not None
    assert "eV²" in fig.get_suptitle() and "eV²/Å²" in fig.get_suptitle()  # the loss, with its units, once
    for ax in [a for a in fig.axes if a.get_visible()]:
        assert ax.get_xlabel() == "epoch"
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        assert all(float(t).is_integer() for t in ax.get_xticks())
    obj = figures.hpo_objectives(data.trials)
    assert obj is not None
    for ax in [a for a in obj.axes if a.get_visible()]:
        assert ax.get_xlabel() == "trial" and all(float(t).is_integer() for t in ax.get_xticks())
        assert "eV²" in ax.get_ylabel()
    assert figures.metric_unit("energy_mae_per_atom") == "eV/atom" and figures.metric_unit("force_mae") == "eV/Å"
