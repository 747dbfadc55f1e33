"""``DIPModule``: the one Deep Image Prior loop that every task shares.

``z`` (a fixed buffer) is perturbed by ``sigma_p * noise`` each step, the network maps it to an
image ``x_hat``, the task's degradation maps ``x_hat`` to the observation space, and the data term
compares ``A(x_hat)`` with the observation ``y``. The loop never knows which task it runs: a task
subclass only chooses its degradation (:meth:`DIPModule.build_degradation`) and its defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from torch import nn

from dip_lightning.callbacks.artifacts import RunArtifacts
from dip_lightning.callbacks.images import ImageLogger
from dip_lightning.data.datamodule import ImageSample, SingleImageDataModule
from dip_lightning.data.padding import CropBox, pad_centered
from dip_lightning.degradations.base import Degradation
from dip_lightning.losses import StructuralFeedback
from dip_lightning.metrics.psnr import psnr
from dip_lightning.metrics.ssim import ssim
from dip_lightning.networks.inputs import InputType, make_input
from dip_lightning.networks.skip import SkipNet
from dip_lightning.seeding import stream_generator
from dip_lightning.tasks.building import FitBuilding, check_observation_input, check_options
from dip_lightning.tasks.feedback import FeedbackTerm
from dip_lightning.tasks.guard import DivergenceGuard, LastGoodState
from dip_lightning.tasks.holdout import HeldOutPixels
from dip_lightning.tasks.host_reads import HostReads
from dip_lightning.tasks.perturbation import Perturbation
from dip_lightning.tasks.scores import CheckpointScores
from dip_lightning.tasks.sure import SureTerm

#: A network class (or factory) called as ``net(in_channels, out_channels)``; in a config,
#: ``class_path`` plus every ``init_args`` except the two channel counts.
NetFactory = Callable[[int, int], nn.Module]

#: An optimizer class (or factory) called as ``optimizer(parameters, lr)`` with the module's
#: ``lr``; in a config, ``class_path`` plus every ``init_args`` except those two.
OptimizerFactory = Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer]

LossName = Literal["mse", "l1", "sure"]


class FitLoop(LightningModule):
    """The steps of a fit, the same for one image (:class:`DIPModule`) and for several at once
    (:class:`~dip_lightning.tasks.batched.BatchedDIP`), which give the hooks, not the steps:
    perturb ``z``, forward, the loss (:meth:`fit_step`: ``A``, data term, guard, averages);
    backward and the optimizer's step; the guard's roll-back; the log step's one host read."""

    if TYPE_CHECKING:  # the hooks, given by the subclasses (and DIPModule's mixins)

        def perturbed_input(self) -> torch.Tensor: ...
        def fit_step(self, x: Any, step: int) -> torch.Tensor: ...
        def guarded_parameters(self) -> list[torch.Tensor] | None: ...
        def keep_state_before_step(self, params: list[torch.Tensor], optimizer: Any) -> None: ...
        def roll_back_diverged(
            self, params: list[torch.Tensor], optimizer: Any, step: int
        ) -> None: ...
        def flush_host_reads(self) -> None: ...

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.fit_step(self(self.perturbed_input()), self.global_step + 1)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """The step (``training_step``, backward, ``optimizer.step``), then the divergence
        guard: where this step diverged, the parameters and the optimizer state are set back
        to the last good ones (:class:`~dip_lightning.tasks.guard.LastGoodState`); then the log
        step's one host read."""
        step = self.global_step + 1
        params = self.guarded_parameters()
        if params is not None:
            self.keep_state_before_step(params, optimizer)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if params is not None:
            self.roll_back_diverged(params, optimizer, step)
        self.flush_host_reads()


class DIPModule(
    FitBuilding,
    Perturbation,
    HeldOutPixels,
    DivergenceGuard,
    FeedbackTerm,
    SureTerm,
    HostReads,
    CheckpointScores,
    FitLoop,
):
    """Fit a randomly initialised network to one degraded image.

    Args:
        net: the network, ``net(in_channels, out_channels)``; the paper's skip hourglass by
            default (5 levels of 128 channels, 4 skip channels).
        input_type: ``uniform`` (the paper's, in [0, input_scale]), ``normal``, ``meshgrid``,
            ``fourier`` (random Fourier features of the coordinates, amplitude input_scale) or
            ``observation`` (the observation itself; ``input_depth`` its channels).
        input_depth: channels of ``z`` (2 for ``meshgrid``).
        input_scale: scale of the uniform or normal input (0.1 in the paper).
        sigma_p: std of the fresh Gaussian perturbation added to ``z`` at every step.
        lr: learning rate (the optimizer's: it is called as ``optimizer(parameters, lr)``).
        optimizer: the optimizer class, with its options other than ``lr``; Adam by default.
        loss: the data term, ``mse``, ``l1`` or ``sure``: Stein's unbiased estimate of the
            error against the clean image (:mod:`~dip_lightning.tasks.sure`), for Gaussian
            denoising with ``input_type: observation``; it costs a second forward pass a step.
        sure_sigma: the noise std (on 0-255) for ``sure``; ``null`` estimates it from the image.
        sure_epsilon: the step of SURE's finite-difference divergence (image values in [0, 1]).
        ema_decay: weight of the exponential moving average of the outputs (0.99 in the paper's
            denoising); 0 turns it off. When on, the average is the restored image.
        guard_drop_db: roll a step back when the PSNR of ``A(x_hat)`` against the observation
            drops by more than this many dB, or the loss is not finite: the parameters go back
            to the last good ones and the optimizer state by the rule of
            :mod:`~dip_lightning.tasks.guard`, on the device. ``null`` turns the guard off.
        max_recoveries: the divergence policy (:mod:`~dip_lightning.tasks.guard`): after this
            many roll-backs in a row the learning rate is lowered and the optimizer restarted,
            and after ``max_lr_reductions`` such reductions the fit stops, keeping its image.
            ``null`` turns the policy off (the guard alone rolls back, as in the paper).
        lr_decay_on_divergence: factor in (0, 1) applied to the learning rate by the policy.
        max_lr_reductions: learning-rate reductions before the policy stops the fit (0: stop
            at the first run of ``max_recoveries`` roll-backs).
        image_every_n_steps: log the output image to TensorBoard every this many steps.
        seed: seed of the network weights, ``z``, the per-step perturbation (or the noise bank)
            and the hold-out, each an independent stream of it (:mod:`dip_lightning.seeding`).
        holdout_fraction: fraction of the observed pixels left out of the data term (chosen at
            random, seeded by ``seed``); the MSE of ``A(restored)`` against the observation on
            them is logged as ``heldout/mse``, a no-reference validation score (for denoising,
            the true error plus the noise variance). 0 (the default) fits every pixel.
        feedback: an optional structural-feedback term ``lambda_t * (1 - s_t)`` added to the
            loss (:class:`~dip_lightning.losses.StructuralFeedback`, logged as
            ``train/feedback``); its running average is ``output_ema`` when ``ema_decay > 0``,
            else one of its own (buffer ``feedback_average``). ``null`` (the default): none.
        channels_last: run the network in the channels-last memory layout (faster convolutions
            with oneDNN on CPUs, and with bf16/fp16 on GPUs).
        perturbation: ``fresh`` draws ``sigma_p * N(0, 1)`` anew every step (the paper's);
            ``bank`` draws one bank of normal numbers of twice the input's height and width once
            and takes a window of it at a random offset every step: the same distribution for a
            fraction of the cost (drawing millions of normal numbers is a visible part of a
            CPU step).
        compile: run the network through ``torch.compile`` (its default inductor backend) in
            the fit. The first step then takes the compilation (a minute or two on a CPU);
            checkpoints hold the network's own parameters, so a fit resumes with or without it.

    Metrics against the clean reference (when one is known) are computed every
    ``trainer.log_every_n_steps`` steps and the peak PSNR tracked at every step, on the device; a
    log step reads all it logs or decides on in one transfer (``tasks/host_reads.py``).
    """

    #: Short task name written to ``metrics.json``.
    task_name: str = "dip"

    # buffers, registered by attach()
    z: torch.Tensor
    observation: torch.Tensor
    clean: torch.Tensor | None
    output_ema: torch.Tensor
    last_output: torch.Tensor
    peak_psnr: torch.Tensor
    peak_step: torch.Tensor
    guard_psnr: torch.Tensor
    recoveries: torch.Tensor
    holdout_keep: torch.Tensor | None  # 0 on held-out pixels, else 1; None without a hold-out
    heldout_best: torch.Tensor | None
    heldout_best_step: torch.Tensor | None
    feedback_known: torch.Tensor | None  # pixels the feedback's observed SSIM weighs
    feedback_average: torch.Tensor | None  # the feedback's own output average (EMA off)

    def __init__(
        self,
        net: NetFactory = SkipNet,
        input_type: InputType = "uniform",
        input_depth: int = 32,
        input_scale: float = 0.1,
        sigma_p: float = 1.0 / 30.0,
        lr: float = 0.01,
        optimizer: OptimizerFactory = torch.optim.Adam,
        loss: LossName = "mse",
        ema_decay: float = 0.0,
        guard_drop_db: float | None = 5.0,
        max_recoveries: int | None = 5,
        lr_decay_on_divergence: float = 0.5,
        max_lr_reductions: int = 3,
        image_every_n_steps: int = 500,
        seed: int = 0,
        holdout_fraction: float = 0.0,
        feedback: StructuralFeedback | None = None,
        channels_last: bool = False,
        perturbation: Literal["fresh", "bank"] = "fresh",
        compile: bool = False,
        sure_sigma: float | None = None,
        sure_epsilon: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "feedback"])
        check_options(**self.hparams)
        self.net_factory = net
        self.optimizer_factory = optimizer
        self.input_type = input_type
        self.input_depth = int(input_depth)
        self.input_scale = float(input_scale)
        self.sigma_p = float(sigma_p)
        self.lr = float(lr)
        self.loss_name = loss
        self.ema_decay = float(ema_decay)
        self.guard_drop_db = guard_drop_db
        self.max_recoveries = None if max_recoveries is None else int(max_recoveries)
        self.lr_decay_on_divergence = float(lr_decay_on_divergence)
        self.max_lr_reductions = int(max_lr_reductions)
        #: learning-rate reductions made by the divergence policy so far
        self.lr_reductions = 0
        #: whether the divergence policy stopped the last fit
        self.stopped_on_divergence = False
        self._failed_run: torch.Tensor | None = None  # roll-backs in a row, on the device
        self._worst_run: torch.Tensor | None = None  # longest run since the last check
        self.image_every_n_steps = int(image_every_n_steps)
        self.seed = int(seed)
        self.holdout_fraction = float(holdout_fraction)
        self.channels_last = bool(channels_last)
        self.perturbation = perturbation
        self.compile_net = bool(compile)
        # the compiled network, kept out of the module tree (its parameters are self.net's)
        self._compiled: list[nn.Module] = []
        self._bank: torch.Tensor | None = None
        self._offsets = stream_generator(self.seed, "offsets")
        self._offset_queue: list[int] = []  # offsets drawn and not used yet, the next last
        self.feedback = feedback
        self._init_sure(sure_sigma, sure_epsilon)

        self.net: nn.Module | None = None
        self.degradation: Degradation | None = None
        self.sample: ImageSample | None = None
        self.crop_box: CropBox | None = None
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None
        self._last_good = LastGoodState()
        self._before_step = LastGoodState()  # the state a step starts from
        self._loaded_good: dict[str, Any] | None = None  # the last good state of a checkpoint
        self._host_reads: list[tuple[list[torch.Tensor], Callable[[list[float]], None]]] = []
        self._bad: torch.Tensor | None = None
        self._log_every = 50
        self.halted = False  #: every step counts as diverged (a stopped image of a batched fit)
        self._log_to: tuple[LightningModule, str] | None = None
        self._parameters_count = 0

    # ------------------------------------------------------------------ task hooks

    def build_degradation(self, data: SingleImageDataModule) -> Degradation:
        """The task's forward operator, built from the data options. Tasks override this."""
        raise NotImplementedError(f"{type(self).__name__} must define build_degradation")

    def output_size(self, sample: ImageSample) -> tuple[int, int]:
        """``(H, W)`` of the restored image; the observation's size unless the task changes it."""
        return int(sample.observation.shape[-2]), int(sample.observation.shape[-1])

    def build_input(
        self, data: SingleImageDataModule, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The fixed input ``z`` (``(1, input_depth, height, width)``, the padded network size).

        Noise or a meshgrid (``input_type``) by default; a task may feed an image instead.
        """
        if self.input_type == "observation":
            assert self.sample is not None and self.crop_box is not None
            check_observation_input(self.sample.observation, self.crop_box)
            return pad_centered(self.sample.observation, height, width)[None].contiguous()
        return make_input(
            self.input_type,
            self.input_depth,
            height,
            width,
            generator=generator,
            scale=self.input_scale,
        )

    def data_term(self, prediction: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        """The data term ``E(A(x_hat), y)``."""
        if self.loss_name == "l1":
            return F.l1_loss(prediction, observation)
        return F.mse_loss(prediction, observation)

    def regularization(self, x: torch.Tensor) -> torch.Tensor | None:
        """An optional regulariser of the output ``x_hat``; none by default."""
        return None

    def extra_metrics(self, restored: torch.Tensor) -> dict[str, float]:
        """Task-specific entries of ``metrics.json`` for the final ``restored`` ``(C, H, W)``
        image (on the CPU, in [0, 1]); none by default."""
        return {}

    def configure_callbacks(self) -> list[Callback]:
        # FBC is measured only when asked for: an FBCLogger in trainer.callbacks
        return [RunArtifacts(), ImageLogger(every_n_steps=self.image_every_n_steps)]

    # ------------------------------------------------------------------ the loop

    def on_fit_start(self) -> None:
        self.start_perturbation()
        self.start_sure()
        self._log_every = max(int(getattr(self._trainer, "log_every_n_steps", 50)), 1)
        if self.channels_last and self.net is not None:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.z = self.z.contiguous(memory_format=torch.channels_last)
        if self.compile_net and self.net is not None and not self._compiled:
            self._compiled.append(torch.compile(self.net))  # type: ignore[arg-type]
        self.start_bank()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The restored image for input ``z``, cropped to the output size, in the buffers'
        precision (float32 under mixed precision)."""
        assert self.net is not None and self.crop_box is not None
        box = self.crop_box
        x = self._compiled[0](z) if self._compiled else self.net(z)
        return x[..., box.top : box.bottom, box.left : box.right].to(self.last_output.dtype)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """:meth:`LightningModule.log`; in a batched fit (:class:`BatchedDIP`), the batched
        module logs it under this image's name instead."""
        if self._log_to is not None:
            parent, prefix = self._log_to
            kwargs["prog_bar"] = False
            parent.log(f"{prefix}/{name}", value, *args, **kwargs)
            return
        super().log(name, value, *args, **kwargs)

    def fit_step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The loss of step ``step`` for the network's output ``x`` (cropped, float32): ``A``,
        the data term (and the task's regulariser and the feedback term), the divergence guard's
        check of the output, the output averages and the scores tracked on the device; at a
        log step, the logged values are queued for the step's one host read."""
        assert self.degradation is not None
        prediction = self.degradation(x)
        data = self.fitted_data_term(prediction)
        if self.loss_name == "sure":
            data = data + self.sure_correction(x)
        extra = self.regularization(x)
        loss = data if extra is None else data + extra
        term = self.feedback_term(x, prediction, step) if self.feedback is not None else None
        if term is not None:
            loss = loss + term
        with torch.no_grad():
            bad = self.check_output(prediction.detach(), loss.detach(), data.detach())
            self.update_averages(x.detach(), bad, step)
            self.track_scores(bad, step)
        if self.is_log_step(step):
            self.log_step_values(loss.detach(), None if term is None else term.detach())
        return loss

    def is_log_step(self, step: int) -> bool:
        """Whether step ``step`` (1-based) logs: each ``trainer.log_every_n_steps`` and the last."""
        return step % self._log_every == 0 or step == self.trainer.max_steps

    def update_averages(self, x: torch.Tensor, bad: torch.Tensor, step: int) -> None:
        """The last output and the output averages (EMA, the feedback's own), on the device: a
        diverged output enters none of them; they start at the first good output (every step
        before it was rolled back)."""
        self.last_output.copy_(torch.where(bad, self.last_output, x))
        empty = self.recoveries == step - 1
        averages = []
        if self.ema_decay > 0:
            averages.append((self.output_ema, self.ema_decay))
        if self.feedback_average is not None:
            assert self.feedback is not None
            averages.append((self.feedback_average, self.feedback.average_decay))
        for average, decay in averages:
            if step == 1:
                average.copy_(torch.where(bad, average, x))
            else:
                mean = torch.where(empty, x, torch.lerp(average, x, 1.0 - decay))
                average.copy_(torch.where(bad, average, mean))

    def track_scores(self, bad: torch.Tensor, step: int) -> None:
        """The peak PSNR against the clean image (when known) and the held-out error (with a
        hold-out), with their steps, on the device; a diverged step counts for neither."""
        if self.clean is not None:
            current = psnr(self.restored_batch(), self.clean)
            self._psnr_current = current
            better = (current > self.peak_psnr) & ~bad
            self.peak_psnr.copy_(torch.where(better, current, self.peak_psnr))
            self.peak_step.copy_(torch.where(better, step, self.peak_step))
        if self.holdout_keep is not None:
            self._track_heldout(bad, step)

    def log_step_values(self, loss: torch.Tensor, feedback: torch.Tensor | None) -> None:
        """Queue this log step's values (the loss, the feedback term, :meth:`step_metrics`)
        for its one host read, then log them."""
        metrics = {"train/loss": loss}
        if feedback is not None:
            metrics["train/feedback"] = feedback
        metrics.update(self.step_metrics())
        names = list(metrics)
        self.read_at_log_step(
            list(metrics.values()),
            lambda values: self.log_host_values(dict(zip(names, values, strict=True))),
        )

    # ------------------------------------------------------------------ outputs and metrics

    def restored_batch(self) -> torch.Tensor:
        """The current restored image ``(1, C, H, W)``: the output EMA when on, else the last."""
        return self.output_ema if self.ema_decay > 0 else self.last_output

    def restored(self) -> torch.Tensor:
        """The current restored image ``(C, H, W)`` in [0, 1] on the CPU."""
        return self.restored_batch()[0].detach().float().clamp(0, 1).cpu()

    def step_metrics(self) -> dict[str, torch.Tensor]:
        """Metrics logged every ``log_every_n_steps``: PSNR/SSIM against the clean image."""
        metrics: dict[str, torch.Tensor] = {"train/psnr_observed": self._psnr_observed}
        if self.clean is not None:
            restored = self.restored_batch()
            metrics["psnr"] = psnr(restored, self.clean)
            metrics["ssim"] = ssim(restored, self.clean)
            if self.ema_decay > 0:
                metrics["psnr_last"] = psnr(self.last_output, self.clean)
        if self.holdout_keep is not None:
            metrics["heldout/mse"] = self._heldout_mse
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        guard = self.guard_state()
        checkpoint["dip_state"] = {
            "last_good": guard["last_good"],
            **self.perturbation_state(),
            **self.sure_state(),
            "divergence": guard["divergence"],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("dip_state", {})
        self.load_perturbation_state(state)
        self.load_sure_state(state)
        self.load_guard_state(state)

    def on_train_start(self) -> None:
        self.start_guard()
        self._host_reads = []
