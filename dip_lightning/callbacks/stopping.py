"""Early stopping without ground truth: choose the step whose output is returned, and stop.

Deep Image Prior first fits the image's structure and later its noise, so the result depends on
when the fit stops. These callbacks score every step with a quantity that needs no clean
image (lower is better), keep the restored image of the best-scoring step, and stop the fit when
the best score has not improved for ``patience`` steps:

* :class:`WindowedVariance` -- the windowed moving variance of Wang et al. ("Early Stopping for
  Deep Image Prior", TMLR 2023): the variance of the last ``window`` outputs; it falls while the
  network settles on the image and rises when it starts to follow the noise.
* :class:`ExponentialVariance` -- its exponential variant (their EMV), with weight ``alpha``: no
  window of images to keep, so it suits large images.
* :class:`HeldoutStopping` -- the error on pixels left out of the data term
  (``model.holdout_fraction``): for denoising an unbiased estimate of the true error plus the
  noise variance.
* :class:`PeakPSNR` -- the PSNR against a known clean reference: the oracle, for studies and
  benchmarks on images with a reference (``dip search --stopping best``), not for real images.

The image kept is :meth:`~dip_lightning.tasks.base.DIPModule.restored_batch` at the best step:
the output EMA when the module keeps one (the variance criteria are computed on the raw outputs,
the average is what is returned), the raw output otherwise. ``RunArtifacts`` writes it as
``restored.png`` and its step as ``selected_step`` in ``metrics.json``. The score is logged as
``stopping/<name>`` (also on the progress bar) and the selected step as
``stopping/selected_step``.

Several criteria can watch one fit: those with ``stop: false`` only record the step at which they
would have stopped (``would_stop_step``) and their choice at that moment, which lets one run
compare criteria. The first criterion that stops the fit selects the image written.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from dip_lightning.errors import ConfigError

if TYPE_CHECKING:
    from dip_lightning.tasks.base import DIPModule

log = logging.getLogger(__name__)


class StoppingCriterion(Callback):
    """Base class: track the best score, keep the image of its step, stop after ``patience``.

    Args:
        patience: stop when the best score is this many steps old.
        min_steps: steps ignored before the score may select a step (the first outputs of a
            fit are far from the image whatever the score says).
        stop: stop the fit (``false``: only record when it would have stopped).
        check_every_n_steps: read the device-side state on the host this often (a host sync;
            every step costs nothing on a CPU, a little on a GPU).
        log_every_n_steps: log the score this often (``null``: the trainer's
            ``log_every_n_steps``).
    """

    #: name in logs and ``metrics.json``
    name = "criterion"

    def __init__(
        self,
        patience: int = 1000,
        min_steps: int = 100,
        stop: bool = True,
        check_every_n_steps: int = 1,
        log_every_n_steps: int | None = None,
    ) -> None:
        for key, value, low in (
            ("patience", patience, 1),
            ("min_steps", min_steps, 0),
            ("check_every_n_steps", check_every_n_steps, 1),
        ):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ConfigError(f"{self.name}.{key} = {value} is out of range; use >= {low}")
        self.patience = int(patience)
        self.min_steps = int(min_steps)
        self.stop = bool(stop)
        self.check_every_n_steps = int(check_every_n_steps)
        self.log_every_n_steps = log_every_n_steps
        self.best_score: torch.Tensor | None = None
        self.best_step: torch.Tensor | None = None
        self.best_image: torch.Tensor | None = None
        #: step at which the patience ran out (None while it has not)
        self.would_stop_step: int | None = None
        self._frozen: tuple[torch.Tensor, int, float] | None = None
        self._loaded: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ------------------------------------------------------------------ to override

    def prepare(self, module: DIPModule) -> None:
        """Allocate the criterion's own buffers for ``module``'s output shape."""

    def score(self, module: DIPModule, step: int) -> torch.Tensor | None:
        """This step's score (a 0-dim tensor on the device, lower is better), or ``None`` while
        it is not defined yet."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ the hooks

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        module: DIPModule = pl_module  # type: ignore[assignment]
        shape = module.restored_batch().shape
        device = module.restored_batch().device
        self.best_score = torch.tensor(math.inf, device=device)
        self.best_step = torch.tensor(0, dtype=torch.long, device=device)
        self.best_image = torch.zeros(shape, device=device)
        self.would_stop_step = None
        self._frozen = None
        self.prepare(module)
        if self._loaded is not None:
            state, self._loaded = self._loaded, None
            self.best_score.copy_(state["best_score"])
            self.best_step.copy_(state["best_step"])
            self.best_image.copy_(state["best_image"])
            self.would_stop_step = state.get("would_stop_step")
            frozen = state.get("frozen")
            if frozen is not None:
                self._frozen = (frozen[0].to(device), int(frozen[1]), float(frozen[2]))
            self.load_extra_state(state.get("extra", {}))
        if self.log_every_n_steps is None:
            self.log_every_n_steps = max(int(getattr(trainer, "log_every_n_steps", 50)), 1)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        module: DIPModule = pl_module  # type: ignore[assignment]
        assert self.best_score is not None and self.best_step is not None
        assert self.best_image is not None
        step = int(trainer.global_step)
        value = self.score(module, step)
        if value is None:
            return
        every = self.log_every_n_steps or 1
        if step % every == 0:
            module.log(f"stopping/{self.name}", value, on_step=True, on_epoch=False, prog_bar=True)
        if step <= self.min_steps:
            return
        bad = module._bad if module._bad is not None else torch.zeros((), dtype=torch.bool)
        with torch.no_grad():
            better = (value < self.best_score) & ~bad.to(value.device)
            self.best_score.copy_(torch.where(better, value, self.best_score))
            self.best_step.copy_(torch.where(better, step, self.best_step))
            self.best_image.copy_(torch.where(better, module.restored_batch(), self.best_image))
        if self.would_stop_step is None and step % self.check_every_n_steps == 0:
            best_step = int(self.best_step)
            if best_step > 0 and step - best_step >= self.patience:
                self.would_stop_step = step
                self._frozen = (self.best_image.clone(), best_step, float(self.best_score))
                if self.stop:
                    log.info(
                        "%s: no better score for %d steps, stopping at step %d (selected %d)",
                        self.name,
                        self.patience,
                        step,
                        best_step,
                    )
                    trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        selection = self.selection()
        if selection is not None:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {f"stopping/{self.name}_selected_step": float(selection[1])},
                    step=trainer.global_step,
                )

    # ------------------------------------------------------------------ results

    def selection(self) -> tuple[torch.Tensor, int, float] | None:
        """``(image (1, C, H, W), step, score)`` chosen: at the moment the patience ran out, or
        the best so far when it has not; ``None`` before any step was scored."""
        if self._frozen is not None:
            return self._frozen
        if self.best_step is None or self.best_image is None or self.best_score is None:
            return None
        step = int(self.best_step)
        if step == 0:
            return None
        return self.best_image, step, float(self.best_score)

    def state_dict(self) -> dict[str, Any]:
        if self.best_score is None or self.best_step is None or self.best_image is None:
            return {}
        frozen = None
        if self._frozen is not None:
            frozen = (self._frozen[0].cpu(), self._frozen[1], self._frozen[2])
        return {
            "best_score": self.best_score.cpu(),
            "best_step": self.best_step.cpu(),
            "best_image": self.best_image.cpu(),
            "would_stop_step": self.would_stop_step,
            "frozen": frozen,
            "extra": {
                k: v.cpu() if isinstance(v, torch.Tensor) else v
                for k, v in self.extra_state().items()
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict) if state_dict else None


class WindowedVariance(StoppingCriterion):
    """Variance of the last ``window`` raw outputs, averaged over pixels (Wang et al.'s WMV).

    Keeps the ``window`` outputs on the device (``window * C * H * W`` floats: 30 MB for a
    128x128 colour image and the default window, 300 MB at 512x512; use
    :class:`ExponentialVariance` when that is too much).

    Args:
        window: number of outputs (100 in the paper).
        patience: steps without a lower variance before stopping (1000 in the paper).
        min_steps: steps before a step may be selected (at least the window fills).
    """

    name = "variance"

    def __init__(
        self, window: int = 100, patience: int = 1000, min_steps: int = 100, **kwargs: Any
    ) -> None:
        if isinstance(window, bool) or int(window) != window or window < 2:
            raise ConfigError(f"variance.window = {window} is out of range; use >= 2")
        super().__init__(patience=patience, min_steps=min_steps, **kwargs)
        self.window = int(window)
        self._outputs: torch.Tensor | None = None
        self._count = 0

    def prepare(self, module: DIPModule) -> None:
        output = module.last_output
        self._outputs = torch.zeros((self.window, *output.shape[1:]), device=output.device)
        self._count = 0

    def score(self, module: DIPModule, step: int) -> torch.Tensor | None:
        assert self._outputs is not None
        self._outputs[self._count % self.window].copy_(module.last_output[0])
        self._count += 1
        if self._count < self.window:
            return None
        return self._outputs.var(dim=0, unbiased=False).mean()

    def extra_state(self) -> dict[str, Any]:
        return {"outputs": self._outputs, "count": self._count}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "outputs" in state and self._outputs is not None:
            self._outputs.copy_(state["outputs"])
            self._count = int(state["count"])


class ExponentialVariance(StoppingCriterion):
    """Exponential moving variance of the raw outputs (Wang et al.'s EMV):
    ``m_t = (1 - a) m_{t-1} + a x_t`` and
    ``v_t = (1 - a) (v_{t-1} + a |x_t - m_{t-1}|^2)``, averaged over pixels.

    Args:
        alpha: the weight ``a`` of the newest output (0.1 in the paper).
        patience: steps without a lower variance before stopping.
        min_steps: steps before a step may be selected (the variance of the first outputs,
            which start from a flat image, says nothing about noise).
    """

    name = "ema_variance"

    def __init__(
        self, alpha: float = 0.1, patience: int = 1000, min_steps: int = 100, **kwargs: Any
    ) -> None:
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ConfigError(f"ema_variance.alpha = {alpha} is out of range; use (0, 1)")
        super().__init__(patience=patience, min_steps=min_steps, **kwargs)
        self.alpha = float(alpha)
        self._mean: torch.Tensor | None = None
        self._variance: torch.Tensor | None = None
        self._count = 0

    def prepare(self, module: DIPModule) -> None:
        output = module.last_output
        self._mean = torch.zeros_like(output)
        self._variance = torch.zeros_like(output)
        self._count = 0

    def score(self, module: DIPModule, step: int) -> torch.Tensor | None:
        assert self._mean is not None and self._variance is not None
        x = module.last_output
        a = self.alpha
        self._count += 1
        if self._count == 1:
            self._mean.copy_(x)
            return None
        delta = x - self._mean
        self._variance.mul_(1 - a).add_(delta.square(), alpha=a * (1 - a))
        self._mean.add_(delta, alpha=a)
        if self._count <= math.ceil(1 / a):
            return None
        return self._variance.mean()

    def extra_state(self) -> dict[str, Any]:
        return {"mean": self._mean, "variance": self._variance, "count": self._count}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "mean" in state and self._mean is not None and self._variance is not None:
            self._mean.copy_(state["mean"])
            self._variance.copy_(state["variance"])
            self._count = int(state["count"])


class HeldoutStopping(StoppingCriterion):
    """The MSE of ``A(restored)`` on the held-out pixels (``model.holdout_fraction`` > 0).

    Args:
        patience: steps without a lower held-out error before stopping.
        min_steps: steps before a step may be selected.
    """

    name = "heldout"

    def __init__(self, patience: int = 200, min_steps: int = 50, **kwargs: Any) -> None:
        super().__init__(patience=patience, min_steps=min_steps, **kwargs)

    def prepare(self, module: DIPModule) -> None:
        if module.holdout_keep is None:
            raise ConfigError(
                "the held-out stopping criterion needs held-out pixels; set "
                "model.holdout_fraction (e.g. 0.05)"
            )

    def score(self, module: DIPModule, step: int) -> torch.Tensor | None:
        return getattr(module, "_heldout_mse", None)


class PeakPSNR(StoppingCriterion):
    """The PSNR of the restored image against the clean reference (``data.clean``, or a
    simulated observation): the oracle that a study with a known reference stops on.

    Not a criterion for real images: it needs the reference. ``dip search --stopping best``
    uses it to keep each trial's best image and step.

    Args:
        patience: steps without a higher PSNR before stopping.
        min_steps: steps before a step may be selected.
    """

    name = "psnr"

    def __init__(self, patience: int = 1000, min_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(patience=patience, min_steps=min_steps, **kwargs)

    def prepare(self, module: DIPModule) -> None:
        if module.clean is None:
            raise ConfigError(
                "the psnr stopping criterion needs a clean reference; give data.clean or "
                "simulate the observation (e.g. data.noise_sigma)"
            )

    def score(self, module: DIPModule, step: int) -> torch.Tensor | None:
        current = getattr(module, "_psnr_current", None)
        return None if current is None else -current


def stopping_selection(trainer: Trainer) -> tuple[StoppingCriterion, torch.Tensor, int] | None:
    """The criterion whose image a fit returns, with that image ``(1, C, H, W)`` and its step:
    the first criterion that stopped the fit, else the first stopping one, else the first."""
    criteria = [c for c in trainer.callbacks if isinstance(c, StoppingCriterion)]  # type: ignore[attr-defined]
    if not criteria:
        return None
    stopped = [c for c in criteria if c.stop and c.would_stop_step is not None]
    stoppers = [c for c in criteria if c.stop]
    ordered = sorted(stopped, key=lambda c: c.would_stop_step or 0) or stoppers or criteria
    for criterion in ordered:
        selection = criterion.selection()
        if selection is not None:
            return criterion, selection[0], selection[1]
    return None


__all__ = [
    "ExponentialVariance",
    "HeldoutStopping",
    "PeakPSNR",
    "StoppingCriterion",
    "WindowedVariance",
    "stopping_selection",
]
