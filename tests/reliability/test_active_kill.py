"""The active-learning loop SIGKILLed at points inside its rounds, then resumed: no label computed twice, no round
repeated, and the same selections, labels and held-out errors as an uninterrupted run of the same recipe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.campaign.test_stage_active import rows, write_recipe
from tests.reliability.driver_kill import CAMPAIGN_EXE, DriverKillHarness, KillPoint, check_invariants

_CID = "(SELECT id FROM campaigns WHERE name = 'al-tiny')"
#: Kill points inside the loop: held-out labelled; a round-1 screen done; a dataset version recorded; a
#: fine-tuned model recorded; round 2's label task in flight; a round-2 evaluation recorded.
CHAIN = [
    KillPoint(sql=f"SELECT COUNT(*) FROM labels WHERE campaign_id = {_CID}", at_least=6),
    KillPoint(sql="SELECT COUNT(*) FROM tasks WHERE key LIKE 'active/r01/screen/%' AND state = 'DONE' "
                  f"AND campaign_id = {_CID}", at_least=1),
    KillPoint(sql="SELECT COUNT(*) FROM datasets WHERE name = 'demo-emt-active'", at_least=1),
    KillPoint(sql=f"SELECT COUNT(*) FROM models WHERE role = 'finetuned' AND campaign_id = {_CID}", at_least=1),
    KillPoint(sql="SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task_id "
                  f"WHERE t.key = 'active/r02/label' AND t.campaign_id = {_CID}", at_least=1),
    KillPoint(sql="SELECT COUNT(*) FROM metrics m JOIN tasks t ON t.id = m.task_id "
                  f"WHERE t.key LIKE 'active/r02/evaluate/%' AND t.campaign_id = {_CID}", at_least=1),
]

_OUTCOME = {
    "labels": "SELECT l.round, l.structure_id, l.status, l.energy_ev FROM labels l ORDER BY l.round, l.structure_id",
    "errors": "SELECT t.key, m.split, m.head, m.name, m.value FROM metrics m JOIN tasks t ON t.id = m.task_id "
              "WHERE t.key LIKE 'active/%/evaluate/%' ORDER BY 1, 2, 3, 4",
    "versions": "SELECT name, version, counts FROM datasets ORDER BY name, version",  # (hashes include paths)
    "hits": "SELECT t.key, h.rank, h.structure_id FROM screening_hits h JOIN tasks t ON t.id = h.task_id "
            "ORDER BY 1, 2",
}


@pytest.mark.slow
def test_sigkill_inside_the_rounds_changes_nothing(tmp_path: Path) -> None:
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    clean_dir.mkdir()
    killed_dir.mkdir()
    clean = f"sqlite:///{clean_dir / 'c.db'}"
    proc = subprocess.run([CAMPAIGN_EXE, "run", str(write_recipe(clean_dir)), "--db", clean, "--quiet"],
                          cwd=clean_dir, env={**os.environ, "OMP_NUM_THREADS": "1", "CAMPAIGN_DB": ""},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout

    url = f"sqlite:///{killed_dir / 'c.db'}"
    h = DriverKillHarness(write_recipe(killed_dir), url, "al-tiny", killed_dir, timeout_s=500)
    for k, point in enumerate(CHAIN):
        h.run_killed(point, args=None if k % 2 == 0 else ["resume", "al-tiny"])
    done = h.resume()
    assert done.returncode == 0, (killed_dir / f"driver-{len(h.outcomes)}-resume.log").read_text()
    assert sum(o.killed for o in h.outcomes) >= 4, [(o.point.describe(), o.killed) for o in h.outcomes]
    assert check_invariants(url, "al-tiny") == []
    for what, sql in _OUTCOME.items():  # the same loop, to the last digit
        assert rows(url, sql) == rows(clean, sql), what
    # no structure sent to a physics code twice, no round's task created twice
    assert rows(url, "SELECT structure_id, COUNT(*) FROM labels GROUP BY structure_id HAVING COUNT(*) > 1") == []
    assert rows(url, "SELECT COUNT(*) FROM tasks WHERE key LIKE 'active/%/label'")[0][0] == 3
