"""Stein's unbiased risk estimate as the data term of a denoising fit (``model.loss: sure``).

For an observation ``y = x + n`` with white Gaussian noise of std ``sigma`` and an estimate
``f(y)`` that is a weakly differentiable function of ``y``, the mean squared error against the
unknown clean image has the unbiased estimate (Stein 1981)::

    SURE = |y - f(y)|^2 / N - sigma^2 + 2 sigma^2 div_y f(y) / N

With the observation as the network's input (``model.input_type: observation``), the fit's
output is such a function, and minimising SURE instead of ``|y - f(y)|^2`` penalises the
network for copying its input, the noise with it (DIP-SURE, Metzler et al. 2018; Jo et al.,
ICCV 2021). The divergence is estimated by Monte Carlo with one Gaussian probe ``b`` a step
(Ramani et al. 2008): ``div ~ b . (f(y + eps b) - f(y)) / eps``, a second forward pass.

:class:`SureTerm` is the part of :class:`~dip_lightning.tasks.DIPModule` that adds the
divergence term to the data term; the functions below are the estimator on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from dip_lightning.degradations.identity import Identity
from dip_lightning.errors import ConfigError
from dip_lightning.metrics.noise_level import estimate_sigma
from dip_lightning.seeding import stream_generator

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = ["SureTerm", "monte_carlo_divergence", "sure", "sure_minus_mse"]

log = logging.getLogger(__name__)


def monte_carlo_divergence(
    f: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    probe: torch.Tensor,
    epsilon: float,
    fy: torch.Tensor | None = None,
) -> torch.Tensor:
    """``b . (f(y + eps b) - f(y)) / eps`` for the probe ``b``: an unbiased estimate (as ``eps``
    goes to 0, over standard normal probes) of the divergence ``sum_i df_i / dy_i``.

    >>> a = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    >>> f = lambda v: a @ v  # divergence: the trace, 5
    >>> probes = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    >>> estimate = sum(monte_carlo_divergence(f, torch.ones(2), b, 1e-3) for b in probes)
    >>> round(float(estimate) / len(probes), 1)
    5.0
    """
    base = f(y) if fy is None else fy
    return (probe * (f(y + epsilon * probe) - base)).sum() / epsilon


def sure_minus_mse(
    sigma: float, divergence: torch.Tensor, count: torch.Tensor | float, n: int
) -> torch.Tensor:
    """What SURE adds to the mean squared error ``|y - f(y)|^2 / n`` over the ``n`` values of
    ``y``: ``(2 sigma^2 div - count sigma^2) / n``, for ``count`` observed values."""
    return (2 * sigma**2 * divergence - count * sigma**2) / n


def sure(
    y: torch.Tensor,
    fy: torch.Tensor,
    sigma: float,
    divergence: torch.Tensor,
    count: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Stein's unbiased estimate of ``mean((f(y) - x)**2)`` over the ``count`` observed values
    (all of ``y`` by default): ``(|y - f(y)|^2 - count sigma^2 + 2 sigma^2 div) / y.numel()``,
    the same normalisation as a mean squared error over ``y``."""
    n = y.numel()
    observed = n if count is None else count
    return (y - fy).square().sum() / n + sure_minus_mse(sigma, divergence, observed, n)


class SureTerm(_Base):
    """The divergence part of the SURE data term of a :class:`~dip_lightning.tasks.DIPModule`
    (``model.loss: sure``)."""

    loss_name: str
    seed: int
    z: torch.Tensor
    observation: torch.Tensor
    holdout_keep: torch.Tensor | None
    crop_box: Any
    degradation: Any
    sure_sigma: float | None
    sure_epsilon: float
    _sure_sigma_used: float
    _sure_count: float
    _divergence_generator: torch.Generator | None
    _divergence_state: torch.Tensor | None
    _step_input: torch.Tensor | None

    def _init_sure(self, sigma: float | None, epsilon: float) -> None:
        self.sure_sigma = None if sigma is None else float(sigma)
        self.sure_epsilon = float(epsilon)
        self._sure_sigma_used = 0.0
        self._sure_count = 0.0
        self._divergence_generator = None
        self._divergence_state = None
        self._step_input = None

    def start_sure(self) -> None:
        """At the start of a fit with ``loss: sure``: the noise level (given, on 0-255, or
        estimated from the observation) and the probes' generator (its checkpointed state on
        a resume)."""
        if self.loss_name != "sure":
            return
        if not isinstance(self.degradation, Identity):
            raise ConfigError(
                "model.loss sure estimates the error of Gaussian denoising (A the identity); "
                "use it with DenoisingDIP, or model.loss: mse"
            )
        if self.sure_sigma is None:
            self._sure_sigma_used = estimate_sigma(self.observation.float())
            log.info(
                "SURE: noise sigma %.2f (on 0-255), estimated from the image; set "
                "model.sure_sigma to give it",
                self._sure_sigma_used * 255,
            )
        else:
            self._sure_sigma_used = self.sure_sigma / 255.0
        keep = self.holdout_keep  # the values the data term sees: all but the held-out ones
        channels = self.observation.shape[1]
        self._sure_count = float(
            self.observation.numel() if keep is None else keep.sum() * channels
        )
        generator = stream_generator(self.seed, "divergence", self.z.device)
        if self._divergence_state is not None:
            generator.set_state(self._divergence_state)
            self._divergence_state = None
        self._divergence_generator = generator

    def sure_correction(self, x: torch.Tensor) -> torch.Tensor:
        """What turns the fit's squared-error data term (a mean over the observation) into
        SURE for the output ``x`` of this step's input: ``(2 sigma^2 div - count sigma^2) / N``
        over the observed (not held-out) values, with a fresh probe."""
        assert self._divergence_generator is not None and self._step_input is not None
        box = self.crop_box
        z = self._step_input
        probe = torch.randn(
            z.shape, generator=self._divergence_generator, device=z.device, dtype=torch.float32
        ).to(z.dtype)
        shifted = self(z + self.sure_epsilon * probe)
        inner = probe[..., box.top : box.bottom, box.left : box.right].float()
        keep = self.holdout_keep
        if keep is not None:
            inner = inner * keep
        divergence = (inner * (shifted - x)).sum() / self.sure_epsilon
        return sure_minus_mse(
            self._sure_sigma_used, divergence, self._sure_count, self.observation.numel()
        )

    def sure_state(self) -> dict[str, Any]:
        if self._divergence_generator is None:
            return {}
        return {"sure_probes": self._divergence_generator.get_state()}

    def load_sure_state(self, state: dict[str, Any]) -> None:
        self._divergence_state = state.get("sure_probes")
