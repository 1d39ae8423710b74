"""The driver SIGKILLed at many points of a small campaign, then resumed: nothing lost, nothing run twice.

Each test chains several kills through one campaign (run, kill, resume, kill, …, resume to the end), so one
campaign's worth of work covers many kill points. ``KILL_POINTS_TRIED`` counts them (reported by the suite).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.conftest import TINY_TASKS
from tests.reliability.driver_kill import DriverKillHarness, KillPoint, check_invariants

#: Kill points of one chain: the first attempt in flight, then after each batch of DONE tasks, then a kill at a
#: fixed delay into a resumed run (wherever it happens to be: startup, requeue, recording).
CHAIN = [KillPoint(attempts=1), KillPoint(done=1), KillPoint(done=3), KillPoint(attempts=6),
         KillPoint(done=5), KillPoint(delay_s=2.5), KillPoint(done=6)]


def _chain(recipe: Path, url: str, cwd: Path) -> DriverKillHarness:
    h = DriverKillHarness(recipe, url, "tiny", cwd, timeout_s=400)
    for k, point in enumerate(CHAIN):
        args = None if k % 2 == 0 else ["resume", "tiny"]  # kills during both `run` and `resume`
        h.run_killed(point, args=args)
    done = h.resume()
    assert done.returncode == 0, (cwd / f"driver-{len(h.outcomes)}-resume.log").read_text()
    return h


@pytest.mark.slow
def test_sigkill_at_many_points_sqlite(tiny_recipe: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    h = _chain(tiny_recipe, url, tmp_path)
    assert sum(o.killed for o in h.outcomes) >= 5, [(o.point.describe(), o.killed) for o in h.outcomes]
    assert check_invariants(url, "tiny") == []
    from db.readonly import run_readonly

    assert run_readonly("SELECT COUNT(*) FROM tasks", url=url).rows == [(TINY_TASKS,)]
    # the killed runs really were interrupted: some attempt was lost with the driver and closed on resume
    lost = run_readonly("SELECT COUNT(*) FROM attempts WHERE exit_cause = 'node_lost'", url=url).rows[0][0]
    assert lost >= 1


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_at_many_points_postgres(tiny_recipe: Path, tmp_path: Path) -> None:
    from tests.conftest import _pg_database

    gen = _pg_database()
    url = next(gen)
    try:
        h = _chain(tiny_recipe, url, tmp_path)
        assert sum(o.killed for o in h.outcomes) >= 5
        assert check_invariants(url, "tiny") == []
    finally:
        gen.close()
