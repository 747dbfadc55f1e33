"""The identity operator: denoising and blind restoration of a real image."""

from __future__ import annotations

import torch

from dip_lightning.degradations.base import Degradation


def add_gaussian_noise(
    x: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``clip(x + sigma / 255 * N(0, 1), 0, 1)``, the paper's synthetic noise (sigma on 0-255).

    >>> x = torch.full((1, 2, 2), 0.5)
    >>> torch.equal(add_gaussian_noise(x, 0.0), x)
    True
    >>> g = torch.Generator().manual_seed(0)
    >>> y = add_gaussian_noise(torch.full((1, 64, 64), 0.5), 25.0, g)
    >>> round(float((y - 0.5).std() * 255))
    25
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x.clone()
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (x + noise * (sigma / 255.0)).clamp_(0.0, 1.0)


class Identity(Degradation):
    """``A(x) = x``; ``simulate`` adds Gaussian noise of std ``noise_sigma`` (0-255 scale).

    >>> op = Identity(noise_sigma=0)
    >>> x = torch.rand(1, 3, 5, 7)
    >>> torch.equal(op(x), x)
    True
    """

    def __init__(self, noise_sigma: float = 0.0) -> None:
        super().__init__()
        self.noise_sigma = float(noise_sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def simulate(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return add_gaussian_noise(x, self.noise_sigma, generator)
