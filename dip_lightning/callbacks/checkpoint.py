"""The checkpoint a fit keeps: ``checkpoints/last.ckpt``, periodic and at the end."""

from __future__ import annotations

from typing import Any
from weakref import proxy

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from dip_lightning.io_utils import atomic_path


def save_checkpoint_atomically(trainer: Trainer, path: str, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` through a temporary file renamed into place, so a killed
    process leaves the previous checkpoint or the new one, never half of one."""
    with atomic_path(path) as temporary:
        trainer.save_checkpoint(temporary, weights_only)


class LastCheckpoint(ModelCheckpoint):
    """Keep one checkpoint, ``last.ckpt``, written every ``every_n_train_steps`` steps and when
    the fit ends, so ``dip fit --ckpt_path .../last.ckpt`` continues exactly where it stopped.

    Extra keyword arguments go to :class:`~lightning.pytorch.callbacks.ModelCheckpoint`.
    """

    def __init__(self, every_n_train_steps: int = 200, **kwargs: Any) -> None:
        kwargs.setdefault("save_top_k", 0)
        super().__init__(save_last=True, every_n_train_steps=every_n_train_steps, **kwargs)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        save_checkpoint_atomically(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        continue_progress_bar(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def continue_progress_bar(trainer: Trainer, pl_module: LightningModule) -> None:
    """Give the progress bar of a fit resumed mid-epoch its total and position.

    A fit is one epoch, and Lightning does not call ``on_train_epoch_start`` (where the bar gets
    its total) when it resumes inside one; this does, and starts the bar at the steps already
    done, so its total is the fit's and its rate and ETA count this run's steps only."""
    bar = trainer.progress_bar_callback
    done = int(trainer.global_step)
    if not isinstance(bar, TQDMProgressBar) or done <= 0 or trainer.current_epoch > 0:
        return
    bar.on_train_epoch_start(trainer, pl_module)
    tqdm = bar.train_progress_bar
    if trainer.max_steps > 0:  # Lightning counts the steps left; the bar shows the step
        tqdm.total = max(int(trainer.max_steps), done)
    tqdm.initial = tqdm.n = done
    tqdm.refresh()
