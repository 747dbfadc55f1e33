"""Callbacks of a fit: run artifacts (restored image, metrics) and TensorBoard images."""

from dip_lightning.callbacks.artifacts import RunArtifacts, run_directory
from dip_lightning.callbacks.checkpoint import LastCheckpoint
from dip_lightning.callbacks.fbc import FBCLogger
from dip_lightning.callbacks.images import ImageLogger

__all__ = ["FBCLogger", "ImageLogger", "LastCheckpoint", "RunArtifacts", "run_directory"]
