"""Log the output image (and, once, the observation and the clean image) to TensorBoard."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger


def _displayable(image: torch.Tensor) -> torch.Tensor:
    return image.detach().float().clamp(0, 1).cpu()


class ImageLogger(Callback):
    """Every ``every_n_steps`` steps, add the restored image to TensorBoard as ``images/output``."""

    def __init__(self, every_n_steps: int = 500) -> None:
        self.every_n_steps = every_n_steps

    def _writer(self, trainer: Trainer) -> Any:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = self._writer(trainer)
        sample = getattr(pl_module, "sample", None)
        if writer is None or sample is None or trainer.global_step > 0:
            return
        writer.add_image("images/observation", _displayable(sample.observation), 0)
        if sample.clean is not None:
            writer.add_image("images/clean", _displayable(sample.clean), 0)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps and step != trainer.max_steps:
            return
        writer = self._writer(trainer)
        if writer is not None:
            writer.add_image("images/output", pl_module.restored(), step)  # type: ignore[operator]
