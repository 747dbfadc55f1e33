"""Deep Image Prior restoration as PyTorch Lightning modules."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dip-lightning")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
