"""Forward operators ``A`` of the restoration tasks, and the inpainting mask generators."""

from __future__ import annotations

from typing import Any

from dip_lightning.degradations.base import Degradation
from dip_lightning.degradations.downsample import (
    DOWNSAMPLE_FACTORS,
    DOWNSAMPLE_KERNELS,
    Downsample,
    bicubic_upsample,
)
from dip_lightning.degradations.identity import Identity, add_gaussian_noise
from dip_lightning.degradations.mask import Mask, check_mask_fits, check_mask_values
from dip_lightning.degradations.masks import (
    random_pixel_mask,
    random_rectangles_mask,
    rectangle_mask,
    text_mask,
)
from dip_lightning.errors import ConfigError

__all__ = [
    "DEGRADATIONS",
    "DOWNSAMPLE_FACTORS",
    "DOWNSAMPLE_KERNELS",
    "Degradation",
    "Downsample",
    "Identity",
    "Mask",
    "add_gaussian_noise",
    "bicubic_upsample",
    "check_mask_fits",
    "check_mask_values",
    "make_degradation",
    "random_pixel_mask",
    "random_rectangles_mask",
    "rectangle_mask",
    "text_mask",
]

#: Operators by short name, for :func:`make_degradation` (configs use ``class_path``).
DEGRADATIONS: dict[str, type[Degradation]] = {
    "identity": Identity,
    "mask": Mask,
    "downsample": Downsample,
}


def make_degradation(name: str, **kwargs: Any) -> Degradation:
    """Build an operator by short name (``"identity"``, ``"mask"``, ``"downsample"``).

    >>> op = make_degradation("downsample", factor=2, channels=1)
    >>> type(op).__name__, op.kernel.shape
    ('Downsample', torch.Size([8, 8]))
    """
    try:
        cls = DEGRADATIONS[name]
    except KeyError:
        choices = ", ".join(repr(n) for n in DEGRADATIONS)
        raise ConfigError(f"unknown degradation {name!r}; use one of {choices}") from None
    return cls(**kwargs)
