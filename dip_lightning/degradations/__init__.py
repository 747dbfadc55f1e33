"""Forward operators ``A`` of the restoration tasks."""

from dip_lightning.degradations.base import Degradation
from dip_lightning.degradations.identity import Identity, add_gaussian_noise

__all__ = ["Degradation", "Identity", "add_gaussian_noise"]
