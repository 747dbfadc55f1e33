"""Flash/no-flash: the flash image is the network's input, the no-flash image its target."""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.data.padding import pad_centered
from dip_lightning.degradations.identity import Identity
from dip_lightning.errors import ConfigError
from dip_lightning.tasks.base import DIPModule


class FlashNoFlashDIP(DIPModule):
    """Flash/no-flash reconstruction: ``z`` is the flash image ``data.guide``, ``A`` the identity.

    The network maps the (sharp, well-lit) flash image to the (noisy, natural-light) no-flash
    image ``data.image``; stopped early, its output keeps the no-flash lighting with the flash
    image's detail and little noise. The flash image is padded by reflection to the network's
    size; ``input_depth`` must be its channel count (3 for colour).

    Defaults follow the authors' notebook: 3 input channels, no input perturbation
    (``sigma_p = 0``), learning rate 0.1, no output EMA.
    """

    task_name = "flash-no-flash"

    def __init__(
        self,
        *,
        input_depth: int = 3,
        sigma_p: float = 0.0,
        lr: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_depth=input_depth, sigma_p=sigma_p, lr=lr, **kwargs)

    @override
    def build_degradation(self, data: SingleImageDataModule) -> Identity:
        if data.guide is None:
            raise ConfigError(
                "flash/no-flash needs the flash image: give it as data.guide (data.image is the "
                "no-flash image)"
            )
        if data.guide.channels != self.input_depth:
            raise ConfigError(
                f"the guide image has {data.guide.channels} channels but model.input_depth is "
                f"{self.input_depth}; set model.input_depth: {data.guide.channels}"
            )
        return Identity(noise_sigma=data.noise_sigma)

    @override
    def build_input(
        self, data: SingleImageDataModule, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The flash image, padded to the network's ``height`` x ``width``."""
        assert self.sample is not None and self.sample.guide is not None
        return pad_centered(self.sample.guide, height, width)[None].contiguous()
