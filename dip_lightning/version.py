"""The installed version of dip-lightning (``dip --version``), ``0.0.0`` in a source tree."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("dip-lightning")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
