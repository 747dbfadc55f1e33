"""A fit's CPU threads, raised while it runs when cores fall idle (``dip restore --workers N``).

When ``dip restore --workers N`` runs out of inputs, the workers that finish first would leave
their cores idle while the last fits run on their share. The parent process instead hands the
idle cores to the workers still fitting: it raises a shared per-worker thread count
(:func:`share_threads`), and :class:`ThreadShare`, a callback of each worker's fit, reads it every
``every_n_steps`` steps and calls ``torch.set_num_threads`` from the fit's own thread (the thread
count is a property of the calling thread, so no other thread could change it).

A changed thread count changes the rounding of the convolutions from that step on, as any other
thread count does; nothing else of the fit changes.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["ThreadShare", "share_threads", "shared_threads"]

#: this process's shared thread count (a ``multiprocessing`` value set by the parent), if any
_SHARED: Any = None


def share_threads(value: Any) -> None:
    """Make ``value`` (anything with an integer ``.value``, such as a ``multiprocessing``
    ``RawValue``) the thread count :class:`ThreadShare` follows in this process (``None``:
    none)."""
    global _SHARED
    _SHARED = value


def shared_threads() -> int | None:
    """The thread count this process is asked to use now, or ``None`` where none is shared."""
    value = _SHARED
    if value is None:
        return None
    threads = int(value.value)
    return threads if threads >= 1 else None


class ThreadShare(Callback):
    """Every ``every_n_steps`` steps (and at the start of the fit), set this process's CPU
    threads to the shared count (:func:`shared_threads`), where one is shared and differs from
    ``torch.get_num_threads()``. Without a shared count it does nothing."""

    def __init__(self, every_n_steps: int = 16) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps

    def follow(self) -> None:
        threads = shared_threads()
        if threads is not None and threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.follow()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.follow()
