"""Inpainting: the masking operator, with the mask from a file or drawn at random."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.degradations.mask import Mask
from dip_lightning.degradations.masks import random_pixel_mask
from dip_lightning.errors import ConfigError
from dip_lightning.seeding import stream_generator
from dip_lightning.tasks.base import DIPModule


class InpaintingDIP(DIPModule):
    """Inpainting: ``A(x) = m * x`` with the binary mask ``m`` (1 = known pixel).

    The mask is ``data.mask`` (a file, white = known), or, for a simulated observation,
    ``data.missing_ratio`` of the pixels dropped at random by
    :func:`~dip_lightning.degradations.random_pixel_mask` with a generator seeded by
    ``data.seed`` (the same pixels in every channel unless ``data.per_channel_mask``). The
    observation is the masked image, so with a clean reference ``input_psnr`` in
    ``metrics.json`` is the PSNR of the masked input (missing pixels black).

    Defaults follow the authors' inpainting notebooks: input perturbation ``sigma_p = 0.03``,
    no output EMA.
    """

    task_name = "inpaint"

    def __init__(self, *, sigma_p: float = 0.03, **kwargs: Any) -> None:
        super().__init__(sigma_p=sigma_p, **kwargs)

    @override
    def build_degradation(self, data: SingleImageDataModule) -> Mask:
        if data.mask is not None:
            return Mask(data.mask)
        if data.missing_ratio > 0:
            generator = stream_generator(data.seed, "mask")
            shape = tuple(data.image.tensor.shape)
            mask = random_pixel_mask(
                shape, data.missing_ratio, generator, per_channel=data.per_channel_mask
            )
            return Mask(mask if data.per_channel_mask else mask[:1])
        raise ConfigError(
            "inpainting needs the missing pixels: give data.mask (a mask file, white = known), "
            "or data.missing_ratio (a fraction of a clean image's pixels to drop; a config's "
            "applies to an image given after it with data.simulate true)"
        )
