"""The DIP loop (:class:`DIPModule`) and one thin LightningModule per restoration task."""

from dip_lightning.tasks.base import DIPModule, NetFactory
from dip_lightning.tasks.denoising import DenoisingDIP

__all__ = ["DIPModule", "DenoisingDIP", "NetFactory"]
