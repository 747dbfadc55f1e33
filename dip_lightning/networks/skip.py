"""The encoder-decoder with skip connections of Deep Image Prior (the authors' ``skip``).

Structure, level by level from the top (as built by the authors' ``models/skip.py``)::

    [Concat(skip_i, deeper_i) if channels_skip[i] > 0 else deeper_i]
    BN(channels_skip[i] + k_i)
    conv(filter_size_up[i]) -> BN -> act                 # to channels_up[i]
    [conv(1x1) -> BN -> act]                             # if need_1x1_up

    skip_i   = conv(filter_size_skip) -> BN -> act       # to channels_skip[i]
    deeper_i = conv(filter_size_down[i], stride 2 | downsample) -> BN -> act
               conv(filter_size_down[i]) -> BN -> act
               [level i + 1]                             # absent at the deepest level
               Upsample(x2, upsample_mode[i])

where ``k_i`` is ``channels_up[i + 1]`` (``channels_down[i]`` at the deepest level). The top
level is followed by a 1x1 convolution to ``out_channels`` and a sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from dip_lightning.errors import ConfigError

from .blocks import (
    ACTIVATIONS,
    DOWNSAMPLE_MODES,
    PADDINGS,
    UPSAMPLE_MODES,
    Concat,
    activation,
    check_choice,
    conv,
)
from .spectral import GaussianUpsample, MeanOnlyBatchNorm

__all__ = ["SkipNet"]

_T = TypeVar("_T", int, str)


def _level_count(values: dict[str, int | str | list[int] | list[str]], levels: int) -> int:
    """Number of levels: the common length of the list arguments, else ``levels``."""
    lengths = {name: len(v) for name, v in values.items() if isinstance(v, list | tuple)}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ConfigError(f"per-level lists must all have the same length: {detail}")
    n = next(iter(lengths.values())) if lengths else levels
    if n < 1:
        raise ConfigError(f"the skip network needs at least one level, got {n}")
    if n > 12:
        raise ConfigError(
            f"the skip network has {n} levels, so it runs at multiples of 2**{n} pixels; use at "
            "most 12 (5 in the paper)"
        )
    return n


def _broadcast(value: _T | list[_T], n: int) -> list[_T]:
    """``value`` as a list of ``n`` entries (a list is returned as a copy)."""
    return list(value) if isinstance(value, list | tuple) else [value] * n


class SkipNet(nn.Module):
    """Deep Image Prior encoder-decoder with skip connections (the authors' ``skip``).

    Args:
        in_channels: channels of the input (noise) tensor.
        out_channels: channels of the output image.
        channels_down: channels of the downsampling branch per level (int: same at every level).
        channels_up: channels of the upsampling branch per level.
        channels_skip: channels of the skip branch per level; 0 disables the skip at that level.
        levels: number of levels when all per-level arguments are ints; when any of them is a
            list, its length fixes the number of levels (all lists must have equal length).
        filter_size_down: kernel size of the downsampling convolutions (per level).
        filter_size_up: kernel size of the upsampling convolution (per level).
        filter_size_skip: kernel size of the skip convolution.
        need_1x1_up: add a 1x1 conv + BN + activation after each upsampling convolution.
        upsample_mode: ``"nearest"``, ``"bilinear"`` or ``"gaussian"`` (nearest, then a fixed
            Gaussian blur: the low-pass upsampler of Shi et al.) (per level).
        downsample_mode: ``"stride"``, ``"avg"``, ``"max"``, ``"lanczos2"`` or ``"lanczos3"``.
        padding: ``"reflection"`` or ``"zero"`` (``"replication"`` is accepted too).
        activation: ``"LeakyReLU"`` (slope 0.2), ``"Swish"``, ``"ELU"`` or ``"none"``.
        batch_norm: use batch normalisation (off: identity in its place).
        sigmoid: end with a sigmoid.
        bias: convolutions have a bias.
        lipschitz: bound every convolution's largest singular value (as an operator with its
            padding and stride) by this value, ``lambda`` of Shi et al. (about 1.4 to 1.8), with
            :class:`~dip_lightning.networks.spectral.LipschitzConv2d`; ``None`` (the default)
            leaves them free. With a bound, batch normalisation (which would undo it) becomes
            :class:`~dip_lightning.networks.spectral.MeanOnlyBatchNorm`, as in the authors'
            code (one parameter per channel instead of two).

    The input height and width must be divisible by :attr:`multiple` (``2 ** levels``) for the
    output to have the input's size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        channels_down: int | list[int] = 128,
        channels_up: int | list[int] = 128,
        channels_skip: int | list[int] = 4,
        levels: int = 5,
        filter_size_down: int | list[int] = 3,
        filter_size_up: int | list[int] = 3,
        filter_size_skip: int = 1,
        need_1x1_up: bool = True,
        upsample_mode: str | list[str] = "bilinear",
        downsample_mode: str = "stride",
        padding: str = "reflection",
        activation: str = "LeakyReLU",
        batch_norm: bool = True,
        sigmoid: bool = True,
        bias: bool = True,
        lipschitz: float | None = None,
    ) -> None:
        super().__init__()
        n_levels = _level_count(
            {
                "channels_down": channels_down,
                "channels_up": channels_up,
                "channels_skip": channels_skip,
                "filter_size_down": filter_size_down,
                "filter_size_up": filter_size_up,
                "upsample_mode": upsample_mode,
            },
            levels,
        )
        down = _broadcast(channels_down, n_levels)
        up = _broadcast(channels_up, n_levels)
        skip = _broadcast(channels_skip, n_levels)
        fs_down = _broadcast(filter_size_down, n_levels)
        fs_up = _broadcast(filter_size_up, n_levels)
        up_modes = _broadcast(upsample_mode, n_levels)
        for mode in up_modes:
            check_choice("upsample_mode", mode, UPSAMPLE_MODES)
        check_choice("downsample_mode", downsample_mode, DOWNSAMPLE_MODES)
        check_choice("padding", padding, PADDINGS)
        check_choice("activation", activation, ACTIVATIONS)
        if any(c < 1 for c in down + up) or any(c < 0 for c in skip):
            raise ConfigError(
                "channels_down/channels_up must be >= 1 and channels_skip >= 0, got "
                f"{down}, {up}, {skip}"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = n_levels
        self._multiple = 2**n_levels

        self.body = self._build(
            in_channels,
            down,
            up,
            skip,
            fs_down,
            fs_up,
            filter_size_skip,
            need_1x1_up,
            up_modes,
            downsample_mode,
            padding,
            activation,
            batch_norm,
            bias,
            lipschitz,
        )
        self.head = nn.Sequential(
            conv(up[0], out_channels, 1, bias=bias, padding=padding, lipschitz=lipschitz),
            nn.Sigmoid() if sigmoid else nn.Identity(),
        )

    @property
    def multiple(self) -> int:
        """Factor that the input height and width must be divisible by (``2 ** levels``)."""
        return self._multiple

    @staticmethod
    def _build(
        in_channels: int,
        down: Sequence[int],
        up: Sequence[int],
        skip: Sequence[int],
        fs_down: Sequence[int],
        fs_up: Sequence[int],
        fs_skip: int,
        need_1x1_up: bool,
        up_modes: Sequence[str],
        downsample_mode: str,
        padding: str,
        act: str,
        batch_norm: bool,
        bias: bool,
        lipschitz: float | None = None,
    ) -> nn.Sequential:
        """Build the levels from the top, each nesting the next inside its deeper branch."""

        def bn(n: int) -> nn.Module:
            if not batch_norm:
                return nn.Identity()
            # dividing by the std would undo the bound: mean-only, as in Shi et al.'s code
            return nn.BatchNorm2d(n) if lipschitz is None else MeanOnlyBatchNorm(n)

        def cba(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
            return [
                conv(
                    cin,
                    cout,
                    k,
                    stride,
                    bias=bias,
                    padding=padding,
                    downsample_mode=downsample_mode,
                    lipschitz=lipschitz,
                ),
                bn(cout),
                activation(act),
            ]

        n = len(down)
        top = nn.Sequential()
        level = top
        depth = in_channels
        for i in range(n):
            deepest = i == n - 1
            deeper = nn.Sequential(
                *cba(depth, down[i], fs_down[i], 2), *cba(down[i], down[i], fs_down[i])
            )
            deeper_main = nn.Sequential()
            if not deepest:
                deeper.append(deeper_main)
            kwargs = {"align_corners": False} if up_modes[i] == "bilinear" else {}
            if up_modes[i] == "gaussian":
                deeper.append(GaussianUpsample(2))
            else:
                deeper.append(nn.Upsample(scale_factor=2, mode=up_modes[i], **kwargs))
            k = down[i] if deepest else up[i + 1]

            if skip[i] > 0:
                level.append(Concat(1, nn.Sequential(*cba(depth, skip[i], fs_skip)), deeper))
            else:
                level.append(deeper)
            level.append(bn(skip[i] + k))
            level.extend(cba(skip[i] + k, up[i], fs_up[i]))
            if need_1x1_up:
                level.extend(cba(up[i], up[i], 1))

            depth = down[i]
            level = deeper_main
        return top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
