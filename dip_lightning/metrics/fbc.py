"""Frequency-band correspondence (FBC), the spectral-bias measure of Shi et al.

Shi, Mettes, Maji, Snoek, "On Measuring and Controlling the Spectral Bias of the Deep Image
Prior", IJCV 2022 (reference code: ``get_circular_statastic`` in
``shizenglin/Measure-and-Control-Spectral-Bias``, ``code/utils/measure_utils.py``).

Definition
----------
For one output image ``o`` and its target ``t`` (both ``(C, H, W)`` in ``[0, 1]``, ``C`` = 1 or 3)
and ``n = num_bands``:

1. Gray: ``g = clamp(0.2989 R + 0.5870 G + 0.1140 B, 0, 1)`` (the authors' ``rgb2gray``, whose
   weights sum to 0.9999); a one-channel image is only clamped to ``[0, 1]``.
2. Centred amplitude spectra ``A_o = |fftshift(fft2(g_o))|`` and ``A_t`` likewise, the zero
   frequency at row ``H // 2``, column ``W // 2``.
3. Per-frequency ratio ``r = clip(A_o / (A_t + 1e-8), 0, 1)``.
4. Rings. The frequency at centred offset ``(dy, dx)`` from the zero frequency has the radius
   ``rho = sqrt(dx**2 + (dy * W / H)**2) / (W // 2)``, i.e. the radius in normalised frequency
   (cycles per pixel, ``sqrt((dx / W)**2 + (dy / H)**2)``) divided by ``(W // 2) / W``, the
   largest horizontal frequency ("half the width"). Band ``k`` (0-based, low to high) holds the
   frequencies with ``k / n < rho <= (k + 1) / n``; band 0 also holds ``rho = 0``. Frequencies with
   ``rho > 1`` (the corners of the spectrum) belong to no band.
5. ``FBC_k`` = mean of ``r`` over band ``k``. A band with no frequency in it (only for images a
   few pixels wide) is NaN, as in the reference code.

An image compared with itself scores 1 up to ``1e-8 / |F|`` per frequency, except that a
frequency where both amplitudes are exactly 0 scores 0 (``0 / 1e-8``), as in the reference code:
a constant image against itself gives ``[1, 0, 0, ...]``.

A batch is evaluated image by image; ``reduction="mean"`` (default) averages over the batch.

How this relates to the authors' code
-------------------------------------
* For square images (``H == W``), ``rho`` is their ``dist_from_center / int(w / 2)``, and
  bands are their differences of nested discs ``dist <= int(w / 2) * sz`` with
  ``sz in np.linspace(size, 1, int(1 / size))`` and ``size = 1 / num_bands`` (their default
  ``size=0.2`` is ``num_bands=5``). Steps 1-3 and 5 are theirs.
* Ring membership is decided in exact integer arithmetic (``rho <= (k + 1) / n`` is rearranged to
  a comparison of integers), not by comparing floats. For ``num_bands <= 8`` (including 5)
  this gives the same masks as their floating-point ``np.sqrt(...) <= radius`` for every square
  size up to 4096 (checked); for some larger ``num_bands`` their ``np.linspace`` radius lands one
  ulp below an integer and drops the pixels lying exactly on that circle, which here count as
  inside (the outer boundary is always inclusive).
* Non-square images: their code measures the distance in array indices with the radius tied to
  the width, so for ``H != W`` the rings are not circles in frequency (for a tall image the
  outer ring stops well short of the vertical Nyquist frequency). Here the vertical offset is
  rescaled by ``W / H``, which makes the rings circles in normalised frequency; for ``H == W``
  nothing changes.
* Their code takes one ``H x W x 3`` NumPy image in float64. Here inputs are ``(N, C, H, W)`` or
  ``(C, H, W)`` tensors, computed in float32 (float64 if the input is float64), so values agree
  with a float64 computation to about ``1e-5``.

The function is not differentiable (not needed), uses tensor operations only (no host
synchronisation), and caches the band masks per size, band count and device.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "FrequencyBandCorrespondence",
    "band_masks",
    "frequency_band_correspondence",
    "to_gray",
]

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
"""Weights of R, G, B in the authors' ``rgb2gray`` (they sum to 0.9999, not 1)."""

EPS = 1e-8
"""Added to the target amplitude before dividing, as in the reference code."""


def _check_num_bands(num_bands: int) -> None:
    if isinstance(num_bands, bool) or not isinstance(num_bands, int) or num_bands < 1:
        raise ValueError(f"num_bands must be a positive integer, got {num_bands!r}")


def _check_image(x: Tensor, name: str) -> Tensor:
    """Return ``x`` as ``(N, C, H, W)``; raise a readable error for any other shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must have shape (N, C, H, W) or (C, H, W) with C = 1 or 3, "
            f"got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point image in [0, 1], got {x.dtype}")
    return x


def to_gray(image: Tensor) -> Tensor:
    """Gray version of a ``(..., C, H, W)`` image, ``C`` = 1 or 3, keeping a channel of size 1.

    Three channels: ``clamp(0.2989 R + 0.5870 G + 0.1140 B, 0, 1)`` (the authors' ``rgb2gray``).
    One channel: ``clamp(x, 0, 1)``.

    >>> to_gray(torch.tensor([[[1.0]], [[1.0]], [[1.0]]]))
    tensor([[[0.9999]]])
    >>> to_gray(torch.tensor([[[[-0.5, 0.5, 1.5]]]]))
    tensor([[[[0.0000, 0.5000, 1.0000]]]])
    """
    if image.ndim < 3 or image.shape[-3] not in (1, 3):
        raise ValueError(
            f"image must have shape (..., C, H, W) with C = 1 or 3, got {tuple(image.shape)}"
        )
    if image.shape[-3] == 1:
        return image.clamp(0.0, 1.0)
    red, green, blue = image.unbind(-3)
    gray = GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue
    return gray.unsqueeze(-3).clamp(0.0, 1.0)


@lru_cache(maxsize=64)
def _band_index(height: int, width: int, num_bands: int) -> Tensor:
    """``(H, W)`` int64 band index (0 .. num_bands - 1) per centred frequency, -1 outside."""
    reduced = gcd(height, width)
    h, w = height // reduced, width // reduced
    dy = torch.arange(height, dtype=torch.int64) - height // 2
    dx = torch.arange(width, dtype=torch.int64) - width // 2
    # rho**2 = (dx**2 + (dy * W / H)**2) / (W // 2)**2 = q / (h * (W // 2))**2, q an integer.
    q = (h * dx).square().unsqueeze(0) + (w * dy).square().unsqueeze(1)
    outer = h * (width // 2)
    if num_bands**2 * (int(q.max()) + (num_bands * outer) ** 2) >= 2**62:
        raise ValueError(f"image of {height} x {width} too large for {num_bands} bands")
    index = torch.full((height, width), -1, dtype=torch.int64)
    # Nested discs rho <= k / n  <=>  n**2 * q <= (k * outer)**2, outermost first.
    for k in range(num_bands, 0, -1):
        index[num_bands**2 * q <= (k * outer) ** 2] = k - 1
    return index


@lru_cache(maxsize=64)
def _band_masks_cached(height: int, width: int, num_bands: int, device: torch.device) -> Tensor:
    index = _band_index(height, width, num_bands)
    bands = torch.arange(num_bands, dtype=torch.int64).view(-1, 1, 1)
    return (index == bands).to(device)


def band_masks(
    height: int, width: int, num_bands: int = 5, device: torch.device | str | None = None
) -> Tensor:
    """``(num_bands, H, W)`` bool masks of the frequency bands, in centred (fftshift) layout.

    Band ``k`` holds the frequencies with ``k / n < rho <= (k + 1) / n`` (band 0 also the zero
    frequency at ``[H // 2, W // 2]``); see the module docstring for ``rho``. The masks are
    disjoint; the corners (``rho > 1``) are in none. The result is cached per
    ``(height, width, num_bands, device)``: treat it as read-only.

    >>> band_masks(5, 5, num_bands=2).int()
    tensor([[[0, 0, 0, 0, 0],
             [0, 0, 1, 0, 0],
             [0, 1, 1, 1, 0],
             [0, 0, 1, 0, 0],
             [0, 0, 0, 0, 0]],
    <BLANKLINE>
            [[0, 0, 1, 0, 0],
             [0, 1, 0, 1, 0],
             [1, 0, 0, 0, 1],
             [0, 1, 0, 1, 0],
             [0, 0, 1, 0, 0]]], dtype=torch.int32)
    >>> band_masks(96, 96).sum(dim=(1, 2))
    tensor([ 293,  860, 1448, 2036, 2574])
    """
    _check_num_bands(num_bands)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    return _band_masks_cached(int(height), int(width), num_bands, torch.device(device or "cpu"))


@lru_cache(maxsize=64)
def _band_weights(
    height: int, width: int, num_bands: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Band weights for the half spectrum of ``rfft2``, and the ``(n,)`` band sizes.

    A real image has ``|F[ky, kx]| == |F[-ky, -kx]|`` (indices modulo H, W), so the ratio is
    equal at both, and a sum over a band of the full ``(H, W)`` spectrum is a weighted sum over
    the ``rfft2`` columns ``0 .. W // 2``: each of these counts for itself plus, for columns
    ``1 .. ceil(W / 2) - 1``, for its mirror image. Returns an ``(H * (W // 2 + 1), n)`` matrix
    of those counts per band and the number of full-spectrum frequencies in each band.
    """
    index = torch.fft.ifftshift(_band_index(height, width, num_bands), dim=(-2, -1))
    full = (index.unsqueeze(-1) == torch.arange(num_bands)).to(torch.int64)  # (H, W, n)
    half = full[:, : width // 2 + 1].clone()
    mirrored = full.flip(0).roll(1, dims=0).flip(1).roll(1, dims=1)  # [ky, kx] -> [-ky, -kx]
    paired = slice(1, (width + 1) // 2)
    half[:, paired] += mirrored[:, paired]
    matrix = half.reshape(-1, num_bands).to(device=device, dtype=dtype)
    return matrix, full.sum((0, 1)).to(device=device, dtype=dtype)


def frequency_band_correspondence(
    output: Tensor,
    target: Tensor,
    num_bands: int = 5,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Frequency-band correspondence of ``output`` with ``target``, low to high frequency.

    Args:
        output: the network output, ``(N, C, H, W)`` or ``(C, H, W)`` in ``[0, 1]``, C = 1 or 3.
        target: the image it is fitted to, same shape.
        num_bands: number of concentric rings (the authors use 5).
        reduction: ``"mean"`` returns ``(num_bands,)``, the mean over the batch; ``"none"``
            returns ``(N, num_bands)`` (``N = 1`` for a ``(C, H, W)`` input).

    Returns:
        Values in ``[0, 1]``: the mean over each ring of ``clip(|F(out)| / (|F(target)| + 1e-8),
        0, 1)`` on gray images (definition and differences from the authors' code: module
        docstring). Float32, or float64 for float64 inputs.

    An image compared with itself scores 1 in every band; a blurred copy of an image keeps its
    low frequencies and loses its high ones:

    >>> image = (torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64) * 0.618) % 1
    >>> frequency_band_correspondence(image, image)
    tensor([1., 1., 1., 1., 1.])
    >>> blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1)
    >>> frequency_band_correspondence(blurred, image).round(decimals=2)
    tensor([0.8200, 0.6800, 0.4500, 0.2100, 0.1900])
    >>> frequency_band_correspondence(image.expand(2, 3, 64, 64), image.expand(2, 3, 64, 64),
    ...                               num_bands=3, reduction="none")
    tensor([[1., 1., 1.],
            [1., 1., 1.]])
    """
    _check_num_bands(num_bands)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    output = _check_image(output, "output")
    target = _check_image(target, "target")
    if output.shape != target.shape:
        raise ValueError(
            f"output and target must have the same shape, got {tuple(output.shape)} "
            f"and {tuple(target.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(output.dtype, target.dtype), torch.float32)
    height, width = output.shape[-2:]
    with torch.no_grad():
        # The ratio is taken per frequency, so it stays in the unshifted layout (the cached band
        # weights are ifftshift-ed instead), and only the half spectrum of rfft2 is needed.
        amp_out = torch.fft.rfft2(to_gray(output.detach().to(dtype))[:, 0]).abs()
        amp_tgt = torch.fft.rfft2(to_gray(target.detach().to(dtype))[:, 0]).abs()
        ratio = (amp_out / (amp_tgt + EPS)).clamp_(0.0, 1.0)
        matrix, sizes = _band_weights(height, width, num_bands, ratio.device, ratio.dtype)
        per_image = (ratio.flatten(1) @ matrix) / sizes
    return per_image.mean(0) if reduction == "mean" else per_image


class FrequencyBandCorrespondence(Metric):
    """FBC accumulated over updates: the mean, per band, over every image passed to ``update``.

    ``update(output, target)`` evaluates :func:`frequency_band_correspondence` per image
    (``reduction="none"``) and adds the values to ``fbc_sum`` and the image count to ``total``
    (both reduced with ``"sum"`` across processes); ``compute()`` returns ``fbc_sum / total``,
    shape ``(num_bands,)``.

    >>> image = (torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32) * 0.618) % 1
    >>> metric = FrequencyBandCorrespondence(num_bands=4)
    >>> metric.update(image, image)
    >>> metric.update(torch.zeros_like(image), image)
    >>> metric.compute()
    tensor([0.5000, 0.5000, 0.5000, 0.5000])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    fbc_sum: Tensor
    total: Tensor

    def __init__(self, num_bands: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_num_bands(num_bands)
        self.num_bands = num_bands
        self.add_state("fbc_sum", default=torch.zeros(num_bands), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, output: Tensor, target: Tensor) -> None:
        """Add the per-image FBC of a batch (``(N, C, H, W)`` or ``(C, H, W)``)."""
        values = frequency_band_correspondence(output, target, self.num_bands, reduction="none")
        self.fbc_sum += values.sum(0).to(self.fbc_sum.dtype)
        self.total += values.shape[0]

    def compute(self) -> Tensor:
        """Mean FBC per band over all images seen, shape ``(num_bands,)``."""
        return self.fbc_sum / self.total
