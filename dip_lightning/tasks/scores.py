"""Scores of a restored image without a fit: ``dip validate`` and ``dip test``.

:class:`CheckpointScores` is the part of :class:`~dip_lightning.tasks.DIPModule` that scores
the image of a checkpoint: against the observation (or its held-out pixels), or against the
data's clean image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dip_lightning.data.datamodule import ImageSample
from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError
from dip_lightning.metrics.psnr import psnr
from dip_lightning.metrics.ssim import ssim
from dip_lightning.tasks.holdout import heldout_mse

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = ["CheckpointScores"]


class CheckpointScores(_Base):
    """``validation_scores`` and ``test_scores`` of a :class:`~dip_lightning.tasks.DIPModule`."""

    degradation: Degradation | None
    sample: ImageSample | None
    observation: torch.Tensor
    holdout_keep: torch.Tensor | None

    def validation_scores(self, restored: torch.Tensor) -> dict[str, float]:
        """``dip validate``: scores of ``restored`` ``(C, H, W)`` that need no clean image.

        With held-out pixels (``holdout_fraction > 0``), the MSE of ``A(restored)`` against the
        observation on them and its PSNR (the no-reference score the fit tracks); else the PSNR
        of ``A(restored)`` against the observation (how closely the output explains it)."""
        assert self.degradation is not None
        observation = self.observation
        with torch.no_grad():
            predicted = self.degradation(restored[None].to(observation))
        if self.holdout_keep is None:
            return {"val/psnr_observed": float(psnr(predicted, observation))}
        mse = heldout_mse(predicted, observation, self.holdout_keep)
        return {
            "val/heldout_mse": float(mse),
            "val/heldout_psnr": float(-10 * torch.log10(mse.clamp_min(1e-12))),
        }

    def test_scores(self, restored: torch.Tensor) -> dict[str, float]:
        """``dip test``: PSNR and SSIM of ``restored`` ``(C, H, W)`` against the data's clean
        image, and the PSNR of the observation when it has the clean image's size."""
        clean = self.sample.clean if self.sample is not None else None
        if clean is None:
            raise ConfigError(
                "dip test needs the clean image: give --data.clean CLEAN (or a simulated "
                "observation of a clean --data.image)"
            )
        scores = {
            "test/psnr": float(psnr(restored[None], clean[None])),
            "test/ssim": float(ssim(restored[None], clean[None])),
        }
        observation = self.sample.observation if self.sample is not None else None
        if observation is not None and observation.shape == clean.shape:
            scores["test/input_psnr"] = float(psnr(observation[None], clean[None]))
        return scores
