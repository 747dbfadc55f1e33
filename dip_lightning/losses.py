"""Loss terms of the loop beside the data term: the total-variation regulariser and the
structural-feedback term."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from dip_lightning.errors import ConfigError

__all__ = [
    "SIMILARITIES",
    "StructuralFeedback",
    "edge_similarity",
    "feedback_weight",
    "observed_ssim",
    "sobel_gradients",
    "ssim_map",
    "temporal_ssim",
    "total_variation",
]


def total_variation(x: torch.Tensor, beta: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
    """The authors' TV regulariser of ``(N, C, H, W)`` images: ``sum((dx^2 + dy^2 + eps)^beta)``.

    As in the authors' ``tv_loss`` (``utils/sr_utils.py``), ``dx`` and ``dy`` are the forward
    differences along the width and the height, both taken on the ``(H - 1) x (W - 1)`` grid,
    and the result is a sum (not a mean), so a weight tuned for the authors' code carries over.
    ``beta = 0.5`` is the isotropic TV norm; ``eps`` keeps its gradient finite where the image
    is flat (the authors' version has none and gives NaN gradients on constant regions).

    >>> round(float(total_variation(torch.zeros(1, 1, 4, 4))), 4)
    0.0009
    >>> x = torch.zeros(1, 1, 3, 3)
    >>> x[..., 1:] = 1.0  # a vertical step: |dx| = 1 on one column of the 2x2 grid
    >>> round(float(total_variation(x, eps=0.0)), 4)
    2.0
    """
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return torch.sum((dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + eps) ** beta)


# --------------------------------------------------------------------------------------------
# structural feedback: L = L_task + lambda_t * (1 - s_t)
# --------------------------------------------------------------------------------------------

#: The structural similarities ``s_t`` the feedback term can use.
Similarity = Literal["observed_ssim", "temporal_ssim", "edge"]
SIMILARITIES: tuple[str, ...] = ("observed_ssim", "temporal_ssim", "edge")


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The SSIM map ``(N, C, H, W)`` of images in [0, 1] (torchmetrics, ``data_range=1``).

    An 11x11 Gaussian window of std 1.5 (smaller, odd, with the std scaled alike, for images
    under 11 pixels), reflection padding, so the map has the images' size; differentiable.

    >>> x = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    >>> m = ssim_map(x, x)
    >>> m.shape, bool(torch.allclose(m, torch.ones_like(m)))
    (torch.Size([1, 3, 16, 20]), True)
    """
    side = min(int(x.shape[-1]), int(x.shape[-2]))
    kernel = min(11, side if side % 2 else side - 1)
    result = structural_similarity_index_measure(
        x,
        y,
        data_range=1.0,
        kernel_size=kernel,
        sigma=1.5 * kernel / 11,
        reduction="none",
        return_full_image=True,
    )
    assert isinstance(result, tuple)
    return result[1]


def observed_ssim(
    prediction: torch.Tensor, observation: torch.Tensor, known: torch.Tensor | None = None
) -> torch.Tensor:
    """``s_t`` = SSIM between ``A(x_hat)`` (``prediction``) and the observation over the known
    pixels, clamped to [0, 1] (a 0-dim tensor).

    ``known`` (``(N, 1 or C, H, W)``, 1 = known, 0 = missing or held out) restricts the average:
    the SSIM map of the masked images ``prediction * known`` and ``observation * known`` is
    averaged with the weights ``known``. This is an approximation near the holes: a window that
    straddles a missing pixel sees it as 0 in both images, which lowers its variances and
    covariance alike, rather than leaving it out of the window's statistics. ``None``: every
    pixel is known (denoising, super-resolution), plain mean SSIM.

    >>> y = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    >>> known = (torch.arange(144).view(1, 1, 12, 12) % 3 > 0).float()
    >>> float(observed_ssim(y * known, y * known, known))
    1.0
    """
    if known is None:
        value = ssim_map(prediction, observation).mean()
    else:
        weights = known.expand_as(prediction)
        full = ssim_map(prediction * known, observation * known)
        value = (full * weights).sum() / weights.sum().clamp_min(1.0)
    return value.clamp(0.0, 1.0)


def temporal_ssim(x: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
    """``s_t`` = SSIM between the output ``x`` and the running average of past outputs
    (detached: only ``x`` receives a gradient), clamped to [0, 1].

    >>> x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    >>> float(temporal_ssim(x, x)), float(temporal_ssim(x, 1 - x))
    (1.0, 0.0)
    """
    return ssim_map(x, average.detach()).mean().clamp(0.0, 1.0)


def sobel_gradients(x: torch.Tensor) -> torch.Tensor:
    """Sobel derivatives ``(N, C, 2, H, W)`` (along the width, then the height) of each channel,
    with replicate padding.

    >>> ramp = torch.arange(4.0).expand(1, 1, 4, 4)  # + 1 per column
    >>> sobel_gradients(ramp)[0, 0, :, 1, 1]
    tensor([8., 0.])
    """
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype)
    kernels = torch.stack([kx, kx.T])[:, None].to(x.device)  # (2, 1, 3, 3)
    n, c, h, w = x.shape
    flat = F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(flat, kernels).reshape(n, c, 2, h, w)


def edge_similarity(x: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
    """``s_t`` = cosine similarity of the Sobel gradient fields of ``x`` and of the running
    average (detached), clamped to [0, 1]: 1 when the edges point the same way with the same
    relative strength everywhere (0 when either image is constant).

    >>> x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    >>> round(float(edge_similarity(x, x)), 5), round(float(edge_similarity(x, 2 * x)), 5)
    (1.0, 1.0)
    """
    gx = sobel_gradients(x).flatten(1)
    ga = sobel_gradients(average.detach()).flatten(1)
    return F.cosine_similarity(gx, ga, dim=1, eps=1e-8).mean().clamp(0.0, 1.0)


def feedback_weight(step: int, weight: float, warmup_steps: int = 0) -> float:
    """``lambda_t``: ``weight``, ramped up linearly over the first ``warmup_steps`` steps
    (``weight * step / warmup_steps`` until then).

    >>> [feedback_weight(s, 0.2, 4) for s in (1, 2, 4, 10)]
    [0.05, 0.1, 0.2, 0.2]
    >>> feedback_weight(1, 0.2)
    0.2
    """
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, step / warmup_steps)


class StructuralFeedback(nn.Module):
    """The structural-feedback term ``lambda_t * (1 - s_t)`` added to the data term.

    Args:
        similarity: the structural similarity ``s_t`` in [0, 1]:

            * ``observed_ssim`` -- SSIM between ``A(x_hat)`` and the observation over the
              known pixels (:func:`observed_ssim`): the fit is pushed to match the observed
              structure, not only the pixel values;
            * ``temporal_ssim`` -- SSIM between ``x_hat`` and the running average of the past
              outputs (:func:`temporal_ssim`): the output is held close to its own average,
              damping the step-to-step jitter of the fit;
            * ``edge`` -- cosine similarity of the Sobel gradients of ``x_hat`` and of the
              running average (:func:`edge_similarity`): the edges are held steady.
        weight: ``lambda`` (after the warm-up).
        warmup_steps: ramp ``lambda`` up linearly over this many steps (0: constant).
        average_decay: weight of the running average that ``temporal_ssim`` and ``edge``
            compare with, used when the module keeps no output average of its own (its
            ``ema_decay`` is 0); otherwise that average (``output_ema``) is used.

    Called by the loop as ``feedback(x, prediction=A(x), observation=y, known=..., average=...,
    step=...)``; with ``average=None`` (the first step, before any output exists) a term that
    needs the average is 0.

    >>> feedback = StructuralFeedback("temporal_ssim", weight=0.5, warmup_steps=10)
    >>> x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    >>> float(feedback(x, prediction=x, observation=x, average=1 - x, step=5))
    0.25
    """

    def __init__(
        self,
        similarity: Similarity = "observed_ssim",
        weight: float = 0.01,
        warmup_steps: int = 0,
        average_decay: float = 0.99,
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            choices = ", ".join(SIMILARITIES)
            raise ConfigError(f"feedback similarity {similarity!r} is unknown; use {choices}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"feedback weight = {weight} is out of range; use a weight >= 0")
        if warmup_steps < 0:
            raise ConfigError(f"feedback warmup_steps = {warmup_steps}; use >= 0")
        if not 0 <= average_decay < 1:
            raise ConfigError(f"feedback average_decay = {average_decay}; use a weight in [0, 1)")
        self.similarity: Similarity = similarity
        self.weight = float(weight)
        self.warmup_steps = int(warmup_steps)
        self.average_decay = float(average_decay)

    def extra_repr(self) -> str:
        return f"similarity={self.similarity!r}, weight={self.weight}, warmup={self.warmup_steps}"

    @property
    def needs_average(self) -> bool:
        """Whether ``s_t`` compares with the running average of the outputs."""
        return self.similarity != "observed_ssim"

    def weight_at(self, step: int) -> float:
        """``lambda_t`` at 1-based ``step`` (:func:`feedback_weight`)."""
        return feedback_weight(step, self.weight, self.warmup_steps)

    def score(
        self,
        x: torch.Tensor,
        *,
        prediction: torch.Tensor,
        observation: torch.Tensor,
        known: torch.Tensor | None = None,
        average: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``s_t`` in [0, 1] (0-dim tensor)."""
        if self.similarity == "observed_ssim":
            return observed_ssim(prediction, observation, known)
        if average is None:
            raise ValueError(f"{self.similarity} needs the running average of the outputs")
        if self.similarity == "temporal_ssim":
            return temporal_ssim(x, average)
        return edge_similarity(x, average)

    def forward(
        self,
        x: torch.Tensor,
        *,
        prediction: torch.Tensor,
        observation: torch.Tensor,
        step: int,
        known: torch.Tensor | None = None,
        average: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``lambda_t * (1 - s_t)``, a 0-dim tensor (0 when ``s_t`` needs a missing average)."""
        if self.needs_average and average is None:
            return x.new_zeros(())
        s = self.score(
            x, prediction=prediction, observation=observation, known=known, average=average
        )
        return self.weight_at(step) * (1.0 - s)
