"""The checkpoint a fit keeps: ``checkpoints/last.ckpt``, periodic and at the end."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Keep one checkpoint, ``last.ckpt``, written every ``every_n_train_steps`` steps and when
    the fit ends, so ``dip fit --ckpt_path .../last.ckpt`` continues exactly where it stopped.

    Extra keyword arguments go to :class:`~lightning.pytorch.callbacks.ModelCheckpoint`.
    """

    def __init__(self, every_n_train_steps: int = 200, **kwargs: Any) -> None:
        kwargs.setdefault("save_top_k", 0)
        super().__init__(save_last=True, every_n_train_steps=every_n_train_steps, **kwargs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
