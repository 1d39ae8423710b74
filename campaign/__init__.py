"""campaign: an HPC campaign manager for training graph foundation models of atoms and materials.

Importing this package is cheap: it pulls in neither torch nor parsl. Heavy modules are imported lazily by
the stages and the dispatchers that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("campaign")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"

__all__ = ["__version__"]
