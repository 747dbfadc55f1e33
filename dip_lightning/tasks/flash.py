"""Flash/no-flash: the flash image is the network's input, the no-flash image its target."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.degradations.identity import Identity
from dip_lightning.errors import ConfigError
from dip_lightning.tasks.base import DIPModule


def pad_centered(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``(..., h, w)`` to ``(..., height, width)`` around the centre, as the loop crops.

    The top/left margin is ``(height - h) // 2`` / ``(width - w) // 2`` (the loop's crop box);
    reflection padding where the image is large enough, edge replication otherwise.

    >>> pad_centered(torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]), 4, 5)
    tensor([[[5., 4., 5., 6., 5.],
             [2., 1., 2., 3., 2.],
             [5., 4., 5., 6., 5.],
             [2., 1., 2., 3., 2.]]])
    >>> pad_centered(torch.tensor([[[1.0, 2.0]]]), 1, 5)  # too small to reflect
    tensor([[[1., 1., 2., 2., 2.]]])
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    top, left = (height - h) // 2, (width - w) // 2
    pads = (left, width - w - left, top, height - h - top)
    if min(pads) < 0:
        raise ConfigError(f"cannot pad a {w}x{h} image to {width}x{height}")
    reflect = max(pads[:2]) < w and max(pads[2:]) < h
    batch = x.reshape(-1, 1, h, w)
    out = F.pad(batch, pads, mode="reflect" if reflect else "replicate")
    return out.reshape(*x.shape[:-2], height, width)


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
