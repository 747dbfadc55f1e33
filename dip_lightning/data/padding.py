"""Pad images so that their height and width are multiples of a number, and crop them back.

Encoder-decoder networks downsample by a power of two several times, so the input size must be
divisible by ``2**depth``. :func:`pad_to_multiple` pads an image (split as evenly as possible,
the extra pixel going to the bottom/right) and returns the :class:`CropBox` of the original
inside the padded image; :func:`crop` undoes it.

>>> import torch
>>> x = torch.arange(6.0).reshape(1, 2, 3)
>>> y, box = pad_to_multiple(x, 4)
>>> y.shape, box
(torch.Size([1, 4, 4]), CropBox(top=1, left=0, height=2, width=3))
>>> torch.equal(crop(y, box), x)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dip_lightning.errors import ConfigError

__all__ = ["PAD_MODES", "CropBox", "crop", "pad_centered", "pad_to_multiple", "padded_size"]

#: Padding modes accepted by :func:`pad_to_multiple`.
PAD_MODES = ("reflect", "replicate", "circular", "constant")


@dataclass(frozen=True)
class CropBox:
    """Position of the original image inside a padded one (all in pixels)."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        """Row just past the last original row."""
        return self.top + self.height

    @property
    def right(self) -> int:
        """Column just past the last original column."""
        return self.left + self.width


def _check_multiple(multiple: int) -> None:
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Return ``(height, width)`` rounded up to the next multiple of ``multiple``.

    >>> padded_size(37, 31, 32)
    (64, 32)
    >>> padded_size(64, 1, 32)
    (64, 32)
    """
    _check_multiple(multiple)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height} (WxH)")
    return _round_up(height, multiple), _round_up(width, multiple)


def _source_indices(size: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Indices into an axis of length ``size`` that produce the padded axis.

    ``reflect`` mirrors without repeating the edge pixel (like :func:`torch.nn.functional.pad`)
    and keeps mirroring back and forth when the pad is larger than the axis, so any pad works;
    an axis of length 1 is simply replicated.
    """
    idx = torch.arange(-before, size + after)
    if mode == "replicate" or size == 1:
        return idx.clamp(0, size - 1)
    if mode == "circular":
        return idx.remainder(size)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "reflect"
) -> tuple[torch.Tensor, CropBox]:
    """Pad the last two dimensions of ``x`` (``(..., H, W)``) up to multiples of ``multiple``.

    The padding is split as evenly as possible between the two sides, the extra pixel going to
    the bottom/right. ``mode`` is one of :data:`PAD_MODES`: ``"reflect"`` (default; mirror
    without repeating the edge, folding back and forth when the pad exceeds the image, and
    replicating a single row/column), ``"replicate"``, ``"circular"`` or ``"constant"`` (zeros).
    Works for any size >= 1 and keeps the dtype, device and autograd graph. Returns the padded
    tensor and the :class:`CropBox` of the original inside it.

    >>> import torch
    >>> y, box = pad_to_multiple(torch.tensor([[1.0, 2.0]]), 5)
    >>> y
    tensor([[2., 1., 2., 1., 2.],
            [2., 1., 2., 1., 2.],
            [2., 1., 2., 1., 2.],
            [2., 1., 2., 1., 2.],
            [2., 1., 2., 1., 2.]])
    >>> box
    CropBox(top=2, left=1, height=1, width=2)
    >>> pad_to_multiple(torch.tensor([[1.0, 2.0, 3.0]]), 7)[0][0]
    tensor([3., 2., 1., 2., 3., 2., 1.])
    """
    if x.dim() < 2:
        raise ValueError(f"expected a tensor of shape (..., H, W), got shape {tuple(x.shape)}")
    if mode not in PAD_MODES:
        raise ValueError(f"unknown padding mode {mode!r}; use one of {', '.join(PAD_MODES)}")
    height, width = int(x.shape[-2]), int(x.shape[-1])
    new_h, new_w = padded_size(height, width, multiple)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    bottom, right = new_h - height - top, new_w - width - left
    box = CropBox(top=top, left=left, height=height, width=width)
    if new_h == height and new_w == width:
        return x, box
    if mode == "constant":
        return F.pad(x, (left, right, top, bottom), mode="constant", value=0.0), box
    rows = _source_indices(height, top, bottom, mode).to(x.device)
    cols = _source_indices(width, left, right, mode).to(x.device)
    out = x.index_select(-2, rows).index_select(-1, cols)
    return out, box


def crop(x: torch.Tensor, box: CropBox) -> torch.Tensor:
    """Return the region ``box`` of the last two dimensions of ``x`` (undoes padding).

    >>> import torch
    >>> crop(torch.arange(16).reshape(4, 4), CropBox(top=1, left=2, height=2, width=1))
    tensor([[ 6],
            [10]])
    """
    if x.dim() < 2:
        raise ValueError(f"expected a tensor of shape (..., H, W), got shape {tuple(x.shape)}")
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if (
        box.top < 0
        or box.left < 0
        or box.height < 1
        or box.width < 1
        or box.bottom > height
        or box.right > width
    ):
        raise ValueError(f"{box} does not fit inside a {height}x{width} (HxW) tensor")
    return x[..., box.top : box.bottom, box.left : box.right]


def pad_centered(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``(..., h, w)`` to ``(..., height, width)`` around the centre, as the loop crops.

    The top/left margin is ``(height - h) // 2`` / ``(width - w) // 2`` (the loop's crop box);
    reflection padding where the image is large enough, edge replication otherwise.

    >>> pad_centered(torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]), 4, 5)
    tensor([[[5., 4., 5., 6., 5.],
             [2., 1., 2., 3., 2.],
             [5., 4., 5., 6., 5.],
             [2., 1., 2., 3., 2.]]])
    >>> pad_centered(torch.tensor([[[1.0, 2.0]]]), 1, 5)  # too small to reflect
    tensor([[[1., 1., 2., 2., 2.]]])
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    top, left = (height - h) // 2, (width - w) // 2
    pads = (left, width - w - left, top, height - h - top)
    if min(pads) < 0:
        raise ConfigError(f"cannot pad a {w}x{h} image to {width}x{height}")
    reflect = max(pads[:2]) < w and max(pads[2:]) < h
    batch = x.reshape(-1, 1, h, w)
    out = F.pad(batch, pads, mode="reflect" if reflect else "replicate")
    return out.reshape(*x.shape[:-2], height, width)
