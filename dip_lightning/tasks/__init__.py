"""The DIP loop (:class:`DIPModule`) and one thin LightningModule per restoration task."""

from dip_lightning.tasks.base import DIPModule, NetFactory
from dip_lightning.tasks.batched import BatchedDIP
from dip_lightning.tasks.denoising import DenoisingDIP
from dip_lightning.tasks.flash import FlashNoFlashDIP
from dip_lightning.tasks.inpainting import InpaintingDIP
from dip_lightning.tasks.super_resolution import SuperResolutionDIP

__all__ = [
    "BatchedDIP",
    "DIPModule",
    "DenoisingDIP",
    "FlashNoFlashDIP",
    "InpaintingDIP",
    "NetFactory",
    "SuperResolutionDIP",
]
