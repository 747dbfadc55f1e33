"""The standard deviation of additive white Gaussian noise in an image, from the image alone.

:func:`estimate_sigma` is the patch-PCA estimator of Chen, Zhu and Heng ("An Efficient
Statistical Method for Image Noise Level Estimation", ICCV 2015). Every ``p x p`` patch of all
channels together is a vector; the image's own structure lives in a few directions of their
covariance, the noise in all of them alike. Sorted from the largest, the eigenvalues of the
covariance end in a tail that is the noise alone, and the tail is found where its mean stops
exceeding its median (a skewed tail still holds image structure): the mean of that tail is
``sigma**2``.

It needs no assumption about the image but that its structure is low-rank in patch space, so it
counts fine texture that looks like noise (fur, foliage) partly as noise: at low noise levels it
over-estimates on such images. Noise clipped to ``[0, 1]`` is weaker than the sigma it was drawn
with near black and white, so the estimate is made again from the patches whose mean lies more
than two first estimates inside ``[0, 1]`` (where there are enough of them).
``python benchmarks/noise_level.py`` prints its error over the shared images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["estimate_sigma"]


def _tail_variance(eigenvalues: torch.Tensor) -> torch.Tensor:
    """The mean of the shortest tail of ``eigenvalues`` (sorted from the largest) whose mean is
    not above its median: the noise variance of Chen et al.'s Algorithm 1."""
    count = eigenvalues.numel()
    for start in range(count):
        tail = eigenvalues[start:]
        mean = tail.mean()
        if mean <= tail.median():
            return mean
    return eigenvalues[-1]


def estimate_sigma(image: torch.Tensor, patch_size: int = 7, max_patches: int = 100_000) -> float:
    """The noise standard deviation of ``image`` (``(C, H, W)`` or ``(1, C, H, W)``, values in
    ``[0, 1]``), on that scale: multiply by 255 for sigma on 0-255.

    The covariance needs many more patches than values per patch: from about 100x100 pixels
    on, pure noise is found within a few percent; on smaller images the estimate runs low
    (10-20% at 45x39). ``patch_size`` is the side of the patches (``C * patch_size**2`` values
    each); at most ``max_patches`` of them enter the covariance (evenly strided on large
    images). Computed in float64; nothing is drawn at random.

    >>> g = torch.Generator().manual_seed(0)
    >>> flat = torch.full((3, 64, 64), 0.5) + 0.1 * torch.randn(3, 64, 64, generator=g)
    >>> round(estimate_sigma(flat), 2)
    0.1
    """
    x = image.detach().to(torch.float64, copy=False)
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"estimate_sigma takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"estimate_sigma takes a (C, H, W) image, got shape {tuple(x.shape)}")
    channels, height, width = x.shape
    if min(height, width) < patch_size + 2:
        raise ValueError(
            f"the image ({width}x{height}) is too small for {patch_size}x{patch_size} patches"
        )
    positions = (height - patch_size + 1) * (width - patch_size + 1)
    stride = 1
    while positions // (stride * stride) > max_patches:
        stride += 1
    patches = F.unfold(x.cpu()[None], patch_size, stride=stride)[0].T  # (N, C * p * p)
    dims = channels * patch_size * patch_size
    if patches.shape[0] < dims:
        raise ValueError(
            f"the image ({width}x{height}) gives {patches.shape[0]} patches of {dims} values; "
            "it needs at least as many patches as values per patch"
        )
    sigma = _pca_sigma(patches)
    # noise clipped at 0 and 1 is weaker: again from the patches whose mean is well inside
    means = patches.mean(1)
    inside = (means > 2 * sigma) & (means < 1 - 2 * sigma)
    if int(inside.sum()) >= 2 * dims and not bool(inside.all()):
        sigma = _pca_sigma(patches[inside])
    return sigma


def _pca_sigma(patches: torch.Tensor) -> float:
    """The noise standard deviation of ``patches`` (one per row) by the tail of the
    eigenvalues of their covariance."""
    centred = patches - patches.mean(0)
    covariance = centred.T @ centred / patches.shape[0]
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0)  # largest first
    return float(_tail_variance(eigenvalues).clamp(min=0).sqrt())
