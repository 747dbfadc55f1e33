"""Image-quality and spectral-bias metrics."""

from dip_lightning.metrics.fbc import (
    FrequencyBandCorrespondence,
    band_masks,
    frequency_band_correspondence,
)

__all__ = ["FrequencyBandCorrespondence", "band_masks", "frequency_band_correspondence"]
