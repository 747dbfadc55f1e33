"""The forward operator interface shared by every task."""

from __future__ import annotations

import torch
from torch import nn


class Degradation(nn.Module):
    """A forward operator ``A`` of the model ``y = A(x) + noise``.

    ``forward(x)`` maps a batch ``(N, C, H, W)`` of candidate clean images to the space of the
    observation; the data term of the loop compares ``A(x_hat)`` with ``y`` and never needs to
    know which operator it is. ``simulate(x, generator)`` makes a synthetic observation from a
    clean image, drawing every random number from ``generator``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def simulate(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A synthetic observation of the clean image ``x``: ``A(x)`` by default."""
        return self(x)

    def observed_size(self, height: int, width: int) -> tuple[int, int]:
        """The spatial size of ``A(x)`` for an ``x`` of the given size."""
        return height, width
