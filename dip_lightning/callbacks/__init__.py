"""Callbacks of a fit: run artifacts (restored image, metrics) and TensorBoard images."""

from dip_lightning.callbacks.artifacts import RunArtifacts, run_directory
from dip_lightning.callbacks.checkpoint import LastCheckpoint
from dip_lightning.callbacks.images import ImageLogger

__all__ = ["ImageLogger", "LastCheckpoint", "RunArtifacts", "run_directory"]
