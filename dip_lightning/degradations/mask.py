"""The masking operator of inpainting: ``A(x) = m * x`` with a fixed binary mask ``m``.

Mask generators (random pixels, rectangles, text) and mask files live apart from the operator,
in :mod:`dip_lightning.degradations.masks`.
"""

from __future__ import annotations

import torch

from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError

__all__ = ["Mask", "check_mask_fits", "check_mask_values"]


def _size(height: int, width: int) -> str:
    return f"{width}x{height}"


def check_mask_values(mask: torch.Tensor, name: str = "the mask") -> None:
    """Raise :class:`ConfigError` unless ``mask`` is binary with both known and missing pixels.

    ``name`` starts the message (``"the mask"``, ``"mask holes.png"``, ...).

    >>> check_mask_values(torch.tensor([[0.0, 1.0]]))
    >>> check_mask_values(torch.zeros(2, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dip_lightning.errors.ConfigError: the mask has no known pixel (all zero, i.e. black); ...
    """
    if mask.numel() == 0:
        raise ConfigError(f"{name} is empty (shape {tuple(mask.shape)})")
    if mask.dtype != torch.bool:
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            example = float(mask[bad].flatten()[0])
            raise ConfigError(
                f"{name} is not binary: it holds values other than 0 and 1, such as {example:g}; "
                "threshold it first (e.g. mask > 0.5)"
            )
    if not bool(mask.any()):
        raise ConfigError(
            f"{name} has no known pixel (all zero, i.e. black); 1 (white) marks a known pixel, "
            "0 (black) a pixel to fill in"
        )
    if bool(mask.all()):
        raise ConfigError(
            f"{name} hides nothing (all one, i.e. white); mark the pixels to fill in with 0 (black)"
        )


def check_mask_fits(
    mask: torch.Tensor, image_shape: tuple[int, ...] | torch.Size, name: str = "the mask"
) -> None:
    """Raise :class:`ConfigError` unless a mask fits an image of shape ``(C, H, W)``.

    ``mask`` is ``(C', H', W')`` or ``(1, C', H', W')`` and ``image_shape`` is ``(C, H, W)`` or
    ``(N, C, H, W)``; the mask fits when ``(H', W') == (H, W)`` and ``C'`` is 1 or ``C``.

    >>> check_mask_fits(torch.ones(1, 4, 5), (3, 4, 5))
    >>> check_mask_fits(torch.ones(1, 4, 5), (3, 5, 5))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dip_lightning.errors.ConfigError: the mask is 5x4 (width x height) but the image is 5x5; ...
    """
    if len(image_shape) not in (3, 4):
        raise ConfigError(
            f"expected an image of shape (C, H, W) or (N, C, H, W), got {tuple(image_shape)}"
        )
    c, h, w = (int(s) for s in image_shape[-3:])
    mc, mh, mw = (int(s) for s in mask.shape[-3:])
    if (mh, mw) != (h, w):
        raise ConfigError(
            f"{name} is {_size(mh, mw)} (width x height) but the image is {_size(h, w)}; "
            "use a mask of the image's size (or resize the image to the mask's)"
        )
    if mc not in (1, c):
        raise ConfigError(
            f"{name} has {mc} channels but the image has {c}; use a gray (single-channel) mask, "
            "or one mask channel per image channel"
        )


class Mask(Degradation):
    """Inpainting operator ``A(x) = m * x`` with a fixed binary mask (1 = known pixel).

    ``mask`` is ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` with ``C`` 1 (one mask for every
    channel) or the image's channel count; it is stored as the buffer :attr:`mask` of shape
    ``(1, C, H, W)`` (saved in checkpoints). Values must be exactly 0 or 1 (booleans are
    accepted), with at least one known and one missing pixel; anything else raises
    :class:`~dip_lightning.errors.ConfigError`. ``simulate`` is ``A`` itself (no noise), and
    ``A`` is its own adjoint and idempotent.

    >>> op = Mask(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    >>> op.mask.shape
    torch.Size([1, 1, 3, 3])
    >>> op(torch.arange(1.0, 10.0).view(1, 1, 3, 3))
    tensor([[[[1., 0., 3.],
              [0., 5., 6.],
              [7., 8., 0.]]]])
    """

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(mask, torch.Tensor):
            raise ConfigError(f"the mask must be a tensor, got {type(mask).__name__}")
        m = mask.detach()
        if m.dim() == 2:
            m = m[None, None]
        elif m.dim() == 3:
            m = m[None]
        elif m.dim() != 4 or m.shape[0] != 1:
            raise ConfigError(
                f"the mask must have shape (H, W), (C, H, W) or (1, C, H, W), "
                f"got {tuple(mask.shape)}"
            )
        if m.is_complex():
            raise ConfigError("the mask must be real, got a complex tensor")
        if not m.is_floating_point():  # bool or integer
            m = m.to(torch.get_default_dtype())
        check_mask_values(m)
        self.register_buffer("mask", m.clone().contiguous())

    @property
    def channels(self) -> int:
        """Number of mask channels (1: shared by every image channel)."""
        return int(self.mask.shape[1])

    @property
    def missing_ratio(self) -> float:
        """Fraction of mask entries that are missing (0).

        >>> Mask(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).missing_ratio
        0.25
        """
        return float(1.0 - self.mask.mean())

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, missing_ratio={self.missing_ratio:.3f}"

    def check_image(self, x: torch.Tensor | tuple[int, ...] | torch.Size) -> None:
        """Raise :class:`ConfigError` unless the mask fits an image ``(C, H, W)``/``(N, C, H, W)``.

        ``x`` is the image or its shape.
        """
        shape = x.shape if isinstance(x, torch.Tensor) else tuple(x)
        check_mask_fits(self.mask, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return x * self.mask.to(dtype=x.dtype)

    def simulate(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``m * x``: the known pixels of ``x``, zero elsewhere (no noise)."""
        return self(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y = m * y`` (the mask is a diagonal operator)."""
        return self(y)
