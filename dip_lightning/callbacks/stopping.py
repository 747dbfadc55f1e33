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

A criterion keeps its state on the device and reads it on the host only at the fit's log steps
(every ``trainer.log_every_n_steps``), with the module's other values in one read: a fit stops
at the first log step at or after the step its patience ran out (``would_stop_step``), and the
image it returns is the best one up to that step. A step the divergence guard rolled back
enters no score, and a fit resumed after its criterion stopped stops at once.

Several criteria can watch one fit: those with ``stop: false`` only record the step at which they
would have stopped (``would_stop_step``) and their choice at that moment, which lets one run
compare criteria. The first criterion that stops the fit selects the image written.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from dip_lightning.callbacks.protocol import FitModule
from dip_lightning.errors import ConfigError

log = logging.getLogger(__name__)


class StoppingCriterion(Callback):
    """Base class: track the best score, keep the image of its step, stop after ``patience``.

    Everything a criterion tracks lives on the device and is updated at every step without a
    host sync: the best score, its step and image, and the step at which the patience ran out
    (after which the best is frozen, so the choice is the one made at that moment). A step the
    divergence guard rolled back enters no score. The state is read on the host with the other
    values of a log step (one host sync, every ``trainer.log_every_n_steps`` steps, see
    :meth:`~dip_lightning.tasks.base.DIPModule.read_at_log_step`): the score is logged then,
    and a fit whose patience ran out stops at the first log step at or after that step (a
    fit resumed after its criterion stopped stops at once).

    Args:
        patience: the patience runs out when the best score is this many steps old.
        min_steps: steps ignored before the score may select a step (the first outputs of a
            fit are far from the image whatever the score says).
        stop: stop the fit (``false``: only record when it would have stopped).
        check_every_n_steps: read the criterion's state on the host (log its score, stop the
            fit) every this many steps (``null``: ``log_every_n_steps``).
        log_every_n_steps: the same; ``null`` (with ``check_every_n_steps``): the trainer's
            ``log_every_n_steps``, so the read shares the host sync of the fit's own logging.
    """

    #: name in logs and ``metrics.json``
    name = "criterion"

    def __init__(
        self,
        patience: int = 1000,
        min_steps: int = 100,
        stop: bool = True,
        check_every_n_steps: int | None = None,
        log_every_n_steps: int | None = None,
    ) -> None:
        for key, value, low in (
            ("patience", patience, 1),
            ("min_steps", min_steps, 0),
            ("check_every_n_steps", check_every_n_steps, 1),
            ("log_every_n_steps", log_every_n_steps, 1),
        ):
            if value is None and key.endswith("_every_n_steps"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{self.name}.{key} = {value} is out of range; use >= {low}")
            if int(value) != value or value < low:
                raise ConfigError(f"{self.name}.{key} = {value} is out of range; use >= {low}")
        self.patience = int(patience)
        self.min_steps = int(min_steps)
        self.stop = bool(stop)
        self.check_every_n_steps = check_every_n_steps
        self.log_every_n_steps = log_every_n_steps
        self._every = 1
        self.best_score: torch.Tensor | None = None
        self.best_step: torch.Tensor | None = None
        self.best_image: torch.Tensor | None = None
        #: the step at which the patience ran out, on the device (0 while it has not)
        self.expired_step: torch.Tensor | None = None
        #: step at which the patience ran out (None while it has not, or is not read yet)
        self.would_stop_step: int | None = None
        #: the best step as last read on the host (at a log step; 0: none yet), no sync
        self.read_best_step = 0
        self._loaded: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ------------------------------------------------------------------ to override

    def prepare(self, module: FitModule) -> None:
        """Allocate the criterion's own buffers for ``module``'s output shape."""

    def score(self, module: FitModule, step: int) -> torch.Tensor | None:
        """This step's score: a 0-dim tensor on the device, lower is better, NaN while it is
        not defined yet; ``None`` when there is none at all. Called at every step, also for a
        rolled-back one (``module._bad``), which must not change the criterion's history."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ the hooks

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        module: FitModule = pl_module  # type: ignore[assignment]
        restored = module.restored_batch()
        device = restored.device
        self.best_score = torch.tensor(math.inf, device=device)
        self.best_step = torch.tensor(0, dtype=torch.long, device=device)
        self.best_image = torch.zeros(restored.shape, dtype=restored.dtype, device=device)
        self.expired_step = torch.tensor(0, dtype=torch.long, device=device)
        self.would_stop_step = None
        self.read_best_step = 0
        self.prepare(module)
        if self._loaded is not None:
            state, self._loaded = self._loaded, None
            self.best_score.copy_(state["best_score"])
            self.best_step.copy_(state["best_step"])
            self.best_image.copy_(state["best_image"])
            # a checkpoint taken after the patience ran out but before it was read holds the
            # step on the device only
            expired = int(state.get("expired_step", state.get("would_stop_step") or 0))
            self.would_stop_step = state.get("would_stop_step") or expired or None
            self.expired_step.fill_(expired)
            self.read_best_step = int(state["best_step"])  # a CPU tensor of the checkpoint
            frozen = state.get("frozen")  # written before the best froze with the patience
            if frozen is not None:
                self.best_image.copy_(frozen[0])
                self.best_step.fill_(int(frozen[1]))
                self.best_score.fill_(float(frozen[2]))
                self.read_best_step = int(frozen[1])
            self.load_extra_state(state.get("extra", {}))
        default = max(int(getattr(trainer, "log_every_n_steps", 50)), 1)
        self._every = self.check_every_n_steps or self.log_every_n_steps or default

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A fit resumed after this criterion's patience ran out stops at once."""
        if self.stop and self.would_stop_step is not None:
            log.info(
                "%s: its patience ran out at step %d; nothing left to fit",
                self.name,
                self.would_stop_step,
            )
            trainer.should_stop = True

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        """Score the step's output (it is known once ``training_step`` ran)."""
        self.update(trainer, pl_module, int(trainer.global_step) + 1)  # type: ignore[arg-type]

    def update(self, trainer: Trainer, module: FitModule, step: int) -> None:
        """Score step ``step``, update the best and the patience on the device, and at a log
        step queue the state for the module's host read (:meth:`on_read`)."""
        assert self.best_score is not None and self.best_step is not None
        assert self.best_image is not None and self.expired_step is not None
        value = self.score(module, step)
        if value is None:
            return
        if step > self.min_steps:
            bad = module._bad if module._bad is not None else torch.zeros((), dtype=torch.bool)
            with torch.no_grad():
                running = self.expired_step == 0
                better = (value < self.best_score) & ~bad.to(value.device) & running
                self.best_score.copy_(torch.where(better, value, self.best_score))
                self.best_step.copy_(torch.where(better, step, self.best_step))
                restored = module.restored_batch()
                self.best_image.copy_(torch.where(better, restored, self.best_image))
                ran_out = running & (self.best_step > 0) & (step - self.best_step >= self.patience)
                self.expired_step.copy_(torch.where(ran_out, step, self.expired_step))
        if step % self._every == 0 or step == trainer.max_steps:
            values = [value, self.expired_step, self.best_step, self.best_score]
            module.read_at_log_step(values, lambda host: self.on_read(trainer, module, step, host))

    def on_read(self, trainer: Trainer, module: FitModule, step: int, host: list[float]) -> None:
        """At a log step, with the values read on the host: log the score; stop the fit once
        the patience has run out."""
        score, expired, best_step, best_score = host
        self.read_best_step = int(best_step)
        if not math.isnan(score):
            module.log_host_values({f"stopping/{self.name}": score})
        if expired and self.would_stop_step is None:
            self.would_stop_step = int(expired)
            if self.stop:
                log.info(
                    "%s: no better score for %d steps at step %d, stopping at step %d "
                    "(selected %d, score %.4g)",
                    self.name,
                    self.patience,
                    self.would_stop_step,
                    step,
                    int(best_step),
                    best_score,
                )
                trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.settle()
        selection = self.selection()
        if selection is not None:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {f"stopping/{self.name}_selected_step": float(selection[1])},
                    step=trainer.global_step,
                )

    def settle(self) -> None:
        """Read whether the patience ran out since the last log step (one host sync)."""
        if self.would_stop_step is None and self.expired_step is not None:
            expired = int(self.expired_step)
            self.would_stop_step = expired or None

    # ------------------------------------------------------------------ results

    def selection(self) -> tuple[torch.Tensor, int, float] | None:
        """``(image (1, C, H, W), step, score)`` chosen: the best when the patience ran out
        (the best is frozen then), or the best so far when it has not; ``None`` before any
        step was scored."""
        if self.best_step is None or self.best_image is None or self.best_score is None:
            return None
        step = int(self.best_step)
        if step == 0:
            return None
        return self.best_image, step, float(self.best_score)

    def state_dict(self) -> dict[str, Any]:
        if self.best_score is None or self.best_step is None or self.best_image is None:
            return {}
        assert self.expired_step is not None
        return {
            "best_score": self.best_score.cpu(),
            "best_step": self.best_step.cpu(),
            "best_image": self.best_image.cpu(),
            "would_stop_step": self.would_stop_step,
            "expired_step": int(self.expired_step),
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
    :class:`ExponentialVariance` when that is too much), and the per-pixel sums of the window's
    values and of their squares in float64, updated with the frame that enters and the one that
    leaves: a step costs a few passes over one image, not one over the window.

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
        self._count: torch.Tensor | None = None  # frames stored, on the device
        self._sum: torch.Tensor | None = None  # per pixel, over the window, float64
        self._sum_sq: torch.Tensor | None = None

    def prepare(self, module: FitModule) -> None:
        output = module.last_output
        shape = (self.window, *output.shape[1:])
        self._outputs = torch.zeros(shape, dtype=output.dtype, device=output.device)
        self._count = torch.zeros((), dtype=torch.long, device=output.device)
        self._sum = torch.zeros(shape[1:], dtype=torch.float64, device=output.device)
        self._sum_sq = torch.zeros_like(self._sum)

    def score(self, module: FitModule, step: int) -> torch.Tensor | None:
        """The variance of the last ``window`` outputs of good steps: a rolled-back step
        stores no frame (its slot is written with what it held)."""
        assert self._outputs is not None and isinstance(self._count, torch.Tensor)
        assert self._sum is not None and self._sum_sq is not None
        good = ~_rolled_back(module)
        slot = (self._count % self.window).view(1)
        leaving = self._outputs.index_select(0, slot)
        frame = torch.where(good, module.last_output, leaving)
        self._outputs.index_copy_(0, slot, frame)
        self._count.add_(good.long())
        new, old = frame[0].double(), leaving[0].double()
        self._sum.add_(new).sub_(old)
        self._sum_sq.addcmul_(new, new).addcmul_(old, old, value=-1)
        mean = self._sum / self.window
        variance = (self._sum_sq / self.window - mean.square()).clamp_min_(0).mean()
        return torch.where(self._count >= self.window, variance.to(frame.dtype), math.nan)

    def extra_state(self) -> dict[str, Any]:
        return {
            "outputs": self._outputs,
            "count": self._count,
            "sum": self._sum,
            "sum_sq": self._sum_sq,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "outputs" in state and self._outputs is not None:
            assert isinstance(self._count, torch.Tensor)
            assert self._sum is not None and self._sum_sq is not None
            self._outputs.copy_(state["outputs"])
            self._count.fill_(int(state["count"]))
            if state.get("sum") is not None and state.get("sum_sq") is not None:
                self._sum.copy_(state["sum"])
                self._sum_sq.copy_(state["sum_sq"])
            else:  # a checkpoint without the sums: take them from the window, frame by frame
                self._sum.zero_()
                self._sum_sq.zero_()
                for stored in self._outputs:  # one frame in float64 at a time
                    frame = stored.double()
                    self._sum.add_(frame)
                    self._sum_sq.addcmul_(frame, frame)


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
        self._count: torch.Tensor | None = None  # outputs taken in, on the device

    def prepare(self, module: FitModule) -> None:
        output = module.last_output
        self._mean = torch.zeros_like(output)
        self._variance = torch.zeros_like(output)
        self._count = torch.zeros((), dtype=torch.long, device=output.device)

    def score(self, module: FitModule, step: int) -> torch.Tensor | None:
        """The recursion over the outputs of good steps: a rolled-back step changes neither
        the mean nor the variance."""
        assert self._mean is not None and self._variance is not None
        assert isinstance(self._count, torch.Tensor)
        x = module.last_output
        a = self.alpha
        good = ~_rolled_back(module)
        first = self._count == 0
        delta = x - self._mean
        variance = (self._variance + a * delta.square()) * (1 - a)
        mean = torch.where(first, x, self._mean + a * delta)
        self._variance.copy_(torch.where(good & ~first, variance, self._variance))
        self._mean.copy_(torch.where(good, mean, self._mean))
        self._count.add_(good.long())
        defined = self._count > math.ceil(1 / a)
        return torch.where(defined, self._variance.mean(), math.nan)

    def extra_state(self) -> dict[str, Any]:
        return {"mean": self._mean, "variance": self._variance, "count": self._count}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "mean" in state and self._mean is not None and self._variance is not None:
            assert isinstance(self._count, torch.Tensor)
            self._mean.copy_(state["mean"])
            self._variance.copy_(state["variance"])
            self._count.fill_(int(state["count"]))


class HeldoutStopping(StoppingCriterion):
    """The MSE of ``A(restored)`` on the held-out pixels (``model.holdout_fraction`` > 0).

    Args:
        patience: steps without a lower held-out error before stopping.
        min_steps: steps before a step may be selected.
    """

    name = "heldout"

    def __init__(self, patience: int = 200, min_steps: int = 50, **kwargs: Any) -> None:
        super().__init__(patience=patience, min_steps=min_steps, **kwargs)

    def prepare(self, module: FitModule) -> None:
        if module.holdout_keep is None:
            raise ConfigError(
                "the held-out stopping criterion needs held-out pixels; set "
                "model.holdout_fraction (e.g. 0.05)"
            )

    def score(self, module: FitModule, step: int) -> torch.Tensor | None:
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

    def prepare(self, module: FitModule) -> None:
        if module.clean is None:
            raise ConfigError(
                "the psnr stopping criterion needs a clean reference; give data.clean or "
                "simulate the observation (e.g. data.noise_sigma)"
            )

    def score(self, module: FitModule, step: int) -> torch.Tensor | None:
        current = getattr(module, "_psnr_current", None)
        return None if current is None else -current


def _rolled_back(module: FitModule) -> torch.Tensor:
    """Whether the divergence guard rolled the module's current step back (0-dim bool)."""
    bad = module._bad
    device = module.last_output.device
    return torch.zeros((), dtype=torch.bool, device=device) if bad is None else bad.to(device)


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
