"""The super-resolution operator: fixed-kernel downsampling, as in the authors' notebook.

The authors' super-resolution loss compares the low-resolution image with
``Downsampler(n_planes=3, factor=factor, kernel_type='lanczos2', phase=0.5,
preserve_size=True)`` applied to the network output; :class:`Downsample` is that operator
(built on :class:`dip_lightning.networks.blocks.Downsampler`), with its adjoint.
:func:`bicubic_upsample` is the bicubic baseline of the paper's tables.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import functional_call

from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError
from dip_lightning.networks.blocks import Downsampler

__all__ = ["DOWNSAMPLE_FACTORS", "DOWNSAMPLE_KERNELS", "Downsample", "bicubic_upsample"]

#: Super-resolution factors :class:`Downsample` accepts.
DOWNSAMPLE_FACTORS: tuple[int, ...] = (2, 4, 8)
#: Kernels :class:`Downsample` accepts, with their natural phase (the one the authors use).
DOWNSAMPLE_KERNELS: dict[str, float] = {
    "lanczos2": 0.5,
    "lanczos3": 0.5,
    "gauss12": 0.0,
    "gauss1sq2": 0.0,
    "box": 0.5,
}


def _choices(values: Iterable[object]) -> str:
    return ", ".join(str(v) for v in values)


class Downsample(Degradation):
    """Downsampling by ``factor`` with a fixed kernel: ``A(x) = (k * pad(x))[::f, ::f]``.

    Each channel is convolved with the 2-D kernel ``kernel`` at stride ``factor`` after
    replication padding (the authors' ``preserve_size=True``), so an ``(N, C, f H, f W)`` input
    gives ``(N, C, H, W)``, and a constant image stays exactly that constant everywhere (the
    kernel sums to 1). Kernels: ``"lanczos2"`` (the paper's), ``"lanczos3"`` (phase 0.5),
    ``"gauss12"``, ``"gauss1sq2"`` (phase 0) and ``"box"`` (``factor x factor`` average, phase
    0.5); ``phase=None`` picks the kernel's own phase. ``simulate`` is ``A`` (no noise).

    Args:
        factor: 2, 4 or 8.
        channels: number of image channels (the convolution is depthwise).
        kernel: one of :data:`DOWNSAMPLE_KERNELS`.
        phase: 0 or 0.5; ``None`` for the kernel's own phase.

    >>> op = Downsample(4, channels=3)
    >>> op.observed_size(40, 24)
    (10, 6)
    >>> y = op(torch.full((1, 3, 40, 24), 0.25))
    >>> y.shape, bool(torch.allclose(y, torch.full_like(y, 0.25)))
    (torch.Size([1, 3, 10, 6]), True)
    """

    def __init__(
        self,
        factor: int,
        channels: int,
        kernel: str = "lanczos2",
        phase: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(factor, bool) or factor not in DOWNSAMPLE_FACTORS:
            raise ConfigError(
                f"unsupported super-resolution factor {factor!r}; use one of "
                f"{_choices(DOWNSAMPLE_FACTORS)}"
            )
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels must be a positive integer, got {channels!r}")
        if kernel not in DOWNSAMPLE_KERNELS:
            raise ConfigError(
                f"unknown downsampling kernel {kernel!r}; use one of {_choices(DOWNSAMPLE_KERNELS)}"
            )
        natural = DOWNSAMPLE_KERNELS[kernel]
        phase = natural if phase is None else phase
        if phase != natural:
            raise ConfigError(
                f"the {kernel} kernel is implemented with phase {natural:g} only, got phase "
                f"{phase:g}; omit phase or set it to {natural:g}"
            )
        self.factor = int(factor)
        self.channels = channels
        self.kernel_type = kernel
        self.phase = float(phase)
        self.downsampler = Downsampler(
            n_planes=channels,
            factor=self.factor,
            kernel_type=kernel,
            phase=self.phase,
            kernel_width=self.factor if kernel == "box" else None,
            preserve_size=True,
        )

    @property
    def kernel(self) -> torch.Tensor:
        """The 2-D kernel (``k x k``, sums to 1)."""
        return self.downsampler.kernel

    def extra_repr(self) -> str:
        return f"factor={self.factor}, channels={self.channels}, kernel={self.kernel_type!r}"

    def observed_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.factor, width // self.factor

    def check_image(self, x: torch.Tensor) -> None:
        """Raise :class:`ConfigError` unless ``x`` is ``(N, channels, f H, f W)``."""
        f = self.factor
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ConfigError(
                f"Downsample expects images of shape (N, {self.channels}, H, W), got "
                f"{tuple(x.shape)}"
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % f or w % f:
            raise ConfigError(
                f"a {w}x{h} image cannot be downsampled x{f}: the high-resolution width and "
                f"height must be multiples of {f} (crop it to {w // f * f}x{h // f * f})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        weight = self.downsampler.weight
        if x.dtype != weight.dtype:  # run the same kernel at the input's precision
            return functional_call(self.downsampler, {"weight": weight.to(x.dtype)}, (x,))
        return self.downsampler(x)

    def simulate(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``A(x)``: the low-resolution image, without noise."""
        return self(x)

    def adjoint(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``A^T y``: transposed strided convolution, then the adjoint of replication padding.

        ``size`` is the high-resolution ``(height, width)``; by default ``factor`` times that
        of ``y``. The adjoint of replication padding adds each padded border row (column) onto
        the edge row (column) it copies.
        """
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise ConfigError(
                f"Downsample.adjoint expects (N, {self.channels}, H, W), got {tuple(y.shape)}"
            )
        f, pad = self.factor, self.downsampler.pad
        h, w = size if size is not None else (y.shape[2] * f, y.shape[3] * f)
        if self.observed_size(h, w) != tuple(y.shape[2:]):
            raise ConfigError(
                f"an observation of size {tuple(y.shape[2:])} does not come from a "
                f"{(h, w)} image at factor {f}"
            )
        weight = self.downsampler.weight.to(y.dtype)
        k = weight.shape[-1]
        hp, wp = h + 2 * pad, w + 2 * pad
        out_pad = (hp - ((y.shape[2] - 1) * f + k), wp - ((y.shape[3] - 1) * f + k))
        z = F.conv_transpose2d(y, weight, stride=f, output_padding=out_pad, groups=self.channels)
        return _replicate_pad_adjoint(z, pad)


def _replicate_pad_adjoint(z: torch.Tensor, pad: int) -> torch.Tensor:
    """Adjoint of ``F.pad(x, (pad,) * 4, mode="replicate")`` applied to a padded ``z``."""
    if pad == 0:
        return z
    for dim in (2, 3):
        n = z.shape[dim] - 2 * pad
        before = z.narrow(dim, 0, pad).sum(dim, keepdim=True)
        after = z.narrow(dim, pad + n, pad).sum(dim, keepdim=True)
        inner = z.narrow(dim, pad, n).clone()
        inner.narrow(dim, 0, 1).add_(before)
        inner.narrow(dim, n - 1, 1).add_(after)
        z = inner
    return z


def _bicubic_plane(plane: np.ndarray, factor: int) -> np.ndarray:
    """Pillow's bicubic resize of one float32 plane, clamped between and after its two passes."""
    h, w = plane.shape
    wide = Image.fromarray(np.ascontiguousarray(plane)).resize(
        (w * factor, h), Image.Resampling.BICUBIC
    )
    wide = Image.fromarray(np.clip(np.asarray(wide), 0.0, 1.0))
    tall = wide.resize((w * factor, h * factor), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(tall), 0.0, 1.0)


def bicubic_upsample(y: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling by ``factor`` with Pillow (the paper's baseline), clamped to [0, 1].

    ``y`` is ``(C, H, W)`` or ``(N, C, H, W)``. Each channel is resized in floating point
    (Pillow mode ``F``, ``Image.BICUBIC``) in Pillow's two passes, horizontal then vertical,
    clamping to ``[0, 1]`` after each as Pillow's 8-bit resampling does, so on an 8-bit image
    the result is the authors' ``img_LR_pil.resize(size, Image.BICUBIC)`` up to rounding
    (about one grey level) without quantising. Returns the same rank, dtype and device.

    >>> bicubic_upsample(torch.full((3, 5, 7), 0.5), 4).shape
    torch.Size([3, 20, 28])
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ConfigError(f"the upsampling factor must be a positive integer, got {factor!r}")
    if y.dim() not in (3, 4):
        raise ConfigError(f"expected an image (C, H, W) or (N, C, H, W), got {tuple(y.shape)}")
    batch = y if y.dim() == 4 else y[None]
    n, c, h, w = batch.shape
    planes = batch.detach().to("cpu", torch.float32).reshape(n * c, h, w).numpy()
    up = np.stack([_bicubic_plane(p, factor) for p in planes])
    out = torch.from_numpy(up).reshape(n, c, h * factor, w * factor)
    out = out.to(device=y.device, dtype=y.dtype)
    return out if y.dim() == 4 else out[0]
