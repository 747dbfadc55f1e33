"""SSIM of images in [0, 1], with a window that fits small images."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

__all__ = ["ssim"]


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of ``(N, C, H, W)`` images in [0, 1] (torchmetrics, ``data_range=1.0``).

    Images smaller than the 11x11 Gaussian window use a smaller odd window.

    >>> x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> round(float(ssim(x, x)), 4)
    1.0
    >>> float(ssim(x, 1 - x)) < 0
    True
    >>> round(float(ssim(x[..., :5, :5], x[..., :5, :5])), 4)  # a 5x5 window
    1.0
    """
    side = min(int(x.shape[-1]), int(x.shape[-2]))
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11
    value = structural_similarity_index_measure(
        x, y, data_range=1.0, kernel_size=kernel, sigma=sigma
    )
    assert isinstance(value, torch.Tensor)
    return value
