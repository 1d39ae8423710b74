"""The memory a rank may still fill, read as the kernel lays it out: cgroup v1 (``memory`` hierarchy) and v2
(unified) limits, page cache counted as room, no limit read as none, and the machine's available memory. The
real capped cgroup is ``tests/models/train/test_memory_cap.py``'s."""

from __future__ import annotations

from pathlib import Path

from models.data.memory_budget import available_bytes, cgroup_room_bytes, rank_room_bytes


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_room_is_limit_less_usage_plus_reclaimable_cache(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    _write(proc, "12:pids:/user.slice\n4:memory:/slurm/uid_0/job_7/step_0\n0::/\n")
    d = tmp_path / "sys" / "memory" / "slurm/uid_0/job_7/step_0"
    _write(d / "memory.limit_in_bytes", "1073741824\n")
    _write(d / "memory.usage_in_bytes", "805306368\n")
    _write(d / "memory.stat", "cache 300\nrss 700\ntotal_inactive_file 134217728\n")
    assert cgroup_room_bytes(proc, tmp_path / "sys") == (1024 - 768 + 128) << 20
    _write(d / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    assert cgroup_room_bytes(proc, tmp_path / "sys") is None


def test_cgroup_v2_room_and_no_limit(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    _write(proc, "0::/system.slice/campaign.service\n")
    d = tmp_path / "sys" / "system.slice/campaign.service"
    _write(d / "memory.max", "536870912\n")
    _write(d / "memory.current", "402653184\n")
    _write(d / "memory.stat", "anon 1\nfile 2\ninactive_file 67108864\n")
    assert cgroup_room_bytes(proc, tmp_path / "sys") == (512 - 384 + 64) << 20
    _write(d / "memory.max", "max\n")
    assert cgroup_room_bytes(proc, tmp_path / "sys") is None
    assert cgroup_room_bytes(tmp_path / "missing", tmp_path / "sys") is None


def test_this_machine_has_available_memory_shared_by_its_ranks(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    _write(meminfo, "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   2048 kB\n")
    assert available_bytes(meminfo) == 2048 * 1024
    here = available_bytes()
    assert here is not None and here > 0
    one, four = rank_room_bytes(1), rank_room_bytes(4)
    assert one is not None and four is not None and four <= one // 4 + 1
