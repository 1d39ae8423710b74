"""campaign: an HPC campaign manager for training graph foundation models of atoms and materials.

Importing this package is cheap: it pulls in neither torch nor parsl (nor ``importlib.metadata``: the version is
looked up on first use of ``campaign.__version__``). Heavy modules are imported lazily by the stages and the
dispatchers that need them.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("campaign")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0.0.0+src"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
