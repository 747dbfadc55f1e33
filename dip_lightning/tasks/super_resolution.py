"""Super-resolution: the loss goes through the paper's Lanczos-2 downsampler."""

from __future__ import annotations

import math
from typing import Any

import torch
from typing_extensions import override

from dip_lightning.data.datamodule import ImageSample, SingleImageDataModule
from dip_lightning.degradations.downsample import DOWNSAMPLE_KERNELS, Downsample, bicubic_upsample
from dip_lightning.errors import ConfigError
from dip_lightning.losses import total_variation
from dip_lightning.metrics.psnr import psnr_y
from dip_lightning.tasks.base import DIPModule, psnr


class SuperResolutionDIP(DIPModule):
    """Super-resolution by ``data.scale``: ``A`` is :class:`~dip_lightning.degradations.Downsample`.

    The network draws the high-resolution image (``z`` at ``scale`` times the observation's
    size); the data term compares its downsampled version, ``lanczos2`` with phase 0.5 as in
    the authors' notebook, with the low-resolution observation.

    Args:
        tv_weight: weight of the authors' total-variation regulariser
            (:func:`~dip_lightning.losses.total_variation`, a sum over pixels); 0 is off, as in
            the paper.
        kernel: the downsampling kernel (``lanczos2``, ``lanczos3``, ``gauss12``, ``gauss1sq2``
            or ``box``), each with its own phase.

    When the clean high-resolution image is known, PSNR is also computed the way super-
    resolution papers report it: on the Y channel with a border of ``scale`` pixels cropped
    (:func:`~dip_lightning.metrics.psnr_y`), logged as ``psnr_y`` and written to
    ``metrics.json`` with the bicubic baseline (``bicubic_psnr``, ``bicubic_psnr_y``).
    Defaults follow the authors' notebook at x4: ``sigma_p = 0.03`` (0.05 at x8), no output EMA.
    """

    task_name = "super-resolution"

    def __init__(
        self,
        *,
        sigma_p: float = 0.03,
        tv_weight: float = 0.0,
        kernel: str = "lanczos2",
        **kwargs: Any,
    ) -> None:
        super().__init__(sigma_p=sigma_p, **kwargs)
        if not (math.isfinite(tv_weight) and tv_weight >= 0):
            raise ConfigError(f"model.tv_weight = {tv_weight} is out of range; use >= 0 (0 is off)")
        if kernel not in DOWNSAMPLE_KERNELS:
            raise ConfigError(
                f"model.kernel {kernel!r} is unknown; use one of {', '.join(DOWNSAMPLE_KERNELS)}"
            )
        self.tv_weight = float(tv_weight)
        self.kernel = kernel
        self.scale = 1

    @override
    def build_degradation(self, data: SingleImageDataModule) -> Downsample:
        if data.scale == 1:
            raise ConfigError(
                "super-resolution needs a factor: set data.scale to 2, 4 or 8 (data.image is the "
                "low-resolution input, or the clean high-resolution image with data.simulate true)"
            )
        self.scale = data.scale
        return Downsample(data.scale, channels=data.image.channels, kernel=self.kernel)

    @override
    def output_size(self, sample: ImageSample) -> tuple[int, int]:
        height, width = super().output_size(sample)
        return height * self.scale, width * self.scale

    @override
    def regularization(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.tv_weight * total_variation(x) if self.tv_weight > 0 else None

    @override
    def step_metrics(self) -> dict[str, torch.Tensor]:
        metrics = super().step_metrics()
        if self.clean is not None:
            metrics["psnr_y"] = psnr_y(self.restored_batch(), self.clean, border=self.scale)
        return metrics

    @override
    def extra_metrics(self, restored: torch.Tensor) -> dict[str, float]:
        """``psnr_y`` of the restored image and the bicubic baseline's ``bicubic_psnr`` and
        ``bicubic_psnr_y``, when the clean image is known."""
        assert self.sample is not None
        clean = self.sample.clean
        if clean is None:
            return {}
        bicubic = bicubic_upsample(self.sample.observation, self.scale)
        return {
            "psnr_y": float(psnr_y(restored, clean, border=self.scale)),
            "bicubic_psnr": float(psnr(bicubic[None], clean[None])),
            "bicubic_psnr_y": float(psnr_y(bicubic, clean, border=self.scale)),
        }
