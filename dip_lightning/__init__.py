"""Deep Image Prior restoration as PyTorch Lightning modules.

>>> import dip_lightning
>>> callable(dip_lightning.restore_image)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dip_lightning.version import __version__

if TYPE_CHECKING:
    from dip_lightning.restore import Restored, restore_image

__all__ = ["Restored", "__version__", "restore_image"]


def __getattr__(name: str) -> Any:
    # the Python API, imported on first use so that ``import dip_lightning`` stays light
    if name in ("Restored", "restore_image"):
        from dip_lightning import restore

        return getattr(restore, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
