"""The one host read of a log step.

Nothing is read on the host between log steps. At a log step every value the module and its
callbacks log or decide on is queued (:meth:`HostReads.read_at_log_step`) and read in one
transfer at the end of the optimizer step (:func:`read_on_host`), then logged to the loggers,
``trainer.callback_metrics`` and the progress bar (:func:`log_host_values`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = ["PROGRESS_BAR", "HostReads", "log_host_values", "read_on_host"]

#: Values :meth:`HostReads.log_host_values` puts on the progress bar (and ``stopping/...``).
PROGRESS_BAR = frozenset({"train/loss", "psnr", "ssim", "heldout/mse"})

#: Values queued for a host read, with what to call with them as floats.
Read = tuple[list[torch.Tensor], Callable[[list[float]], None]]


def read_on_host(reads: Sequence[Read]) -> None:
    """Read every 0-dim tensor of ``reads`` on the host in one transfer (one host sync), and
    call each ``then`` with its values as floats (in float64; float32 on Apple's MPS).

    >>> got = []
    >>> read_on_host([([torch.tensor(1.5), torch.tensor(2)], got.append), ([], got.append)])
    >>> got
    [[1.5, 2.0], []]
    """
    tensors = [t for values, _ in reads for t in values]
    if not tensors:
        return
    device = tensors[0].device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    stacked = torch.stack([t.detach().reshape(()).to(device=device, dtype=dtype) for t in tensors])
    host = stacked.tolist()  # the host sync
    start = 0
    for values, then in reads:
        then(host[start : start + len(values)])
        start += len(values)


def log_host_values(trainer: Any, values: dict[str, float], prog_bar: Collection[str]) -> None:
    """Log ``values`` (numbers read at a log step) to ``trainer``'s loggers at its global step
    and into ``trainer.callback_metrics`` (as CPU tensors); those named in ``prog_bar``, or
    starting with ``stopping/``, also onto its progress bar (``trainer.progress_bar_metrics``,
    the numbers Lightning's progress bars show)."""
    if not values:
        return
    step = int(trainer.global_step)
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
    trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
    shown = {k: v for k, v in values.items() if k in prog_bar or k.startswith("stopping/")}
    if shown:
        trainer.progress_bar_metrics.update(shown)


class HostReads(_Base):
    """The host reads of a :class:`~dip_lightning.tasks.DIPModule`: the queue of a log step,
    its one read, and the logging of what it read."""

    _host_reads: list[Read]
    _log_to: tuple[Any, str] | None

    def read_at_log_step(
        self, values: Sequence[torch.Tensor], then: Callable[[list[float]], None]
    ) -> None:
        """Queue 0-dim ``values`` (on the device) for this step's one host read; ``then`` gets
        them as floats when it is made, at the end of :meth:`optimizer_step` (after the
        roll-back, before the callbacks' ``on_train_batch_end``)."""
        self._host_reads.append((list(values), then))

    def flush_host_reads(self) -> None:
        """Make the one host read of the values queued in this step, and hand them on."""
        reads, self._host_reads = self._host_reads, []
        read_on_host(reads)

    def log_host_values(self, values: dict[str, float]) -> None:
        """Log values read on the host at a log step (:meth:`read_at_log_step`): to every
        logger at the global step, into ``trainer.callback_metrics`` and, for those in
        :data:`PROGRESS_BAR` (or ``stopping/...``), onto Lightning's progress bar.

        Lightning converts values logged with ``self.log(..., prog_bar=True)`` from tensors at
        every step for as long as they are kept, so these go in as numbers. In a batched fit
        the batched module logs them under the image's name instead."""
        if self._log_to is not None:
            parent, prefix = self._log_to
            log_host_values(parent.trainer, {f"{prefix}/{k}": v for k, v in values.items()}, ())
            return
        log_host_values(self.trainer, values, PROGRESS_BAR)
