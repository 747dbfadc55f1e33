"""Inpainting mask files: read, check and threshold a black-and-white image as a mask.

A mask file is data like the image it goes with, so it is read here with the image loader
(:func:`~dip_lightning.data.io.load_image`); the mask it gives follows the convention of
:class:`~dip_lightning.degradations.mask.Mask` (1 for a known pixel, 0 for a missing one).
"""

from __future__ import annotations

import logging
import os

import torch

from dip_lightning.data.io import load_image
from dip_lightning.degradations.mask import check_mask_fits, check_mask_values
from dip_lightning.degradations.masks import _check_positive_int, _check_size
from dip_lightning.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["GRAY_RANGE", "MAX_GRAY_FRACTION", "load_mask"]

#: Pixels of a mask file strictly between these values are "gray" (neither black nor white).
GRAY_RANGE = (0.1, 0.9)
#: Largest fraction of gray pixels :func:`load_mask` tolerates (anti-aliased edges, JPEG noise).
MAX_GRAY_FRACTION = 0.01


def load_mask(path: str | os.PathLike[str], height: int, width: int, channels: int) -> torch.Tensor:
    """Read an inpainting mask file (white = known, black = missing) for an image ``(C, H, W)``.

    The file must have the image's height and width and be black and white: at most 1% of its
    pixels may be gray (strictly between 0.1 and 0.9, e.g. anti-aliased edges); values are
    then thresholded at 0.5, with a one-line warning that counts the pixels that were neither
    0 nor 1 (a JPEG mask, an anti-aliased one). A colour file whose channels agree is read as
    one gray mask; one whose channels differ is kept per channel when the image has 3
    channels. The mask needs at least one known and one missing pixel. Returns a float32
    ``(1, H, W)`` or ``(3, H, W)`` tensor of 0s and 1s; a problem raises
    :class:`~dip_lightning.errors.ConfigError` (or :class:`~dip_lightning.errors.ImageError`
    when the file cannot be read) with a one-line message.
    """
    h, w = _check_size(height, width)
    c = _check_positive_int("channels", channels)
    loaded = load_image(path, what="mask")
    t = loaded.tensor
    name = f"mask {path}"
    check_mask_fits(t[:1], (c, h, w), name)

    lo, hi = GRAY_RANGE
    gray = ((t > lo) & (t < hi)).any(dim=0).float().mean().item()
    if gray > MAX_GRAY_FRACTION:
        raise ConfigError(
            f"{name} is not binary: {100 * gray:.1f}% of its pixels are gray (between {lo} and "
            f"{hi}; at most {100 * MAX_GRAY_FRACTION:g}% are tolerated); save it with black "
            "(missing) and white (known) pixels only"
        )
    mask = (t >= 0.5).to(torch.float32)
    thresholded = int(((t != 0) & (t != 1)).any(dim=0).sum())
    if thresholded:
        log.warning(
            "warning: %s is not black and white: %d of its %d pixels are neither 0 nor 1; "
            "thresholded at 0.5 (0.5 and above: known)",
            name,
            thresholded,
            h * w,
        )
    if mask.shape[0] > 1:
        if bool((mask == mask[:1]).all()):
            mask = mask[:1].contiguous()
        elif c != mask.shape[0]:
            raise ConfigError(
                f"{name} has colour channels that differ (a mask per channel) but the image has "
                f"{c} channel{'s' if c != 1 else ''}; save the mask in black and white"
            )
    check_mask_values(mask, name)
    return mask
