"""What the callbacks read of the module they watch.

The callbacks of :mod:`dip_lightning.callbacks` need only a small surface of the module of a
fit (:class:`~dip_lightning.tasks.DIPModule`, or one image of a batched fit): its restored image,
its buffers, its counters and its one host read per log step. :class:`FitModule` names that
surface, so the callbacks depend on it rather than on the tasks that implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from dip_lightning.data.datamodule import ImageSample
    from dip_lightning.degradations.base import Degradation

__all__ = ["FitModule"]


class FitModule(Protocol):
    """The module of a fit as the callbacks see it (every member read-only)."""

    @property
    def task_name(self) -> str:
        """Short task name written to ``metrics.json``."""

    @property
    def sample(self) -> ImageSample | None:
        """The observation, its clean reference and file information (``None`` before setup)."""

    @property
    def degradation(self) -> Degradation | None:
        """The forward operator ``A`` (``None`` before setup)."""

    @property
    def observation(self) -> torch.Tensor:
        """The observation ``y``, ``(1, C, h, w)``."""

    @property
    def clean(self) -> torch.Tensor | None:
        """The clean reference ``(1, C, H, W)``, when one is known."""

    @property
    def last_output(self) -> torch.Tensor:
        """The output of the last good step ``(1, C, H, W)``."""

    @property
    def holdout_keep(self) -> torch.Tensor | None:
        """0 on held-out pixels, else 1; ``None`` without a hold-out."""

    @property
    def _bad(self) -> torch.Tensor | None:
        """Whether the divergence guard rolled the current step back (0-dim bool)."""

    @property
    def parameters_count(self) -> int:
        """Trainable parameters of the network."""

    @property
    def recoveries(self) -> torch.Tensor:
        """Steps rolled back so far (0-dim, on the device)."""

    @property
    def lr_reductions(self) -> int:
        """Learning-rate reductions made by the divergence policy."""

    @property
    def stopped_on_divergence(self) -> bool:
        """Whether the divergence policy stopped the fit."""

    @property
    def peak_psnr(self) -> torch.Tensor:
        """Highest PSNR of the restored image against the clean reference so far."""

    @property
    def peak_step(self) -> torch.Tensor:
        """The step of :attr:`peak_psnr`."""

    def restored_batch(self) -> torch.Tensor:
        """The current restored image ``(1, C, H, W)``."""

    def restored(self) -> torch.Tensor:
        """The current restored image ``(C, H, W)`` in [0, 1] on the CPU."""

    def extra_metrics(self, restored: torch.Tensor) -> dict[str, float]:
        """Task-specific entries of ``metrics.json`` for the final ``restored`` image."""

    def hyperparameters_for_logging(self) -> dict[str, Any]:
        """Flat hyperparameters for TensorBoard's HParams tab."""

    def read_at_log_step(
        self, values: Sequence[torch.Tensor], then: Callable[[list[float]], None]
    ) -> None:
        """Queue 0-dim ``values`` for this log step's one host read; ``then`` gets the floats."""

    def log_host_values(self, values: dict[str, float]) -> None:
        """Log numbers read on the host at a log step."""
