"""Callbacks of a fit: run artifacts (restored image, metrics), TensorBoard images and FBC,
early stopping without ground truth, a worker fit's shared thread count."""

from dip_lightning.callbacks.artifacts import RunArtifacts, run_directory
from dip_lightning.callbacks.checkpoint import LastCheckpoint
from dip_lightning.callbacks.fbc import FBCLogger
from dip_lightning.callbacks.images import ImageLogger
from dip_lightning.callbacks.stopping import (
    ExponentialVariance,
    HeldoutStopping,
    PeakPSNR,
    StoppingCriterion,
    WindowedVariance,
)
from dip_lightning.callbacks.threads import ThreadShare

__all__ = [
    "ExponentialVariance",
    "FBCLogger",
    "HeldoutStopping",
    "ImageLogger",
    "LastCheckpoint",
    "PeakPSNR",
    "RunArtifacts",
    "StoppingCriterion",
    "ThreadShare",
    "WindowedVariance",
    "run_directory",
]
