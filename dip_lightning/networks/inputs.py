"""The fixed network input ``z`` of Deep Image Prior."""

from __future__ import annotations

from typing import Literal

import torch

from dip_lightning.errors import ConfigError

#: ``observation`` (the observed image as the input) is made by the task, not by :func:`make_input`
InputType = Literal["uniform", "normal", "meshgrid", "fourier", "observation"]
INPUT_TYPES: tuple[str, ...] = ("uniform", "normal", "meshgrid", "fourier", "observation")

#: Std of the random frequencies of a ``fourier`` input, in cycles per image side.
FOURIER_FREQUENCY_STD = 8.0


def make_input(
    kind: str,
    channels: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    scale: float = 0.1,
) -> torch.Tensor:
    """Draw the fixed input ``z`` of shape ``(1, channels, height, width)``.

    - ``uniform``: U[0, 1) times ``scale`` (the paper's input: uniform in [0, 0.1]);
    - ``normal``: N(0, 1) times ``scale``;
    - ``meshgrid``: two channels holding the x and y coordinates in [0, 1] (the paper's input for
      region inpainting); ``channels`` must be 2 and no random number is drawn.
    - ``fourier``: random Fourier features of the pixel coordinates (Tancik et al., 2020):
      ``scale * sin(2 pi <b_k, p>)`` and ``scale * cos(2 pi <b_k, p>)`` for ``channels / 2``
      frequencies ``b_k ~ N(0, FOURIER_FREQUENCY_STD**2)`` (cycles per image side, drawn from
      ``generator``) and ``p`` the (x, y) coordinates in [0, 1]; ``channels`` must be even.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = make_input("uniform", 4, 5, 7, generator=g)
    >>> z.shape, bool(z.min() >= 0), bool(z.max() < 0.1)
    (torch.Size([1, 4, 5, 7]), True, True)
    >>> make_input("meshgrid", 2, 2, 3, generator=g)[0, 0]
    tensor([[0.0000, 0.5000, 1.0000],
            [0.0000, 0.5000, 1.0000]])
    >>> f = make_input("fourier", 6, 5, 7, generator=torch.Generator().manual_seed(0), scale=1.0)
    >>> f.shape, torch.allclose(f[0, :3] ** 2 + f[0, 3:] ** 2, torch.ones(3, 5, 7))
    (torch.Size([1, 6, 5, 7]), True)
    """
    if channels < 1:
        raise ConfigError(f"input depth must be >= 1, got {channels}")
    shape = (1, channels, height, width)
    if kind == "observation":
        raise ConfigError("an observation input is the task's image; the task module makes it")
    if kind == "uniform":
        return torch.rand(shape, generator=generator) * scale
    if kind == "normal":
        return torch.randn(shape, generator=generator) * scale
    if kind == "meshgrid":
        if channels != 2:
            raise ConfigError(
                f"a meshgrid input has 2 channels; set input_depth: 2 (got {channels})"
            )
        ys = torch.linspace(0.0, 1.0, height) if height > 1 else torch.zeros(1)
        xs = torch.linspace(0.0, 1.0, width) if width > 1 else torch.zeros(1)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y])[None]
    if kind == "fourier":
        if channels % 2:
            raise ConfigError(
                f"a fourier input has sin and cos pairs; use an even input_depth (got {channels})"
            )
        ys = torch.linspace(0.0, 1.0, height) if height > 1 else torch.zeros(1)
        xs = torch.linspace(0.0, 1.0, width) if width > 1 else torch.zeros(1)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        frequencies = torch.randn(channels // 2, 2, generator=generator) * FOURIER_FREQUENCY_STD
        cycles = frequencies[:, 0, None, None] * grid_x + frequencies[:, 1, None, None] * grid_y
        phase = 2 * torch.pi * cycles
        return (torch.cat([torch.sin(phase), torch.cos(phase)]) * scale)[None]
    raise ConfigError(f"unknown input type {kind!r}; choose one of {', '.join(INPUT_TYPES)}")
