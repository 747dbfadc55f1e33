"""Image-quality and spectral-bias metrics."""

from dip_lightning.metrics.fbc import (
    FrequencyBandCorrespondence,
    band_masks,
    frequency_band_correspondence,
)
from dip_lightning.metrics.noise_level import estimate_sigma
from dip_lightning.metrics.psnr import psnr, psnr_y, rgb_to_y
from dip_lightning.metrics.ssim import ssim

__all__ = [
    "FrequencyBandCorrespondence",
    "band_masks",
    "estimate_sigma",
    "frequency_band_correspondence",
    "psnr",
    "psnr_y",
    "rgb_to_y",
    "ssim",
]
