"""Inpainting masks: random generators, apart from the :class:`Mask` operator.

Every mask is a float tensor of shape ``(1, H, W)`` (or ``(C, H, W)`` when it differs per
channel) holding 1 for a known pixel and 0 for a missing one, the convention of
:class:`~dip_lightning.degradations.mask.Mask` and of mask files (white = known; they are data,
read by :func:`dip_lightning.data.masks.load_mask`). Random masks draw every number from an
explicit :class:`torch.Generator`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dip_lightning.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "random_pixel_mask",
    "random_rectangles_mask",
    "rectangle_mask",
    "text_mask",
]

#: Default text of :func:`text_mask`.
DEFAULT_TEXT = "Deep Image Prior restores what is hidden"


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_size(height: object, width: object) -> tuple[int, int]:
    return _check_positive_int("height", height), _check_positive_int("width", width)


def _check_fraction(name: str, value: object, *, closed_right: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    v = float(value) if ok else math.nan  # type: ignore[arg-type]
    upper_ok = v <= 1.0 if closed_right else v < 1.0
    if not (ok and v > 0.0 and upper_ok):
        interval = "(0, 1]" if closed_right else "(0, 1)"
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")
    return v


def random_pixel_mask(
    shape: Sequence[int],
    missing_ratio: float,
    generator: torch.Generator,
    per_channel: bool = False,
) -> torch.Tensor:
    """A ``(C, H, W)`` mask where each pixel is missing (0) with probability ``missing_ratio``.

    The same pixels are missing in every channel (as in the paper's Table 1) unless
    ``per_channel``. ``missing_ratio`` must be in ``(0, 1)``.

    >>> g = torch.Generator().manual_seed(0)
    >>> m = random_pixel_mask((3, 64, 64), 0.5, g)
    >>> m.shape, bool((m[0] == m[2]).all()), round(1 - m.mean().item(), 1)
    (torch.Size([3, 64, 64]), True, 0.5)
    """
    if len(shape) != 3:
        raise ConfigError(f"the mask shape must be (C, H, W), got {tuple(shape)}")
    c = _check_positive_int("channels", shape[0])
    h, w = _check_size(shape[1], shape[2])
    ratio = _check_fraction("missing_ratio (the fraction of pixels dropped)", missing_ratio)
    draws = torch.rand(
        (c if per_channel else 1, h, w), generator=generator, device=generator.device
    )
    mask = (draws >= ratio).to(torch.get_default_dtype())
    return mask if per_channel else mask.expand(c, h, w).contiguous()


def rectangle_mask(
    height: int, width: int, boxes: Sequence[tuple[int, int, int, int]]
) -> torch.Tensor:
    """A ``(1, H, W)`` mask that hides the boxes ``(top, left, box_height, box_width)``.

    Every box must lie inside the image.

    >>> rectangle_mask(3, 4, [(0, 1, 2, 2)])
    tensor([[[1., 0., 0., 1.],
             [1., 0., 0., 1.],
             [1., 1., 1., 1.]]])
    """
    h, w = _check_size(height, width)
    mask = torch.ones(1, h, w)
    for box in boxes:
        if len(box) != 4:
            raise ConfigError(f"a box is (top, left, height, width), got {tuple(box)!r}")
        top, left, bh, bw = (int(v) for v in box)
        if top < 0 or left < 0 or bh < 1 or bw < 1 or top + bh > h or left + bw > w:
            raise ConfigError(
                f"box (top={top}, left={left}, height={bh}, width={bw}) does not lie inside the "
                f"{w}x{h} image; use 0 <= top, top + height <= {h}, 0 <= left, left + width <= {w}"
            )
        mask[:, top : top + bh, left : left + bw] = 0.0
    return mask


def random_rectangles_mask(
    height: int, width: int, count: int, max_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """A ``(1, H, W)`` mask hiding ``count`` random boxes (they may overlap).

    Each box's height and width are drawn uniformly from ``1`` to ``max_fraction`` of the
    image's (at least 1 pixel), its position uniformly among those inside the image.

    >>> g = torch.Generator().manual_seed(0)
    >>> m = random_rectangles_mask(32, 24, 3, 0.25, g)
    >>> m.shape, bool((m == 0).any()), bool((m == 1).any())
    (torch.Size([1, 32, 24]), True, True)
    """
    h, w = _check_size(height, width)
    n = _check_positive_int("count", count)
    frac = _check_fraction("max_fraction", max_fraction, closed_right=True)
    max_h, max_w = max(1, int(frac * h)), max(1, int(frac * w))
    boxes = []
    for _ in range(n):
        bh = int(torch.randint(1, max_h + 1, (), generator=generator))
        bw = int(torch.randint(1, max_w + 1, (), generator=generator))
        top = int(torch.randint(0, h - bh + 1, (), generator=generator))
        left = int(torch.randint(0, w - bw + 1, (), generator=generator))
        boxes.append((top, left, bh, bw))
    return rectangle_mask(h, w, boxes)


def text_mask(
    height: int,
    width: int,
    text: str = DEFAULT_TEXT,
    font_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A ``(1, H, W)`` mask hiding lines of text (the paper's text-inpainting setting).

    ``text`` is repeated along rows spaced ``2 * font_size`` apart and drawn, without
    anti-aliasing, in Pillow's default font (``ImageFont.load_default(size=font_size)``, needs
    Pillow >= 10.1 with FreeType); the strokes are missing (0), the background known (1).
    ``font_size`` defaults to a sixteenth of the smaller side (at least 10 pixels). With a
    ``generator`` the rows are shifted at random, otherwise the layout is fixed.

    >>> m = text_mask(48, 64, "DIP", font_size=12)
    >>> m.shape, bool((m == 0).any()), bool((m == 1).any())
    (torch.Size([1, 48, 64]), True, True)
    """
    h, w = _check_size(height, width)
    size = max(10, min(h, w) // 16) if font_size is None else font_size
    size = _check_positive_int("font_size", size)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("the text of a text mask must contain a visible character")
    font = ImageFont.load_default(size=size)
    line = " ".join(text.split()) + "  "
    pitch = max(1, int(font.getlength(line)))
    spacing = 2 * size

    def draw_int(high: int) -> int:
        if generator is None:
            return 0
        return int(torch.randint(0, high, (), generator=generator))

    image = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # binary strokes, no anti-aliasing
    top = size // 2 + draw_int(size)
    for row_top in range(top - spacing, h, spacing):
        shift = draw_int(pitch)
        repeats = w // pitch + 2
        draw.text((-shift, row_top), line * repeats, fill=0, font=font)
    mask = torch.from_numpy(np.asarray(image) > 127).to(torch.get_default_dtype())[None]
    if bool(mask.all()):
        raise ConfigError(
            f"the text mask hides nothing: text of font size {size} leaves the {w}x{h} image "
            "empty; use a smaller font size or a larger image"
        )
    return mask
