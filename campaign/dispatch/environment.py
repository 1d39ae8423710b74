"""The steering process's environment as Parsl's local processes need it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import campaign


def ensure_env_on_path() -> None:
    """Put this interpreter's ``bin/`` first on ``PATH`` and the campaign's source root on ``PYTHONPATH``.

    Parsl's HighThroughputExecutor starts ``interchange.py`` (and locally ``process_worker_pool.py``) by name,
    so the virtual environment's ``bin/`` must be on ``PATH`` even when the environment was not activated.
    Local workers must import :mod:`campaign` to run :func:`campaign.worker.run_attempt`, also from a source
    tree that was never installed.
    """
    bin_dir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *[p for p in parts if p and p != bin_dir]])
    root = str(Path(campaign.__file__).resolve().parent.parent)
    py = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in py:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *py])
