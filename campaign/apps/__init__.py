"""Tiny worker-side apps (no-op/sleep, rank report) used by tests, the dispatch benchmark and smoke runs.

They follow the ``python -m <app> --config … --result …`` contract of :mod:`models.appio`, and may also offer
``run_in_process(config, config_path) -> dict`` (with ``IN_PROCESS = True``) so that the worker can run
them without paying a Python start-up. They import nothing of the campaign database.
"""
