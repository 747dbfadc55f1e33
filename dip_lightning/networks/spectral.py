"""Controls of the spectral bias of Deep Image Prior networks (Shi et al., IJCV 2022).

Shi, Mettes, Maji, Snoek, "On Measuring and Controlling the Spectral Bias of the Deep Image
Prior", IJCV 2022, slow the fit of high frequencies with two changes to the skip network:

* :class:`LipschitzConv2d`: a convolution whose largest singular value, as a linear operator
  from the layer's input to its output, is at most ``bound`` (their ``lambda``, about 1.4 to
  1.8). It is the exact operator norm of the convolution *with its padding and stride* on the
  layer's actual input size, estimated by power iteration on the operator and its adjoint (the
  adjoint by automatic differentiation, so reflection and replication padding are exact too).
  The weight used in the forward pass is ``W / max(1, sigma(W) / bound)`` (Gouk et al.,
  "Regularisation of neural networks by enforcing Lipschitz continuity", 2021), and the
  gradient flows through ``sigma`` as in :func:`torch.nn.utils.parametrizations.spectral_norm`.
  The authors' code divides by the largest singular value of the weight reshaped to a
  ``(out, in * k * k)`` matrix instead, which is not the norm of the convolution.
* :class:`MeanOnlyBatchNorm`: the normalisation that goes with the bounded convolutions in the
  authors' code. Batch normalisation divides by the features' std, which undoes any scaling of
  the weights before it; subtracting the mean (a projection, of norm 1) and adding a learnt bias
  keeps the bound.
* :class:`GaussianUpsample`: nearest-neighbour upsampling by 2 followed by a fixed Gaussian
  blur, a low-pass upsampler with no trainable parameter.

Both are off by default; :class:`~dip_lightning.networks.SkipNet` applies them with
``lipschitz=`` and ``upsample_mode="gaussian"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dip_lightning.errors import ConfigError

__all__ = [
    "GaussianUpsample",
    "LipschitzConv2d",
    "MeanOnlyBatchNorm",
    "conv_operator",
    "conv_operator_norm",
    "gaussian_kernel",
]

_PAD_MODES = {"reflection": "reflect", "replication": "replicate"}


def conv_operator(
    x: torch.Tensor,
    weight: torch.Tensor,
    conv: nn.Conv2d,
    padding: str = "zero",
    pad: int = 0,
) -> torch.Tensor:
    """The linear part of ``conv`` (no bias) with ``weight``, after an explicit ``pad``-pixel
    ``"reflection"`` / ``"replication"`` padding layer (``"zero"``: none beyond ``conv``'s own).
    """
    if pad > 0 and padding != "zero":
        x = F.pad(x, (pad, pad, pad, pad), mode=_PAD_MODES[padding])
    return F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


def _normalize(t: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return t / t.norm().clamp_min(eps)


def _normalize_groups(t: torch.Tensor, groups: int, eps: float = 1e-12) -> torch.Tensor:
    """``t`` with each of its ``groups`` blocks of channels (dim 1) scaled to unit norm."""
    if groups == 1:
        return _normalize(t, eps)
    flat = t.reshape(t.shape[0], groups, -1)
    norms = flat.norm(dim=(0, 2), keepdim=True).clamp_min(eps)
    return (flat / norms).reshape(t.shape)


def _group_sums(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum of each of the ``groups`` blocks of channels (dim 1) of ``t``: shape ``(groups,)``."""
    return t.reshape(t.shape[0], groups, -1).sum(dim=(0, 2))


def _power_iterations(
    u: torch.Tensor,
    weight: torch.Tensor,
    conv: nn.Conv2d,
    padding: str,
    pad: int,
    iterations: int,
    groups: int = 1,
) -> torch.Tensor:
    """``iterations`` steps of ``u <- A^T A u / |A^T A u|``; the adjoint by autograd. With
    ``groups`` > 1 the operator is block diagonal (a grouped convolution) and each block of
    channels is normalised on its own."""
    weight = weight.detach()
    with torch.enable_grad():
        for _ in range(iterations):
            point = u.detach().requires_grad_(True)
            out = conv_operator(point, weight, conv, padding, pad)
            grad_out = _normalize_groups(out.detach(), groups)
            (adjoint,) = torch.autograd.grad(out, point, grad_outputs=grad_out)
            u = _normalize_groups(adjoint.detach(), groups)
    return u.detach()


def _start_vector(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A fixed (seeded) random unit vector, so a fit with this layer is reproducible."""
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(shape, generator=generator, dtype=torch.float64)
    return _normalize(u).to(device=like.device, dtype=like.dtype)


def conv_operator_norm(
    conv: nn.Conv2d,
    input_size: tuple[int, int],
    padding: str = "zero",
    pad: int = 0,
    iterations: int = 200,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Largest singular value of ``conv`` (no bias; with its padding and stride) as a linear
    map on ``(in_channels, *input_size)`` images, by ``iterations`` power iterations.

    >>> conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.fill_(1.0)  # a 3x3 box sum, zero padding
    >>> round(float(conv_operator_norm(conv, (8, 8))), 3)  # exact: (1 + 2 cos(pi / 9))**2
    8.291
    """
    w = conv.weight if weight is None else weight
    u = _start_vector((1, conv.in_channels, *input_size), w)
    u = _power_iterations(u, w, conv, padding, pad, iterations)
    with torch.no_grad():
        return conv_operator(u, w, conv, padding, pad).norm()


class LipschitzConv2d(nn.Module):
    """``conv`` (with its padding layer) rescaled so that its operator norm is at most
    ``bound``: the forward pass uses ``W / max(1, sigma / bound)``.

    ``sigma`` is the largest singular value of the convolution as a linear map on the layer's
    input size (see the module docstring). It is tracked by power iteration with a persistent
    vector ``u`` (a buffer, saved in checkpoints): ``warmup_iterations`` when an input size is
    first seen, then ``n_power_iterations`` per training forward (the weights move little per
    step). In evaluation mode ``u`` is not updated. The last value is kept in the buffer
    :attr:`sigma` (of the unnormalised weight).

    Args:
        conv: the convolution; its weight and bias stay its parameters (parameter count and
            initialisation unchanged).
        bound: the largest singular value allowed (``lambda``).
        padding: ``"zero"`` (the convolution's own padding), ``"reflection"`` or
            ``"replication"``: an explicit padding of ``pad`` pixels before the convolution.
        pad: pixels of explicit padding on each side.
        n_power_iterations: power iterations per training forward.
        warmup_iterations: power iterations when ``u`` is (re)initialised.

    >>> _ = torch.manual_seed(0)
    >>> conv = nn.Conv2d(2, 3, 3, stride=2, bias=False)
    >>> layer = LipschitzConv2d(conv, 0.5, padding="reflection", pad=1, warmup_iterations=100)
    >>> y = layer(torch.rand(1, 2, 9, 8))
    >>> y.shape, bool(layer.sigma > 0.5)
    (torch.Size([1, 3, 5, 4]), True)
    >>> normalized = layer.normalized_weight(torch.Size([2, 9, 8]))
    >>> bound = conv_operator_norm(conv, (9, 8), "reflection", 1, 100, weight=normalized)
    >>> round(float(bound), 4)
    0.5
    """

    u: torch.Tensor
    sigma: torch.Tensor
    #: independent convolutions in ``conv`` (block-diagonal operator), each bounded on its own
    groups: int = 1

    def __init__(
        self,
        conv: nn.Conv2d,
        bound: float,
        *,
        padding: str = "zero",
        pad: int = 0,
        n_power_iterations: int = 1,
        warmup_iterations: int = 30,
    ) -> None:
        super().__init__()
        if not (math.isfinite(bound) and bound > 0):
            raise ConfigError(f"the Lipschitz bound must be a positive number, got {bound}")
        if padding not in ("zero", *_PAD_MODES):
            raise ConfigError(
                f"unknown padding {padding!r}; expected 'zero', 'reflection' or 'replication'"
            )
        if n_power_iterations < 1 or warmup_iterations < 1:
            raise ConfigError("n_power_iterations and warmup_iterations must be >= 1")
        self.conv = conv
        self.bound = float(bound)
        self.padding = padding
        self.pad = int(pad) if padding != "zero" else 0
        self.n_power_iterations = int(n_power_iterations)
        self.warmup_iterations = int(warmup_iterations)
        self.register_buffer("u", torch.zeros(0))
        self.register_buffer("sigma", torch.tensor(float("nan")))

    def extra_repr(self) -> str:
        return f"bound={self.bound}, padding={self.padding!r}, pad={self.pad}"

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # ``u`` takes the size of the input last seen: adopt the saved size before loading.
        saved = state_dict.get(prefix + "u")
        if isinstance(saved, torch.Tensor) and saved.shape != self.u.shape:
            self.u = torch.zeros_like(saved, device=self.u.device, dtype=self.u.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def normalized_weight(self, input_shape: torch.Size) -> torch.Tensor:
        """The weight of the forward pass for inputs of shape ``(C, H, W)`` (updates ``u``
        in training mode, or when ``u`` does not fit that shape yet). With :attr:`groups` > 1
        each block of ``groups`` is normalised by its own largest singular value."""
        weight = self.conv.weight
        groups = self.groups
        shape = (1, *input_shape)
        iterations = self.n_power_iterations if self.training else 0
        if tuple(self.u.shape) != shape:
            block = (1, input_shape[0] // groups, *input_shape[1:])
            self.u = _start_vector(block, weight).repeat(1, groups, 1, 1)
            iterations = self.warmup_iterations
        if iterations:
            u = _power_iterations(
                self.u, weight, self.conv, self.padding, self.pad, iterations, groups
            )
            self.u.copy_(u)
        out = conv_operator(self.u, weight, self.conv, self.padding, self.pad)
        v = _normalize_groups(out.detach(), groups)
        # sigma = <v, A_W u> = |A_W u| at this W, differentiable in W (u, v fixed)
        sigma = _group_sums(v * out, groups)
        self.sigma.copy_(sigma.detach().reshape(self.sigma.shape))
        scale = torch.clamp(sigma / self.bound, min=1.0)
        per_channel = scale.repeat_interleave(weight.shape[0] // groups)
        return weight / per_channel.view(-1, *([1] * (weight.dim() - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.normalized_weight(x.shape[1:])
        out = conv_operator(x, weight, self.conv, self.padding, self.pad)
        if self.conv.bias is not None:
            out = out + self.conv.bias.view(1, -1, 1, 1)
        return out


class MeanOnlyBatchNorm(nn.Module):
    """Subtract each channel's mean over the image, then add a learnt per-channel bias (the
    authors' ``MeanOnlyBatchNorm``; the mean is taken per image, in training and evaluation
    alike). 1-Lipschitz up to the bias.

    >>> norm = MeanOnlyBatchNorm(2)
    >>> x = torch.arange(8.0).view(1, 2, 2, 2)
    >>> norm(x)[0, :, 0, 0].tolist(), sum(p.numel() for p in norm.parameters())
    ([-1.5, -1.5], 2)
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.bias = nn.Parameter(torch.zeros(num_features))

    def extra_repr(self) -> str:
        return str(self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=(-2, -1), keepdim=True) + self.bias.view(1, -1, 1, 1)


def gaussian_kernel(width: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """``(width, width)`` Gaussian of std ``sigma`` pixels, normalised to sum 1.

    ``width=5, sigma=1.0`` is the kernel of the authors' Gaussian upsampler (their
    ``get_kernel(5, 0.5)``, whose distances are halved).

    >>> k = gaussian_kernel(3, 1.0)
    >>> round(float(k.sum()), 6), round(float(k[1, 1]), 4), round(float(k[0, 0]), 4)
    (1.0, 0.2042, 0.0751)
    """
    if width < 1 or sigma <= 0:
        raise ConfigError(f"a Gaussian kernel needs width >= 1 and sigma > 0, got {width}, {sigma}")
    offsets = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = torch.outer(line, line)
    return (kernel / kernel.sum()).to(torch.get_default_dtype())


class GaussianUpsample(nn.Module):
    """Upsample by ``scale_factor`` (nearest neighbour), then blur each channel with a fixed
    Gaussian (:func:`gaussian_kernel`, replicate padding). No trainable parameters.

    >>> up = GaussianUpsample()
    >>> up(torch.ones(1, 3, 4, 5)).shape
    torch.Size([1, 3, 8, 10])
    >>> torch.allclose(up(torch.ones(1, 1, 2, 2)), torch.ones(1, 1, 4, 4))
    True
    """

    kernel: torch.Tensor

    def __init__(self, scale_factor: int = 2, width: int = 5, sigma: float = 1.0) -> None:
        super().__init__()
        self.scale_factor = int(scale_factor)
        self.width = int(width)
        self.sigma_px = float(sigma)
        kernel = gaussian_kernel(width, sigma)[None, None]
        self.register_buffer("kernel", kernel, persistent=False)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, width={self.width}, sigma={self.sigma_px}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")
        n, c, h, w = up.shape
        left = (self.width - 1) // 2
        right = self.width - 1 - left
        flat = F.pad(up.reshape(n * c, 1, h, w), (left, right, left, right), mode="replicate")
        return F.conv2d(flat, self.kernel.to(flat.dtype)).reshape(n, c, h, w)
