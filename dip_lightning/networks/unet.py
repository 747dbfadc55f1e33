"""The U-Net of Deep Image Prior (the authors' ``models/unet.py``).

Four (plus ``more_layers``) max-pool downsamplings, each followed by two 3x3 conv + norm + ReLU
layers, and as many upsampling steps (transposed convolution, or nearest/bilinear upsampling
followed by a 3x3 conv) whose output is concatenated with the matching encoder features and
passed through two 3x3 conv + ReLU layers (no normalisation on the way up, as in the original).
Channel widths are ``[64, 128, 256, 512, 1024] // feature_scale``.
"""

from __future__ import annotations

import torch
from torch import nn

from dip_lightning.errors import ConfigError

from .blocks import NORMS, PADDINGS, check_choice, conv, norm

__all__ = ["UNet"]

#: Upsampling modes of the U-Net.
UNET_UPSAMPLE_MODES: tuple[str, ...] = ("deconv", "nearest", "bilinear")


def _crop_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre-crop ``x`` to ``h x w`` (no-op when it already has that size)."""
    if x.shape[2] == h and x.shape[3] == w:
        return x
    top = (x.shape[2] - h) // 2
    left = (x.shape[3] - w) // 2
    return x[:, :, top : top + h, left : left + w]


class _DoubleConv(nn.Module):
    """Two 3x3 conv -> [norm] -> ReLU layers (the authors' ``unetConv2``)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_kind: str, bias: bool, padding: str
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            conv(in_channels, out_channels, 3, bias=bias, padding=padding),
            norm(norm_kind, out_channels),
            nn.ReLU(),
        )
        self.conv2 = nn.Sequential(
            conv(out_channels, out_channels, 3, bias=bias, padding=padding),
            norm(norm_kind, out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class _Down(nn.Module):
    """Max-pool by 2, then :class:`_DoubleConv` (the authors' ``unetDown``)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_kind: str, bias: bool, padding: str
    ) -> None:
        super().__init__()
        self.down = nn.MaxPool2d(2, 2)
        self.conv = _DoubleConv(in_channels, out_channels, norm_kind, bias, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.down(x))


class _Up(nn.Module):
    """Upsample, concatenate with the skip features, :class:`_DoubleConv` (``unetUp``)."""

    def __init__(
        self,
        out_channels: int,
        upsample_mode: str,
        bias: bool,
        padding: str,
        same_num_filt: bool = False,
    ) -> None:
        super().__init__()
        num_filt = out_channels if same_num_filt else out_channels * 2
        self.up: nn.Module
        if upsample_mode == "deconv":
            self.up = nn.ConvTranspose2d(num_filt, out_channels, 4, stride=2, padding=1)
        else:
            kwargs = {"align_corners": False} if upsample_mode == "bilinear" else {}
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=upsample_mode, **kwargs),
                conv(num_filt, out_channels, 3, bias=bias, padding=padding),
            )
        self.conv = _DoubleConv(out_channels * 2, out_channels, "none", bias, padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        skip = _crop_to(skip, up.shape[2], up.shape[3])
        return self.conv(torch.cat([up, skip], 1))


class UNet(nn.Module):
    """Deep Image Prior U-Net (the authors' ``UNet``).

    Args:
        in_channels: channels of the input tensor.
        out_channels: channels of the output image.
        feature_scale: divides the widths ``[64, 128, 256, 512, 1024]``.
        more_layers: extra downsampling/upsampling levels below the fourth, at the deepest width.
        concat_x: concatenate the average-pooled input to every encoder output.
        upsample_mode: ``"deconv"``, ``"nearest"`` or ``"bilinear"``.
        padding: ``"zero"``, ``"reflection"`` or ``"replication"``.
        norm: encoder normalisation, ``"batch"``, ``"instance"`` or ``"none"``.
        sigmoid: end with a sigmoid.
        bias: convolutions have a bias.

    The input height and width must be divisible by :attr:`multiple`
    (``2 ** (4 + more_layers)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        feature_scale: int = 4,
        more_layers: int = 0,
        concat_x: bool = False,
        upsample_mode: str = "deconv",
        padding: str = "zero",
        norm: str = "instance",
        sigmoid: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_choice("upsample_mode", upsample_mode, UNET_UPSAMPLE_MODES)
        check_choice("padding", padding, PADDINGS)
        check_choice("norm", norm, NORMS)
        if feature_scale < 1 or more_layers < 0:
            raise ConfigError(
                f"feature_scale must be >= 1 and more_layers >= 0, got {feature_scale}, "
                f"{more_layers}"
            )
        filters = [f // feature_scale for f in (64, 128, 256, 512, 1024)]
        extra = in_channels if concat_x else 0
        if min(filters) - extra < 1:
            raise ConfigError(
                f"feature_scale={feature_scale} leaves too few channels "
                f"({filters}, minus {extra} for concat_x)"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.concat_x = concat_x
        self.more_layers = more_layers
        self._multiple = 2 ** (4 + more_layers)

        self.start = _DoubleConv(in_channels, filters[0] - extra, norm, bias, padding)
        self.downs = nn.ModuleList(
            _Down(filters[i], filters[i + 1] - extra, norm, bias, padding) for i in range(4)
        )
        self.more_downs = nn.ModuleList(
            _Down(filters[4], filters[4] - extra, norm, bias, padding) for _ in range(more_layers)
        )
        self.more_ups = nn.ModuleList(
            _Up(filters[4], upsample_mode, bias, padding, same_num_filt=True)
            for _ in range(more_layers)
        )
        # ups[0] is the deepest (the authors' up4), ups[3] the shallowest (up1)
        self.ups = nn.ModuleList(
            _Up(filters[i], upsample_mode, bias, padding) for i in (3, 2, 1, 0)
        )
        self.pool = nn.AvgPool2d(2, 2)
        self.final = nn.Sequential(
            conv(filters[0], out_channels, 1, bias=bias, padding=padding),
            nn.Sigmoid() if sigmoid else nn.Identity(),
        )

    @property
    def multiple(self) -> int:
        """Factor that the input height and width must be divisible by."""
        return self._multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x
        feats = self.start(x)
        if self.concat_x:
            feats = torch.cat([feats, scaled], 1)
        encoder = [feats]
        for down in [*self.downs, *self.more_downs]:
            feats = down(feats)
            if self.concat_x:
                scaled = self.pool(scaled)
                feats = torch.cat([feats, scaled], 1)
            encoder.append(feats)

        # encoder = [in64, down1..down4, more_1..more_n]
        up = encoder[-1]
        n_more = len(self.more_ups)
        for j in range(n_more):  # deepest first
            up = self.more_ups[n_more - 1 - j](up, encoder[-2 - j])
        for j, up_block in enumerate(self.ups):
            up = up_block(up, encoder[3 - j])
        return self.final(up)
