"""Held-out pixels: a no-reference validation score for a fit.

A fraction of the observed pixels is left out of the data term (:func:`choose_heldout`); the
mean squared error of ``A(restored)`` against the observation on them (:func:`heldout_mse`) is
then an unbiased estimate of how well the restored image explains pixels the fit never saw
(for denoising, the true error plus the noise variance). :class:`HeldOutPixels` is the part of
:class:`~dip_lightning.tasks.DIPModule` that keeps them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dip_lightning.data.padding import CropBox
from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError
from dip_lightning.seeding import stream_generator

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = ["HeldOutPixels", "choose_heldout", "heldout_mse", "observed_pixels"]


def observed_pixels(
    degradation: Degradation, channels: int, height: int, width: int
) -> torch.Tensor:
    """The pixels ``(height * width,)`` (bool, flattened) that ``degradation`` observes: where
    ``A`` of an all-ones ``(1, channels, height, width)`` image is non-zero in every channel.

    >>> from dip_lightning.degradations import Identity
    >>> bool(observed_pixels(Identity(), 3, 2, 2).all())
    True
    """
    with torch.no_grad():
        ones = torch.ones(1, channels, height, width)
        return (degradation(ones) != 0).all(dim=1)[0].flatten()


def choose_heldout(
    observed: torch.Tensor, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """The keep mask ``(N,)`` (float: 0 on a held-out pixel, else 1) that holds out
    ``round(fraction * count)`` of the ``count`` pixels where ``observed`` ``(N,)`` is true,
    drawn with ``generator``; a count that leaves no pixel on either side is refused.

    >>> keep = choose_heldout(torch.ones(10, dtype=torch.bool), 0.3, torch.Generator())
    >>> int((keep == 0).sum()), keep.shape
    (3, torch.Size([10]))
    """
    indices = observed.nonzero().squeeze(1)
    count = round(fraction * len(indices))
    if not 1 <= count < len(indices):
        raise ConfigError(
            f"model.holdout_fraction = {fraction} holds out {count} of "
            f"{len(indices)} observed pixels; use a fraction that leaves some on each side"
        )
    held = indices[torch.randperm(len(indices), generator=generator)[:count]]
    keep = torch.ones(observed.shape[0])
    keep[held] = 0.0
    return keep


def heldout_mse(
    prediction: torch.Tensor, observation: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """The mean squared error of ``prediction`` against ``observation`` ``(1, C, h, w)`` over
    the held-out pixels (where ``keep`` ``(1, 1, h, w)`` is 0) and every channel.

    >>> keep = torch.tensor([[[[1.0, 0.0]]]])
    >>> float(heldout_mse(torch.full((1, 2, 1, 2), 0.5), torch.zeros(1, 2, 1, 2), keep))
    0.25
    """
    held = 1.0 - keep
    error = (prediction - observation).square() * held
    return error.sum() / (held.sum() * observation.shape[1])


class HeldOutPixels(_Base):
    """The hold-out of a :class:`~dip_lightning.tasks.DIPModule` (``holdout_fraction``): its
    buffers, the data term on the kept pixels, and the tracking of the held-out error."""

    seed: int
    holdout_fraction: float
    degradation: Degradation | None
    crop_box: CropBox | None
    observation: torch.Tensor
    holdout_keep: torch.Tensor | None
    heldout_best: torch.Tensor | None
    heldout_best_step: torch.Tensor | None
    _heldout_mse: torch.Tensor

    if TYPE_CHECKING:

        def data_term(
            self, prediction: torch.Tensor, observation: torch.Tensor
        ) -> torch.Tensor: ...

        def restored_batch(self) -> torch.Tensor: ...

    def _attach_holdout(self) -> None:
        """Choose the held-out pixels: ``holdout_fraction`` of the observed pixels, drawn from
        the ``holdout`` stream of ``seed``; register the buffers ``holdout_keep``,
        ``heldout_best`` and ``heldout_best_step`` (``None`` without a hold-out)."""
        keep: torch.Tensor | None = None
        best: torch.Tensor | None = None
        best_step: torch.Tensor | None = None
        if self.holdout_fraction > 0:
            assert self.degradation is not None and self.crop_box is not None
            box = self.crop_box
            channels = self.observation.shape[1]
            observed = observed_pixels(self.degradation, channels, box.height, box.width)
            generator = stream_generator(self.seed, "holdout")
            keep = choose_heldout(observed, self.holdout_fraction, generator)
            keep = keep.view(1, 1, *self.observation.shape[-2:])
            best = torch.tensor(float("inf"))
            best_step = torch.tensor(0, dtype=torch.long)
        self.register_buffer("holdout_keep", keep)
        self.register_buffer("heldout_best", best)
        self.register_buffer("heldout_best_step", best_step)

    def fitted_data_term(self, prediction: torch.Tensor) -> torch.Tensor:
        """The data term on the pixels the fit sees: ``E(A(x_hat) * keep, y * keep)``, where
        ``keep`` is 0 on the held-out pixels (every pixel is kept without a hold-out)."""
        keep = self.holdout_keep
        if keep is None:
            return self.data_term(prediction, self.observation)
        return self.data_term(prediction * keep, self.observation * keep)

    def _track_heldout(self, bad: torch.Tensor, step: int) -> None:
        """MSE of ``A(restored)`` on the held-out pixels and its best value and step, on device."""
        assert self.degradation is not None and self.holdout_keep is not None
        assert self.heldout_best is not None and self.heldout_best_step is not None
        prediction = self.degradation(self.restored_batch())
        mse = heldout_mse(prediction, self.observation, self.holdout_keep)
        self._heldout_mse = mse
        better = (mse < self.heldout_best) & ~bad
        self.heldout_best.copy_(torch.where(better, mse, self.heldout_best))
        self.heldout_best_step.copy_(torch.where(better, step, self.heldout_best_step))
