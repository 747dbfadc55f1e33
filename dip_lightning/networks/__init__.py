"""Networks of Deep Image Prior: the skip encoder-decoder, the U-Net and the ResNet.

Every network takes ``in_channels, out_channels`` as its first two positional parameters and
simple typed keywords after them, and exposes ``multiple``: the factor the input height and
width must be divisible by.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dip_lightning.errors import ConfigError

from .blocks import (
    Concat,
    Downsampler,
    activation,
    conv,
    get_kernel,
    lanczos_kernel,
    norm,
)
from .grouped import group_networks, split_output
from .resnet import ResidualBlock, ResNet
from .skip import SkipNet
from .unet import UNet

__all__ = [
    "NETWORKS",
    "Concat",
    "Downsampler",
    "ResNet",
    "ResidualBlock",
    "SkipNet",
    "UNet",
    "activation",
    "build_network",
    "conv",
    "count_parameters",
    "get_kernel",
    "group_networks",
    "input_multiple",
    "lanczos_kernel",
    "norm",
    "split_output",
]

#: Network classes by name (``"skip"``, ``"unet"``, ``"resnet"``).
NETWORKS: dict[str, type[nn.Module]] = {"skip": SkipNet, "unet": UNet, "resnet": ResNet}


def build_network(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """Build a network by name (case-insensitive: ``"skip"``, ``"unet"``, ``"resnet"``).

    ``kwargs`` are passed to the class's constructor.
    """
    key = name.lower()
    if key not in NETWORKS:
        choices = ", ".join(repr(n) for n in NETWORKS)
        raise ConfigError(f"unknown network {name!r}; expected one of {choices}")
    return NETWORKS[key](in_channels, out_channels, **kwargs)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def input_multiple(module: nn.Module) -> int:
    """The ``multiple`` of a network (1 for modules that do not declare one)."""
    return int(getattr(module, "multiple", 1))
