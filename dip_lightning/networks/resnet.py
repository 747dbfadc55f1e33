"""The residual network of Deep Image Prior (the authors' ``models/resnet.py``).

A full-resolution network without down- or upsampling: a 3x3 conv + activation, ``num_blocks``
residual blocks (3x3 conv -> norm -> act -> 3x3 conv -> norm, plus the identity), a 3x3 conv +
norm, and a 3x3 conv to ``out_channels`` followed by a sigmoid. As in the original, ``padding``
applies to the first and last convolutions; the convolutions inside (the residual blocks and the
one after them) zero-pad.
"""

from __future__ import annotations

import torch
from torch import nn

from dip_lightning.errors import ConfigError

from .blocks import ACTIVATIONS, NORMS, PADDINGS, activation, check_choice, conv, norm

__all__ = ["ResNet", "ResidualBlock"]


class ResidualBlock(nn.Sequential):
    """``x + body(x)`` where ``body`` is the given layers (the authors' ``ResidualSequential``).

    If the body shrinks the spatial size, ``x`` is centre-cropped to match.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if out.shape[2] != x.shape[2] or out.shape[3] != x.shape[3]:
            top = (x.shape[2] - out.shape[2]) // 2
            left = (x.shape[3] - out.shape[3]) // 2
            x = x[:, :, top : top + out.shape[2], left : left + out.shape[3]]
        return out + x


class ResNet(nn.Module):
    """Deep Image Prior ResNet (the authors' ``ResNet``).

    Args:
        in_channels: channels of the input tensor.
        out_channels: channels of the output image.
        num_blocks: number of residual blocks.
        num_channels: width of the network.
        residual: add the identity around each block (off: plain blocks).
        activation: ``"LeakyReLU"`` (slope 0.2), ``"Swish"``, ``"ELU"`` or ``"none"``.
        norm: ``"batch"``, ``"instance"`` (both affine, as in the original) or ``"none"``.
        padding: ``"reflection"``, ``"replication"`` or ``"zero"`` for the outer convolutions.
        sigmoid: end with a sigmoid (the original always does).

    Any input size works (:attr:`multiple` is 1).
    """

    multiple: int = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_blocks: int = 10,
        num_channels: int = 16,
        residual: bool = True,
        activation: str = "LeakyReLU",
        norm: str = "batch",
        padding: str = "reflection",
        sigmoid: bool = True,
    ) -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("norm", norm, NORMS)
        check_choice("padding", padding, PADDINGS)
        if num_blocks < 0 or num_channels < 1:
            raise ConfigError(
                f"num_blocks must be >= 0 and num_channels >= 1, got {num_blocks}, {num_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        block_cls = ResidualBlock if residual else nn.Sequential
        layers: list[nn.Module] = [
            conv(in_channels, num_channels, 3, bias=True, padding=padding),
            _act(activation),
        ]
        for _ in range(num_blocks):
            layers.append(block_cls(*_block(num_channels, norm, activation)))
        layers += [
            nn.Conv2d(num_channels, num_channels, 3, 1, 1),
            _norm(norm, num_channels, affine=True),
            conv(num_channels, out_channels, 3, bias=True, padding=padding),
            nn.Sigmoid() if sigmoid else nn.Identity(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# The constructor's parameters shadow the factories' names.
_act = activation
_norm = norm


def _block(num_channels: int, norm_kind: str, act: str) -> list[nn.Module]:
    return [
        nn.Conv2d(num_channels, num_channels, 3, 1, 1, bias=False),
        _norm(norm_kind, num_channels, affine=True),
        _act(act),
        nn.Conv2d(num_channels, num_channels, 3, 1, 1, bias=False),
        _norm(norm_kind, num_channels, affine=True),
    ]
