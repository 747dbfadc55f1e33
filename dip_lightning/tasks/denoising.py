"""Denoising and blind restoration of a real image: the identity operator."""

from __future__ import annotations

from typing import Any

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.degradations.identity import Identity
from dip_lightning.tasks.base import DIPModule


class DenoisingDIP(DIPModule):
    """Denoising: ``A`` is the identity and the output EMA (weight 0.99) is on by default.

    With ``data.noise_sigma`` the observation is simulated from a clean image; without it the
    input image itself is the noisy observation (a real photo, or a JPEG whose artifacts are to
    be removed).
    """

    task_name = "denoise"

    def __init__(self, *, ema_decay: float = 0.99, **kwargs: Any) -> None:
        super().__init__(ema_decay=ema_decay, **kwargs)

    def build_degradation(self, data: SingleImageDataModule) -> Identity:
        return Identity(noise_sigma=data.noise_sigma)
