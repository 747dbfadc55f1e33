"""PSNR on the luma (Y) channel with a border crop, the super-resolution papers' evaluation.

Super-resolution results (the Deep Image Prior paper's Set5/Set14 tables among them) are scored
on the Y channel of ITU-R BT.601 YCbCr (MATLAB's ``rgb2ycbcr``: ``Y = 16 + 65.481 R + 128.553 G +
24.966 B`` for ``R, G, B`` in [0, 1], so ``Y`` is in [16, 235]), after cropping ``border`` pixels
(the scale factor) from every side, with a peak of 255. :func:`rgb_to_y` returns that ``Y``
divided by 255 and :func:`psnr_y` compares it with ``data_range=1``, which gives the same
number. A one-channel image is its own luma.

:func:`psnr` is the plain PSNR of two images with plain tensor operations: no tensor is made
for the data range and nothing is read on the host, so the fit can track its peak on the device
at every step.
"""

from __future__ import annotations

import torch

from dip_lightning.errors import ConfigError

__all__ = ["Y_WEIGHTS", "psnr", "psnr_y", "rgb_to_y"]

#: ITU-R BT.601 weights of R, G, B in the luma of 8-bit YCbCr (``Y`` on the 0-255 scale).
Y_WEIGHTS: tuple[float, float, float] = (65.481, 128.553, 24.966)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of ``x`` against ``y``: ``10 log10(data_range**2 / MSE)``, the mean squared
    error taken over every element; a 0-dim tensor on their device (``inf`` when they are equal).

    The same number as ``torchmetrics.functional.peak_signal_noise_ratio(x, y, data_range)``
    and scikit-image's ``peak_signal_noise_ratio``, computed in the inputs' precision.

    >>> x = torch.zeros(1, 3, 4, 4)
    >>> round(float(psnr(x, torch.full_like(x, 0.1))), 4)
    20.0
    >>> float(psnr(x, x))
    inf
    """
    mse = (x - y).square().mean()
    return 10.0 * torch.log10(data_range * data_range / mse)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """The BT.601 luma of ``(..., C, H, W)`` images in [0, 1], as ``(..., 1, H, W)`` in [0, 1].

    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` for 3 channels (so white is
    ``235 / 255``); a 1-channel image is returned unchanged.

    >>> rgb_to_y(torch.ones(3, 1, 1)) * 255
    tensor([[[235.]]])
    >>> rgb_to_y(torch.zeros(1, 3, 2, 2)).shape
    torch.Size([1, 1, 2, 2])
    """
    if x.dim() < 3 or x.shape[-3] not in (1, 3):
        raise ConfigError(
            f"expected images (..., C, H, W) with 1 or 3 channels, got {tuple(x.shape)}"
        )
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    wr, wg, wb = Y_WEIGHTS
    return ((16.0 + wr * r + wg * g + wb * b) / 255.0).unsqueeze(-3)


def psnr_y(x: torch.Tensor, y: torch.Tensor, border: int = 0) -> torch.Tensor:
    """PSNR in dB of the luma of ``x`` against that of ``y``, ``border`` pixels cropped per side.

    ``x`` and ``y`` are ``(C, H, W)`` or ``(N, C, H, W)`` images in [0, 1] with 1 or 3
    channels (see :func:`rgb_to_y`); the mean squared error is taken over the whole batch.
    Returns a 0-dim float tensor (``inf`` for identical images).

    >>> x = torch.zeros(3, 8, 8)
    >>> y = x.clone()
    >>> y[:, 0, 0] = 1.0  # a pixel in the border only
    >>> float(psnr_y(x, y, border=1))
    inf
    >>> round(float(psnr_y(x, torch.full((3, 8, 8), 0.1))), 2)  # Y spans 219 of 255 levels
    21.32
    >>> round(float(psnr_y(x[:1], torch.full((1, 8, 8), 0.1))), 2)  # gray: plain PSNR
    20.0
    """
    if x.shape != y.shape:
        raise ConfigError(
            f"psnr_y needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if border < 0 or 2 * border >= min(int(x.shape[-1]), int(x.shape[-2])):
        raise ConfigError(
            f"a border of {border} pixels leaves nothing of a {x.shape[-1]}x{x.shape[-2]} image"
        )
    luma_x, luma_y = rgb_to_y(x.float()), rgb_to_y(y.float())
    if border:
        luma_x = luma_x[..., border:-border, border:-border]
        luma_y = luma_y[..., border:-border, border:-border]
    return psnr(luma_x, luma_y)
