"""Shared building blocks of the Deep Image Prior networks.

Re-implements the helpers of the authors' ``models/common.py`` and ``models/downsampler.py``
(Ulyanov et al., *Deep Image Prior*): convolutions with reflection or zero padding and an
optional downsampling step, the activation and normalisation factories, the :class:`Concat`
container that centre-crops its branches to a common size, and the fixed-kernel
:class:`Downsampler` (Lanczos, box and Gaussian kernels) that the skip network and the
super-resolution task use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dip_lightning.errors import ConfigError

from .spectral import LipschitzConv2d

__all__ = [
    "ACTIVATIONS",
    "DOWNSAMPLE_MODES",
    "KERNEL_TYPES",
    "NORMS",
    "PADDINGS",
    "UPSAMPLE_MODES",
    "Concat",
    "Downsampler",
    "activation",
    "check_choice",
    "conv",
    "get_kernel",
    "lanczos_kernel",
    "norm",
]

#: Activation names understood by :func:`activation`.
ACTIVATIONS: tuple[str, ...] = ("LeakyReLU", "Swish", "ELU", "none")
#: Padding names understood by :func:`conv`.
PADDINGS: tuple[str, ...] = ("reflection", "replication", "zero")
#: Downsampling modes understood by :func:`conv`.
DOWNSAMPLE_MODES: tuple[str, ...] = ("stride", "avg", "max", "lanczos2", "lanczos3")
#: Upsampling modes of the skip network (``"gaussian"``: nearest, then a fixed Gaussian blur).
UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear", "gaussian")
#: Normalisation names understood by :func:`norm`.
NORMS: tuple[str, ...] = ("batch", "instance", "none")
#: Kernel names understood by :func:`get_kernel` and :class:`Downsampler`.
KERNEL_TYPES: tuple[str, ...] = (
    "lanczos2",
    "lanczos3",
    "gauss12",
    "gauss1sq2",
    "lanczos",
    "gauss",
    "box",
)


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError`` naming them."""
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"unknown {name} {value!r}; expected one of {choices}")
    return value


# --------------------------------------------------------------------------------------------
# activation / normalisation
# --------------------------------------------------------------------------------------------


def activation(name: str = "LeakyReLU") -> nn.Module:
    """Build an activation module by name.

    ``"LeakyReLU"`` (negative slope 0.2, in place), ``"Swish"`` (``x * sigmoid(x)``, i.e.
    :class:`torch.nn.SiLU`), ``"ELU"`` or ``"none"`` (identity).
    """
    check_choice("activation", name, ACTIVATIONS)
    if name == "LeakyReLU":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "Swish":
        return nn.SiLU()
    if name == "ELU":
        return nn.ELU()
    return nn.Identity()


def norm(kind: str, num_features: int, affine: bool | None = None) -> nn.Module:
    """Build a 2-D normalisation layer: ``"batch"``, ``"instance"`` or ``"none"`` (identity).

    ``affine=None`` keeps PyTorch's default for the layer (``True`` for batch norm, ``False``
    for instance norm), as the authors' ``norm_layer(num_features)`` calls do.
    """
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(num_features, affine=True if affine is None else affine)
    if kind == "instance":
        return nn.InstanceNorm2d(num_features, affine=False if affine is None else affine)
    return nn.Identity()


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    bias: bool = True,
    padding: str = "zero",
    downsample_mode: str = "stride",
    lipschitz: float | None = None,
) -> nn.Sequential:
    """Convolution that keeps the spatial size (for odd kernels) up to its stride.

    ``padding="reflection"`` (or ``"replication"``) pads by ``(k - 1) // 2`` with a separate
    padding layer in front of an unpadded convolution; ``"zero"`` lets the convolution pad.
    With ``stride > 1`` and a ``downsample_mode`` other than ``"stride"``, the convolution runs
    at stride 1 and is followed by an average pool, max pool or Lanczos :class:`Downsampler`
    of factor ``stride``, as in the authors' ``conv``.

    ``lipschitz`` bounds the largest singular value of the convolution together with its
    padding (a :class:`~dip_lightning.networks.spectral.LipschitzConv2d` in place of the padding
    layer and the convolution); ``None`` (the default) leaves it free.
    """
    check_choice("padding", padding, PADDINGS)
    check_choice("downsample_mode", downsample_mode, DOWNSAMPLE_MODES)
    downsampler: nn.Module | None = None
    if stride != 1 and downsample_mode != "stride":
        if downsample_mode == "avg":
            downsampler = nn.AvgPool2d(stride, stride)
        elif downsample_mode == "max":
            downsampler = nn.MaxPool2d(stride, stride)
        else:
            downsampler = Downsampler(
                out_channels, stride, kernel_type=downsample_mode, phase=0.5, preserve_size=True
            )
        stride = 1

    to_pad = (kernel_size - 1) // 2
    layers: list[nn.Module] = []
    if lipschitz is not None:  # the padding goes inside, as part of the bounded operator
        inner = to_pad if padding == "zero" else 0
        layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=inner, bias=bias)
        layers.append(LipschitzConv2d(layer, lipschitz, padding=padding, pad=to_pad))
    else:
        if padding != "zero":
            if to_pad > 0:  # a zero-width pad layer would be a no-op
                pad_cls = nn.ReflectionPad2d if padding == "reflection" else nn.ReplicationPad2d
                layers.append(pad_cls(to_pad))
            to_pad = 0
        layers.append(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=to_pad, bias=bias)
        )
    if downsampler is not None:
        layers.append(downsampler)
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# Concat
# --------------------------------------------------------------------------------------------


class Concat(nn.Module):
    """Run every branch on the same input and concatenate the outputs along ``dim``.

    When the branch outputs differ in height or width, each is centre-cropped to the smallest
    height and width first (offset ``(size - target) // 2``, as in the authors' code); when they
    agree no cropping is done.
    """

    def __init__(self, dim: int, *branches: nn.Module) -> None:
        super().__init__()
        self.dim = dim
        self.branches = nn.ModuleList(branches)

    def __len__(self) -> int:
        return len(self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        h = min(o.shape[2] for o in outputs)
        w = min(o.shape[3] for o in outputs)
        if any(o.shape[2] != h or o.shape[3] != w for o in outputs):
            cropped = []
            for o in outputs:
                top = (o.shape[2] - h) // 2
                left = (o.shape[3] - w) // 2
                cropped.append(o[:, :, top : top + h, left : left + w])
            outputs = cropped
        return torch.cat(outputs, dim=self.dim)


# --------------------------------------------------------------------------------------------
# fixed-kernel downsampling
# --------------------------------------------------------------------------------------------


def _lanczos_1d(d: torch.Tensor, support: int) -> torch.Tensor:
    """Lanczos window ``support * sin(pi d) sin(pi d / support) / (pi d)^2``, 1 at ``d == 0``."""
    safe = torch.where(d == 0, torch.ones_like(d), d)
    val = support * torch.sin(math.pi * safe) * torch.sin(math.pi * safe / support)
    val = val / (math.pi * math.pi * safe * safe)
    return torch.where(d == 0, torch.ones_like(d), val)


def lanczos_kernel(
    factor: int, support: int, phase: float = 0.5, kernel_width: int | None = None
) -> torch.Tensor:
    """Normalised 2-D Lanczos kernel of the authors' ``get_kernel`` (float64).

    ``kernel_width`` defaults to ``2 * support * factor + 1`` (the authors' ``lanczos2`` /
    ``lanczos3`` widths); with ``phase=0.5`` the kernel has ``kernel_width - 1`` taps per side.
    """
    if support <= 0:
        raise ConfigError(f"support must be positive, got {support}")
    if phase not in (0, 0.5):
        raise ConfigError(f"phase must be 0 or 0.5, got {phase}")
    if kernel_width is None:
        kernel_width = 2 * support * factor + 1
    size = kernel_width - 1 if phase == 0.5 else kernel_width
    center = (kernel_width + 1) / 2.0
    idx = torch.arange(1, size + 1, dtype=torch.float64)
    offset = idx + 0.5 - center if phase == 0.5 else idx - center
    w1 = _lanczos_1d(offset.abs() / factor, support)
    kernel = torch.outer(w1, w1)
    return kernel / kernel.sum()


def _gauss_kernel(kernel_width: int, sigma: float) -> torch.Tensor:
    # The authors' distances are halved independently of the factor; reproduced as is.
    center = (kernel_width + 1.0) / 2.0
    idx = torch.arange(1, kernel_width + 1, dtype=torch.float64)
    d = (idx - center) / 2.0
    sq = d[:, None] ** 2 + d[None, :] ** 2
    sigma_sq = sigma * sigma
    kernel = torch.exp(-sq / (2 * sigma_sq)) / (2.0 * math.pi * sigma_sq)
    return kernel / kernel.sum()


def _resolve_kernel(
    kernel_type: str,
    factor: int,
    kernel_width: int | None,
    support: int | None,
    sigma: float | None,
) -> tuple[str, int | None, int | None, float | None]:
    """Map the named kernels (``lanczos2`` ...) to a base type and its width/support/sigma."""
    check_choice("kernel_type", kernel_type, KERNEL_TYPES)
    if kernel_type == "lanczos2":
        return "lanczos", 4 * factor + 1, 2, sigma
    if kernel_type == "lanczos3":
        return "lanczos", 6 * factor + 1, 3, sigma
    if kernel_type == "gauss12":
        return "gauss", 7, support, 0.5
    if kernel_type == "gauss1sq2":
        return "gauss", 9, support, 1.0 / math.sqrt(2.0)
    return kernel_type, kernel_width, support, sigma


def get_kernel(
    kernel_type: str,
    factor: int,
    phase: float = 0.5,
    kernel_width: int | None = None,
    support: int | None = None,
    sigma: float | None = None,
) -> torch.Tensor:
    """2-D resampling kernel of the authors' ``Downsampler`` (float64, sums to 1).

    ``kernel_type`` is a named kernel -- ``"lanczos2"`` (support 2, width ``4 * factor + 1``),
    ``"lanczos3"`` (support 3, width ``6 * factor + 1``), ``"gauss12"`` (width 7, sigma 1/2),
    ``"gauss1sq2"`` (width 9, sigma 1/sqrt 2), whose presets override ``kernel_width`` /
    ``support`` / ``sigma`` -- or a base type ``"lanczos"`` (needs ``kernel_width`` and
    ``support``), ``"gauss"`` (needs ``kernel_width`` and ``sigma``, phase 0 only) or ``"box"``
    (needs ``kernel_width``, phase 0.5 only).

    With ``phase=0.5`` a Lanczos kernel has ``kernel_width - 1`` taps per side (even), centred
    between pixels; with ``phase=0`` it has ``kernel_width`` taps.
    """
    base, width, sup, sig = _resolve_kernel(kernel_type, factor, kernel_width, support, sigma)
    if phase not in (0, 0.5):
        raise ConfigError(f"phase must be 0 or 0.5, got {phase}")
    if width is None or width < 1:
        raise ConfigError(f"kernel_width must be a positive int for kernel {kernel_type!r}")
    if base == "box":
        if phase != 0.5:
            raise ConfigError("the box kernel is always half-phased: use phase=0.5")
        return torch.full((width, width), 1.0 / (width * width), dtype=torch.float64)
    if base == "gauss":
        if not sig:
            raise ConfigError("sigma must be given for a gauss kernel")
        if phase == 0.5:
            raise ConfigError("phase 0.5 is not implemented for a gauss kernel: use phase=0")
        return _gauss_kernel(width, sig)
    if not sup:
        raise ConfigError("support must be given for a lanczos kernel")
    return lanczos_kernel(factor, sup, phase=phase, kernel_width=width)


class Downsampler(nn.Module):
    """Fixed-kernel downsampling by ``factor``, applied to each channel separately.

    The kernel comes from :func:`get_kernel`; the module is a strided (``stride=factor``)
    depthwise convolution without bias, so it matches the authors' ``Downsampler`` (whose full
    convolution has the kernel on the diagonal and zeros elsewhere). The kernel is a
    non-trainable buffer. With ``preserve_size=True`` the input is replication-padded by
    ``(k - 1) / 2`` for odd kernel sizes ``k`` and ``(k - factor) / 2`` for even ones, so an
    input of size ``factor * n`` gives an output of size ``n``.

    Args:
        n_planes: number of channels (input = output).
        factor: downsampling factor (also the stride).
        kernel_type: see :func:`get_kernel`; default ``"lanczos2"``.
        phase: 0 or 0.5.
        kernel_width, support, sigma: parameters of the base kernel types.
        preserve_size: pad so that the output size is ``input size / factor``.
    """

    weight: torch.Tensor

    def __init__(
        self,
        n_planes: int,
        factor: int,
        kernel_type: str = "lanczos2",
        phase: float = 0.5,
        kernel_width: int | None = None,
        support: int | None = None,
        sigma: float | None = None,
        preserve_size: bool = False,
    ) -> None:
        super().__init__()
        kernel = get_kernel(kernel_type, factor, phase, kernel_width, support, sigma)
        self.n_planes = n_planes
        self.factor = factor
        self.kernel_type = kernel_type
        self.preserve_size = preserve_size
        k = kernel.shape[0]
        self.pad = ((k - 1) // 2 if k % 2 == 1 else (k - factor) // 2) if preserve_size else 0
        weight = kernel.to(torch.get_default_dtype()).expand(n_planes, 1, *kernel.shape)
        self.register_buffer("weight", weight.contiguous(), persistent=False)

    @property
    def kernel(self) -> torch.Tensor:
        """The 2-D kernel (``kernel_size x kernel_size``)."""
        return self.weight[0, 0]

    def extra_repr(self) -> str:
        return (
            f"n_planes={self.n_planes}, factor={self.factor}, kernel_type={self.kernel_type!r}, "
            f"kernel_size={tuple(self.weight.shape[-2:])}, preserve_size={self.preserve_size}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad > 0:
            x = F.pad(x, (self.pad, self.pad, self.pad, self.pad), mode="replicate")
        return F.conv2d(x, self.weight, stride=self.factor, groups=self.n_planes)
