"""``DIPModule``: the one Deep Image Prior loop that every task shares.

``z`` (a fixed buffer) is perturbed by ``sigma_p * noise`` each step, the network maps it to an
image ``x_hat``, the task's degradation maps ``x_hat`` to the observation space, and the data term
compares ``A(x_hat)`` with the observation ``y``. The loop never knows which task it runs: a task
subclass only chooses its degradation (:meth:`DIPModule.build_degradation`) and its defaults.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from dip_lightning.data.datamodule import ImageSample, SingleImageDataModule
from dip_lightning.data.padding import CropBox, padded_size
from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError
from dip_lightning.losses import StructuralFeedback
from dip_lightning.metrics.psnr import psnr as _psnr
from dip_lightning.networks.inputs import INPUT_TYPES, InputType, make_input
from dip_lightning.networks.skip import SkipNet
from dip_lightning.seeding import stream_generator, stream_seed

#: A network class (or factory) called as ``net(in_channels, out_channels)``; in a config,
#: ``class_path`` plus every ``init_args`` except the two channel counts.
NetFactory = Callable[[int, int], nn.Module]

#: An optimizer class (or factory) called as ``optimizer(parameters, lr)`` with the module's
#: ``lr``; in a config, ``class_path`` plus every ``init_args`` except those two.
OptimizerFactory = Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer]

LossName = Literal["mse", "l1"]

log = logging.getLogger(__name__)

#: Offsets of the perturbation bank drawn at a time (one read of a CPU tensor per block).
OFFSET_BLOCK = 1024

#: Values :meth:`DIPModule.log_host_values` puts on the progress bar (and ``stopping/...``).
PROGRESS_BAR = frozenset({"train/loss", "psnr", "ssim", "heldout/mse"})


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] (``data_range=1.0``), as a 0-dim tensor on their device.

    Plain tensor operations (:func:`dip_lightning.metrics.psnr.psnr`): the peak tracking calls
    it at every step, with no host sync and no new tensor for the data range."""
    return _psnr(x, y, 1.0)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of ``(N, C, H, W)`` images in [0, 1] (torchmetrics, ``data_range=1.0``).

    Images smaller than the 11x11 Gaussian window use a smaller odd window.
    """
    side = min(int(x.shape[-1]), int(x.shape[-2]))
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11
    value = structural_similarity_index_measure(
        x, y, data_range=1.0, kernel_size=kernel, sigma=sigma
    )
    assert isinstance(value, torch.Tensor)
    return value


def network_size(net: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The padded size at which ``net`` runs for an output of ``height`` x ``width``.

    Each side is a multiple of ``net.multiple`` (the product of its downsampling factors) and
    large enough that the coarsest level still has more pixels than the reflection padding of
    the largest filter needs: at least 2 (3 for 5x5 filters, ...).

    >>> from dip_lightning.networks import SkipNet
    >>> network_size(SkipNet(1, 1, channels_down=8, channels_up=8, channels_skip=2), 37, 100)
    (64, 128)
    >>> network_size(SkipNet(1, 1, channels_down=8, channels_up=8, filter_size_down=5), 37, 100)
    (96, 128)
    """
    multiple = int(getattr(net, "multiple", 1))
    kernels = [max(m.kernel_size) for m in net.modules() if isinstance(m, nn.Conv2d)]
    coarsest = max(2, (max(kernels, default=3) - 1) // 2 + 1)
    pad_h, pad_w = padded_size(height, width, multiple)
    return max(pad_h, coarsest * multiple), max(pad_w, coarsest * multiple)


class DIPModule(LightningModule):
    """Fit a randomly initialised network to one degraded image.

    Args:
        net: the network, ``net(in_channels, out_channels)``; the paper's skip hourglass by
            default (5 levels of 128 channels, 4 skip channels).
        input_type: ``uniform`` (the paper's, in [0, input_scale]), ``normal``, ``meshgrid`` or
            ``fourier`` (random Fourier features of the coordinates, amplitude input_scale).
        input_depth: channels of ``z`` (2 for ``meshgrid``).
        input_scale: scale of the uniform or normal input (0.1 in the paper).
        sigma_p: std of the fresh Gaussian perturbation added to ``z`` at every step.
        lr: learning rate (the optimizer's: it is called as ``optimizer(parameters, lr)``).
        optimizer: the optimizer class, with its options other than ``lr``; Adam by default.
        loss: the data term, ``mse`` or ``l1``.
        ema_decay: weight of the exponential moving average of the outputs (0.99 in the paper's
            denoising); 0 turns it off. When on, the average is the restored image.
        guard_drop_db: roll a step back when the PSNR of ``A(x_hat)`` against the observation
            drops by more than this many dB, or the loss is not finite: after such a step the
            parameters are exactly those of the last step whose output passed (the state that
            step started from), and the optimizer's element-wise state is that step's as a step
            with a zero gradient leaves it (Adam's ``exp_avg`` times ``beta1``, ``exp_avg_sq``
            times ``beta2``; other state tensors of a parameter's shape as they were; zeros, a
            fresh Adam's, before the first step). The step count goes on: it counts the
            steps taken, rolled back or not (in a batched fit Adam keeps one count for all the
            networks, so this keeps each network's fit equal to its separate fit). The
            output, its average and the stopping criteria ignore the step. All of it is done
            with masks on the device, without a host sync. ``null`` turns the guard off.
        max_recoveries: the divergence policy. When the guard rolls back this many steps in a
            row, the learning rate is multiplied by ``lr_decay_on_divergence`` and the optimizer
            restarts (its state cleared) from the last good parameters; when that has happened
            ``max_lr_reductions`` times, the next such run stops the fit with a warning,
            keeping the restored image, which only ever took in good steps. The run lengths
            are counted on the device and read with the other values of a log step (every
            ``trainer.log_every_n_steps`` steps), so the policy acts at the first log step
            after such a run. ``null`` turns the policy off (the guard alone rolls back, as in
            the paper).
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
    ``trainer.log_every_n_steps`` steps; the peak PSNR is tracked at every step on the device.
    Nothing is read on the host between log steps: at a log step the module reads every value
    that step logs or decides on (its metrics, the divergence counters, the stopping
    criteria's state) in one transfer (:meth:`read_at_log_step`), logs them to the loggers,
    ``trainer.callback_metrics`` and the progress bar (:meth:`log_host_values`), and acts on
    them.
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
    ) -> None:
        super().__init__()
        if input_type not in INPUT_TYPES:
            raise ConfigError(
                f"model.input_type {input_type!r} is unknown; use one of {', '.join(INPUT_TYPES)}"
            )
        if input_type == "meshgrid" and input_depth != 2:
            raise ConfigError("a meshgrid input has 2 channels; set model.input_depth: 2")
        checks: list[tuple[str, float, bool, str]] = [
            ("input_depth", input_depth, 1 <= input_depth <= 4096, "use 1 to 4096 channels"),
            (
                "input_scale",
                input_scale,
                0 < input_scale <= 1000,
                "use (0, 1000], 0.1 as the paper",
            ),
            ("sigma_p", sigma_p, 0 <= sigma_p <= 10, "use a std in [0, 10] (1/30 in the paper)"),
            ("lr", lr, 0 < lr <= 100, "use a learning rate in (0, 100] (0.01 in the paper)"),
            ("ema_decay", ema_decay, 0 <= ema_decay < 1, "use a weight in [0, 1), 0.99 or 0"),
            ("image_every_n_steps", image_every_n_steps, image_every_n_steps >= 1, "use >= 1"),
            ("holdout_fraction", holdout_fraction, 0 <= holdout_fraction < 1, "use [0, 1)"),
            (
                "lr_decay_on_divergence",
                lr_decay_on_divergence,
                0 < lr_decay_on_divergence < 1,
                "use a factor in (0, 1), e.g. 0.5",
            ),
            ("max_lr_reductions", max_lr_reductions, max_lr_reductions >= 0, "use >= 0"),
            ("seed", seed, -(2**63) <= seed < 2**63 - 4, "use a seed below 2**63, e.g. 0"),
        ]
        if max_recoveries is not None:
            checks.append(("max_recoveries", max_recoveries, max_recoveries >= 1, "use >= 1"))
        if guard_drop_db is not None:
            checks.append(("guard_drop_db", guard_drop_db, guard_drop_db > 0, "use > 0 or null"))
        for name, value, ok, fix in checks:
            if not ok or not math.isfinite(float(value)):
                raise ConfigError(f"model.{name} = {value} is out of range; {fix}")
        if loss not in ("mse", "l1"):
            raise ConfigError(f"model.loss {loss!r} is unknown; use mse or l1")
        self.save_hyperparameters(ignore=["net", "optimizer", "feedback"])
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
        if perturbation not in ("fresh", "bank"):
            raise ConfigError(f"model.perturbation {perturbation!r} is unknown; use fresh or bank")
        self.channels_last = bool(channels_last)
        self.perturbation = perturbation
        self.compile_net = bool(compile)
        # the compiled network, kept out of the module tree (its parameters are self.net's)
        self._compiled: list[nn.Module] = []
        self._bank: torch.Tensor | None = None
        self._offsets = stream_generator(self.seed, "offsets")
        self._offset_queue: list[int] = []  # offsets drawn and not used yet, the next last
        self.feedback = feedback

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
        #: every step counts as diverged (rolled back, kept out of the outputs): set on an image
        #: of a batched fit that has stopped while the others go on
        self.halted = False
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

    # ------------------------------------------------------------------ building

    def setup(self, stage: str) -> None:
        if self.sample is not None:
            return
        data = getattr(self._trainer, "datamodule", None)
        if not isinstance(data, SingleImageDataModule):
            raise ConfigError(
                f"{type(self).__name__} needs a SingleImageDataModule (data: in the config)"
            )
        self.attach(data)

    def attach(self, data: SingleImageDataModule) -> None:
        """Build the degradation, the network, ``z`` and the buffers for ``data``."""
        degradation = self.build_degradation(data)
        sample = data.make_sample(degradation)
        height, width = self.output_size(sample)
        channels = sample.channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, "weights"))
            net = self.net_factory(self.input_depth, channels)
        pad_h, pad_w = network_size(net, height, width)
        top, left = (pad_h - height) // 2, (pad_w - width) // 2
        self.crop_box = CropBox(top=top, left=left, height=height, width=width)
        self.net = net
        self.degradation = degradation
        self.sample = sample
        generator = stream_generator(self.seed, "input")
        z = self.build_input(data, pad_h, pad_w, generator)
        if z.shape != (1, self.input_depth, pad_h, pad_w):
            raise ConfigError(
                f"the network input has shape {tuple(z.shape)}, expected "
                f"{(1, self.input_depth, pad_h, pad_w)}; set model.input_depth to its channels"
            )
        self.register_buffer("z", z)
        self.register_buffer("observation", sample.observation[None].clone())
        clean = sample.clean[None].clone() if sample.clean is not None else None
        if clean is not None and tuple(clean.shape[-2:]) != (height, width):
            raise ConfigError(
                f"the clean image is {clean.shape[-1]}x{clean.shape[-2]} but the restored image "
                f"will be {width}x{height}; give a clean image of the output's size"
            )
        self.register_buffer("clean", clean)
        shape = (1, channels, height, width)
        self.register_buffer("output_ema", torch.zeros(shape))
        self.register_buffer("last_output", torch.zeros(shape))
        self.register_buffer("peak_psnr", torch.tensor(float("-inf")))
        self.register_buffer("peak_step", torch.tensor(0, dtype=torch.long))
        self.register_buffer("guard_psnr", torch.tensor(float("-inf")))
        self.register_buffer("recoveries", torch.tensor(0, dtype=torch.long))
        self._attach_holdout()
        self._attach_feedback()

    def hyperparameters_for_logging(self) -> dict[str, Any]:
        """Flat hyperparameters for TensorBoard's HParams tab: the module's, the network's
        class and arguments, and the data options."""
        params: dict[str, Any] = {"task": self.task_name, **dict(self.hparams)}
        factory = self.net_factory
        keywords = getattr(factory, "keywords", {})
        classes = [a for a in getattr(factory, "args", ()) if isinstance(a, type)]
        net_class = classes[-1] if classes else factory
        params["net"] = getattr(net_class, "__name__", str(net_class))
        params.update({f"net.{key}": value for key, value in keywords.items()})
        data = getattr(self._trainer, "datamodule", None)
        if isinstance(data, SingleImageDataModule):
            params.update({f"data.{key}": value for key, value in data.hparams.items()})
            params["data.seed"] = data.seed
        return {
            key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in params.items()
        }

    @property
    def parameters_count(self) -> int:
        """Trainable parameters of the network (of this image's network in a batched fit)."""
        if self.net is None:
            return self._parameters_count
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        assert self.net is not None
        return self.build_optimizer(self.net)

    def build_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over ``net``'s parameters, at ``lr``."""
        optimizer = self.optimizer_factory(net.parameters(), self.lr)
        if _wants_fused(optimizer, net):
            # Adam(W) left at its defaults runs fused: the same update, one kernel per step
            optimizer = type(optimizer)(net.parameters(), **{**optimizer.defaults, "fused": True})
        for group in optimizer.param_groups:
            group["lr"] = self.lr
            group["initial_lr"] = self.lr
        return optimizer

    def configure_callbacks(self) -> list[Callback]:
        from dip_lightning.callbacks import ImageLogger, RunArtifacts

        # FBC is measured only when asked for: an FBCLogger in trainer.callbacks
        return [RunArtifacts(), ImageLogger(every_n_steps=self.image_every_n_steps)]

    # ------------------------------------------------------------------ the loop

    def on_fit_start(self) -> None:
        generator = stream_generator(self.seed, "perturbation", self.device)
        if self._generator_state is not None:
            generator.set_state(self._generator_state)
            self._generator_state = None
        self._generator = generator
        self._log_every = max(int(getattr(self._trainer, "log_every_n_steps", 50)), 1)
        if self.channels_last and self.net is not None:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.z = self.z.contiguous(memory_format=torch.channels_last)
        if self.compile_net and self.net is not None and not self._compiled:
            self._compiled.append(torch.compile(self.net))  # type: ignore[arg-type]
        if self.perturbation == "bank":
            _, channels, height, width = self.z.shape
            bank_generator = stream_generator(self.seed, "bank", self.device)
            self._bank = self._normal((1, channels, 2 * height, 2 * width), bank_generator)
            if not self._offset_queue:  # the first block now, not in a step
                self._offset_queue = self._draw_offsets(height * width)

    def _normal(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Standard normal numbers in the layout of ``z`` (channels-last when it is).

        The numbers are drawn in float32 and in the contiguous layout, then converted and laid
        out like ``z``, so a fit draws the same perturbation with or without ``channels_last``
        and in any precision."""
        values = torch.randn(shape, generator=generator, device=self.z.device, dtype=torch.float32)
        values = values.to(self.z.dtype)  # float32 draws in a float64 fit too: the same numbers
        if self.channels_last:
            return values.contiguous(memory_format=torch.channels_last)
        return values

    def perturbed_input(self) -> torch.Tensor:
        """``z + sigma_p * eps`` with fresh ``eps`` from the module's generator."""
        z = self.z
        if self.sigma_p == 0 or self._generator is None:
            return z
        if self._bank is not None:
            _, _, height, width = z.shape
            offset = self._next_offset(height * width)
            top, left = divmod(offset, width)
            noise = self._bank[..., top : top + height, left : left + width]
        else:
            noise = self._normal(tuple(z.shape), self._generator)
        return z + noise * self.sigma_p

    def _next_offset(self, count: int) -> int:
        """The bank's next window offset in ``[0, count)``: drawn from ``_offsets`` a block of
        :data:`OFFSET_BLOCK` at a time, so a step reads no tensor on the host."""
        if not self._offset_queue:
            self._offset_queue = self._draw_offsets(count)
        return self._offset_queue.pop()

    def _draw_offsets(self, count: int) -> list[int]:
        block = torch.randint(0, count, (OFFSET_BLOCK,), generator=self._offsets)
        return block.tolist()[::-1]  # a CPU tensor: no device to wait for

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

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.fit_step(self(self.perturbed_input()), self.global_step + 1)

    def fit_step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The loss of step ``step`` for the network's output ``x`` (cropped, float32); also
        updates the output average, the divergence check and the peak tracking, and logs."""
        assert self.degradation is not None
        prediction = self.degradation(x)
        data = self.fitted_data_term(prediction)
        extra = self.regularization(x)
        loss = data if extra is None else data + extra
        term: torch.Tensor | None = None
        if self.feedback is not None:
            term = self.feedback_term(x, prediction, step)
            loss = loss + term
        with torch.no_grad():
            self._after_output(x.detach(), prediction.detach(), loss.detach(), data.detach(), step)
        if self.is_log_step(step):
            metrics = {"train/loss": loss.detach()}
            if term is not None:
                metrics["train/feedback"] = term.detach()
            metrics.update(self.step_metrics())
            names = list(metrics)
            self.read_at_log_step(
                list(metrics.values()),
                lambda values: self.log_host_values(dict(zip(names, values, strict=True))),
            )
        return loss

    def is_log_step(self, step: int) -> bool:
        """Whether step ``step`` (1-based) logs: each ``trainer.log_every_n_steps`` and the last."""
        return step % self._log_every == 0 or step == self.trainer.max_steps

    # ------------------------------------------------------------------ host reads

    def read_at_log_step(
        self, values: Sequence[torch.Tensor], then: Callable[[list[float]], None]
    ) -> None:
        """Queue 0-dim ``values`` (on the device) for this step's one host read; ``then`` gets
        them as floats when it is made, at the end of :meth:`optimizer_step` (after the
        roll-back, before the callbacks' ``on_train_batch_end``)."""
        self._host_reads.append((list(values), then))

    def flush_host_reads(self) -> None:
        """Make the one host read of the values queued in this step, and hand them on."""
        reads, self._host_reads = self._host_reads, []
        read_on_host(reads)

    def log_host_values(self, values: dict[str, float]) -> None:
        """Log values read on the host at a log step (:meth:`read_at_log_step`): to every
        logger at the global step, into ``trainer.callback_metrics`` and, for those in
        :attr:`PROGRESS_BAR` (or ``stopping/...``), onto Lightning's progress bar.

        Lightning converts values logged with ``self.log(..., prog_bar=True)`` from tensors at
        every step for as long as they are kept, so these go in as numbers. In a batched fit
        the batched module logs them under the image's name instead."""
        if self._log_to is not None:
            parent, prefix = self._log_to
            log_host_values(parent.trainer, {f"{prefix}/{k}": v for k, v in values.items()}, ())
            return
        log_host_values(self.trainer, values, PROGRESS_BAR)

    def _after_output(
        self,
        x: torch.Tensor,
        prediction: torch.Tensor,
        loss: torch.Tensor,
        data: torch.Tensor,
        step: int,
    ) -> None:
        """Output EMA, the divergence check and peak tracking, all on the device (no sync)."""
        observed_mse = data if self.loss_name == "mse" else F.mse_loss(prediction, self.observation)
        psnr_observed = -10.0 * torch.log10(observed_mse.clamp_min(1e-12))
        bad = ~torch.isfinite(loss)
        if self.halted:
            bad = torch.ones_like(bad)
        if self.guard_drop_db is not None:
            bad = bad | (psnr_observed < self.guard_psnr - self.guard_drop_db)
        self._bad = bad
        self._psnr_observed = psnr_observed
        # a diverged output enters neither the last output nor the average
        self.last_output.copy_(torch.where(bad, self.last_output, x))
        # the averages start at the first good output (every step before it was rolled back)
        empty = self.recoveries == step - 1
        if self.ema_decay > 0:
            if step == 1:
                self.output_ema.copy_(torch.where(bad, self.output_ema, x))
            else:
                average = torch.lerp(self.output_ema, x, 1.0 - self.ema_decay)
                average = torch.where(empty, x, average)
                self.output_ema.copy_(torch.where(bad, self.output_ema, average))
        if self.feedback_average is not None:
            assert self.feedback is not None
            if step == 1:
                self.feedback_average.copy_(torch.where(bad, self.feedback_average, x))
            else:
                mean = torch.lerp(self.feedback_average, x, 1.0 - self.feedback.average_decay)
                mean = torch.where(empty, x, mean)
                self.feedback_average.copy_(torch.where(bad, self.feedback_average, mean))
        if self.clean is not None:
            current = psnr(self.restored_batch(), self.clean)
            self._psnr_current = current
            better = (current > self.peak_psnr) & ~bad
            self.peak_psnr.copy_(torch.where(better, current, self.peak_psnr))
            self.peak_step.copy_(torch.where(better, step, self.peak_step))
        if self.holdout_keep is not None:
            self._track_heldout(bad, step)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """The step (``training_step``, backward, ``optimizer.step``), then the divergence
        guard: where this step diverged, the parameters and the optimizer state are set back
        to the last good ones (:class:`LastGoodState`); then the log step's one host read."""
        step = self.global_step + 1
        net = self.net if self.guard_drop_db is not None else None
        guarded = net is not None
        params = [p for p in net.parameters() if p.requires_grad] if net is not None else []
        if guarded:
            if not self._last_good.ready:
                self._last_good.save(params, optimizer)  # the state before the first step
            self._before_step.save(params, optimizer)  # not yet known to be good
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        bad = self._bad
        if guarded and bad is not None:
            with torch.no_grad():
                # a good output makes the state that produced it the last good one; a
                # diverged one sends the parameters back to that state
                self._last_good.advance(self._before_step, lambda tensor: bad)
                self._last_good.restore(params, optimizer, lambda tensor: bad)
                self.record_guard(bad)
            if self.max_recoveries is not None and self.is_log_step(step):
                self.check_divergence(step, self.apply_divergence_policy)
        self.flush_host_reads()

    def record_guard(self, bad: torch.Tensor) -> None:
        """After the roll-back of a step that was ``bad`` (or not): the guard's reference PSNR,
        the roll-back count and the run of roll-backs, on the device."""
        self.guard_psnr.copy_(torch.where(bad, self.guard_psnr, self._psnr_observed))
        self.recoveries.add_(bad.long())
        self._count_failed_run(bad)

    def check_divergence(self, step: int, act: Callable[[int, int], None]) -> None:
        """Queue the longest run of roll-backs since the last check for this log step's host
        read; ``act(step, run)`` gets it. The run is counted afresh from the current one."""
        if self._failed_run is None or self._worst_run is None:
            return
        worst = self._worst_run.clone()
        self._worst_run.copy_(self._failed_run)
        self.read_at_log_step([worst], lambda values: act(step, int(values[0])))

    def _count_failed_run(self, bad: torch.Tensor) -> None:
        """The length of the current run of roll-backs and the longest since the last check,
        on the device (no sync)."""
        if self.max_recoveries is None:
            return
        if self._failed_run is None or self._worst_run is None:
            self._failed_run = torch.zeros((), dtype=torch.long, device=bad.device)
            self._worst_run = torch.zeros((), dtype=torch.long, device=bad.device)
        elif self._failed_run.device != bad.device:
            self._failed_run = self._failed_run.to(bad.device)
            self._worst_run = self._worst_run.to(bad.device)
        self._failed_run.add_(1).mul_(bad.long())
        torch.maximum(self._worst_run, self._failed_run, out=self._worst_run)

    def apply_divergence_policy(self, step: int, worst: int) -> None:
        """After a run of ``max_recoveries`` roll-backs (``worst`` is the longest since the last
        check): lower the learning rate and restart the optimizer from the last good
        parameters, or, after ``max_lr_reductions`` reductions, stop the fit (the restored
        image only ever took in good steps, so it is kept as it is)."""
        assert self.max_recoveries is not None
        if worst < self.max_recoveries:
            return
        optimizers = list(self.trainer.optimizers)
        lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else self.lr
        if self.lr_reductions >= self.max_lr_reductions:
            self.stopped_on_divergence = True
            self.trainer.should_stop = True
            log.warning(
                "stopped at step %d: %d steps in a row diverged and were rolled back even after "
                "%d learning-rate reductions (lr %g -> %g); kept the output of the good steps; "
                "try a lower model.lr",
                step,
                worst,
                self.lr_reductions,
                self.lr,
                lr,
            )
            return
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * self.lr_decay_on_divergence
            optimizer.state.clear()  # a fresh start: no momentum from the diverged steps
        self._last_good.forget_state()
        self.lr_reductions += 1
        assert self._failed_run is not None and self._worst_run is not None
        self._failed_run.zero_()
        self._worst_run.zero_()
        log.warning(
            "step %d: %d steps in a row diverged; learning rate %g -> %g (reduction %d of %d), "
            "optimizer restarted from the last good parameters",
            step,
            worst,
            lr,
            lr * self.lr_decay_on_divergence,
            self.lr_reductions,
            self.max_lr_reductions,
        )

    # ------------------------------------------------------------------ held-out pixels

    def _attach_holdout(self) -> None:
        """Choose the held-out pixels: ``holdout_fraction`` of the observed pixels (those where
        ``A`` of an all-ones image is non-zero in every channel), drawn from the ``holdout``
        stream of ``seed``."""
        keep: torch.Tensor | None = None
        best: torch.Tensor | None = None
        best_step: torch.Tensor | None = None
        if self.holdout_fraction > 0:
            assert self.degradation is not None and self.crop_box is not None
            box = self.crop_box
            with torch.no_grad():
                ones = torch.ones(1, self.observation.shape[1], box.height, box.width)
                observed = (self.degradation(ones) != 0).all(dim=1)[0].flatten()
            indices = observed.nonzero().squeeze(1)
            count = round(self.holdout_fraction * len(indices))
            if not 1 <= count < len(indices):
                raise ConfigError(
                    f"model.holdout_fraction = {self.holdout_fraction} holds out {count} of "
                    f"{len(indices)} observed pixels; use a fraction that leaves some on each side"
                )
            generator = stream_generator(self.seed, "holdout")
            held = indices[torch.randperm(len(indices), generator=generator)[:count]]
            keep = torch.ones(observed.shape[0])
            keep[held] = 0.0
            keep = keep.view(1, 1, *self.observation.shape[-2:])
            best = torch.tensor(float("inf"))
            best_step = torch.tensor(0, dtype=torch.long)
        self.register_buffer("holdout_keep", keep)
        self.register_buffer("heldout_best", best)
        self.register_buffer("heldout_best_step", best_step)

    def fitted_data_term(self, prediction: torch.Tensor) -> torch.Tensor:
        """The data term on the pixels the fit sees: ``E(A(x_hat) * keep, y * keep)``, where
        ``keep`` is 0 on the held-out pixels (every pixel is kept without a hold-out)."""
        keep = self.holdout_keep
        if keep is None:
            return self.data_term(prediction, self.observation)
        return self.data_term(prediction * keep, self.observation * keep)

    def _track_heldout(self, bad: torch.Tensor, step: int) -> None:
        """MSE of ``A(restored)`` on the held-out pixels and its best value and step, on device."""
        assert self.degradation is not None and self.holdout_keep is not None
        assert self.heldout_best is not None and self.heldout_best_step is not None
        held = 1.0 - self.holdout_keep
        error = (self.degradation(self.restored_batch()) - self.observation).square() * held
        mse = error.sum() / (held.sum() * self.observation.shape[1])
        self._heldout_mse = mse
        better = (mse < self.heldout_best) & ~bad
        self.heldout_best.copy_(torch.where(better, mse, self.heldout_best))
        self.heldout_best_step.copy_(torch.where(better, step, self.heldout_best_step))

    # ------------------------------------------------------------------ structural feedback

    def _attach_feedback(self) -> None:
        """The buffers of the feedback term: the known pixels ``(1, 1, h, w)`` of the
        observation (``A`` of an all-ones image non-zero in every channel, held-out pixels
        excluded; ``None`` when every pixel is observed) and, when it needs an output average and
        ``ema_decay`` is 0, its own."""
        known: torch.Tensor | None = None
        average: torch.Tensor | None = None
        if self.feedback is not None:
            assert self.degradation is not None
            shape = self.last_output.shape
            with torch.no_grad():
                known = (self.degradation(torch.ones(shape)) != 0).all(dim=1, keepdim=True)
            known = known.float()
            if self.holdout_keep is not None:
                known = known * self.holdout_keep
            if bool(known.all()):
                known = None  # every pixel is observed: no weighting
            if self.feedback.needs_average and self.ema_decay == 0:
                average = torch.zeros(shape)
        self.register_buffer("feedback_known", known)
        self.register_buffer("feedback_average", average)

    def feedback_term(self, x: torch.Tensor, prediction: torch.Tensor, step: int) -> torch.Tensor:
        """The feedback term at ``step`` for the output ``x`` and ``prediction = A(x)``; the
        average of the outputs of the steps before (none at step 1)."""
        assert self.feedback is not None
        average = self.output_ema if self.ema_decay > 0 else self.feedback_average
        return self.feedback(
            x,
            prediction=prediction,
            observation=self.observation,
            step=step,
            known=self.feedback_known,
            average=average if step > 1 else None,
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
        # the last good state: the parameters and optimizer state of the last step whose output
        # passed the guard, from which a diverged step starts again
        state: dict[str, Any] = {"last_good": self._last_good.saved()}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        state["offsets"] = self._offsets.get_state()
        state["offset_queue"] = list(self._offset_queue)
        state["divergence"] = {
            "lr_reductions": self.lr_reductions,
            "failed_run": None if self._failed_run is None else self._failed_run.cpu(),
            "worst_run": None if self._worst_run is None else self._worst_run.cpu(),
        }
        checkpoint["dip_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("dip_state", {})
        self._generator_state = state.get("generator")
        if "offsets" in state:
            self._offsets.set_state(state["offsets"])
            self._offset_queue = list(state.get("offset_queue", []))
        self._loaded_good = state.get("last_good")
        divergence = state.get("divergence", {})
        self.lr_reductions = int(divergence.get("lr_reductions", 0))
        self._failed_run = divergence.get("failed_run")
        self._worst_run = divergence.get("worst_run")

    def on_train_start(self) -> None:
        # the last good state: the state the fit starts from (initial or loaded), taken before
        # any callback's on_train_batch_start
        self._last_good.reset()
        loaded, self._loaded_good = self._loaded_good, None
        if loaded is not None:
            self._last_good.load(loaded, self.device)
        elif self.guard_drop_db is not None and self.net is not None and self.trainer.optimizers:
            params = [p for p in self.net.parameters() if p.requires_grad]
            self._last_good.save(params, self.trainer.optimizers[0])
        self._host_reads = []
        self.stopped_on_divergence = False

    def on_train_end(self) -> None:
        if self.lr_reductions and not self.stopped_on_divergence:
            optimizers = list(self.trainer.optimizers)
            lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else self.lr
            log.warning(
                "the fit diverged repeatedly: its learning rate was lowered %d time%s, "
                "from %g to %g; start from model.lr %g next time",
                self.lr_reductions,
                "" if self.lr_reductions == 1 else "s",
                self.lr,
                lr,
                lr,
            )

    # ------------------------------------------------------------------ scoring a checkpoint

    def validation_scores(self, restored: torch.Tensor) -> dict[str, float]:
        """``dip validate``: scores of ``restored`` ``(C, H, W)`` that need no clean image.

        With held-out pixels (``holdout_fraction > 0``), the MSE of ``A(restored)`` against the
        observation on them and its PSNR (the no-reference score the fit tracks); else the PSNR
        of ``A(restored)`` against the observation (how closely the output explains it)."""
        assert self.degradation is not None
        observation = self.observation
        with torch.no_grad():
            predicted = self.degradation(restored[None].to(observation))
        if self.holdout_keep is None:
            return {"val/psnr_observed": float(psnr(predicted, observation))}
        held = 1.0 - self.holdout_keep
        error = (predicted - observation).square() * held
        mse = error.sum() / (held.sum() * observation.shape[1])
        return {
            "val/heldout_mse": float(mse),
            "val/heldout_psnr": float(-10 * torch.log10(mse.clamp_min(1e-12))),
        }

    def test_scores(self, restored: torch.Tensor) -> dict[str, float]:
        """``dip test``: PSNR and SSIM of ``restored`` ``(C, H, W)`` against the data's clean
        image, and the PSNR of the observation when it has the clean image's size."""
        clean = self.sample.clean if self.sample is not None else None
        if clean is None:
            raise ConfigError(
                "dip test needs the clean image: give --data.clean CLEAN (or a simulated "
                "observation of a clean --data.image)"
            )
        scores = {
            "test/psnr": float(psnr(restored[None], clean[None])),
            "test/ssim": float(ssim(restored[None], clean[None])),
        }
        observation = self.sample.observation if self.sample is not None else None
        if observation is not None and observation.shape == clean.shape:
            scores["test/input_psnr"] = float(psnr(observation[None], clean[None]))
        return scores


#: Adam's moments and the index of the beta a step with a zero gradient multiplies them by
_ZERO_GRADIENT_DECAY = {"exp_avg": 0, "exp_avg_sq": 1}


class LastGoodState:
    """The divergence guard's copy of the last good state: the parameters and their
    optimizer's element-wise state, every state tensor of the parameter's shape (Adam's
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's ``momentum_buffer``).

    :meth:`save` copies them into buffers kept from step to step; :meth:`restore` sets them
    back where a mask says, with ``torch.where`` on the device (no host sync). A state tensor
    that did not exist when the copy was taken (before the optimizer's first step, or after
    its state was cleared) is restored to zeros, the state of a fresh Adam. Adam's moments are
    restored as a step with a zero gradient leaves them (:meth:`restore`); other state, such as
    Adam's step count, is left as the step made it.
    """

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.state: list[dict[str, torch.Tensor]] = []
        #: whether a copy has been taken
        self.ready = False

    def reset(self) -> None:
        """Forget the copy (a new fit takes it again at its first step)."""
        self.params, self.state, self.ready = [], [], False

    def saved(self) -> dict[str, Any] | None:
        """The copy, on the CPU, for a checkpoint (``None`` before one is taken)."""
        if not self.ready:
            return None
        return {
            "params": [p.cpu() for p in self.params],
            "state": [{k: v.cpu() for k, v in state.items()} for state in self.state],
        }

    def load(self, saved: dict[str, Any], device: torch.device) -> None:
        """Take the copy of a checkpoint (:meth:`saved`) onto ``device``."""
        self.params = [p.to(device) for p in saved["params"]]
        self.state = [{k: v.to(device) for k, v in state.items()} for state in saved["state"]]
        self.ready = True

    def forget_state(self) -> None:
        """The optimizer's state was cleared: restore it to zeros until the next copy."""
        self.state = [{} for _ in self.state]

    @staticmethod
    def _state_of(optimizer: Any, param: torch.Tensor) -> dict[str, torch.Tensor]:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's own
        state = optimizer.state.get(param, {})
        return {
            key: value
            for key, value in state.items()
            if isinstance(value, torch.Tensor)
            and value.shape == param.shape
            and value.device == param.device
        }

    def save(self, params: Sequence[torch.Tensor], optimizer: Any) -> None:
        """Copy ``params`` and their optimizer state as the last good state."""
        if len(self.params) != len(params):
            self.params = [torch.empty_like(p) for p in params]
            self.state = [{} for _ in params]
        targets, sources = list(self.params), [p.detach() for p in params]
        for param, saved in zip(params, self.state, strict=True):
            for key, value in self._state_of(optimizer, param).items():
                copy = saved.get(key)
                if copy is None or copy.shape != value.shape or copy.dtype != value.dtype:
                    copy = saved[key] = torch.empty_like(value)
                targets.append(copy)
                sources.append(value)
        with torch.no_grad():
            torch._foreach_copy_(targets, sources)
        self.ready = True

    def advance(self, newer: LastGoodState, bad_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Where ``bad_of(tensor)`` is false, take ``newer``'s copy (a missing state tensor is
        a fresh optimizer's zeros)."""
        with torch.no_grad():
            for mine, newer_param in zip(self.params, newer.params, strict=True):
                torch.where(bad_of(mine), mine, newer_param, out=mine)
            for mine_state, their_state in zip(self.state, newer.state, strict=True):
                for key in set(mine_state) | set(their_state):
                    ours, theirs = mine_state.get(key), their_state.get(key)
                    if ours is None:
                        assert theirs is not None
                        mine_state[key] = torch.where(bad_of(theirs), 0.0, theirs)
                    elif theirs is None:
                        ours.masked_fill_(~bad_of(ours), 0)
                    else:
                        torch.where(bad_of(ours), ours, theirs, out=ours)

    def restore(
        self,
        params: Sequence[torch.Tensor],
        optimizer: Any,
        bad_of: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Where ``bad_of(tensor)`` (a mask broadcasting against ``tensor``) is true, set each
        parameter back to the copy, and its optimizer state to the copy as a step with a zero
        gradient leaves it: Adam's ``exp_avg`` times ``beta1`` and ``exp_avg_sq`` times
        ``beta2`` (what ``optimizer.step`` does to them for a zero gradient); other state as
        copied."""
        betas = {
            id(p): group.get("betas")
            for group in getattr(optimizer, "optimizer", optimizer).param_groups
            for p in group["params"]
        }
        with torch.no_grad():
            for param, good, saved in zip(params, self.params, self.state, strict=True):
                torch.where(bad_of(param), good, param, out=param)
                decay = betas.get(id(param))
                for key, value in self._state_of(optimizer, param).items():
                    mask = bad_of(value)
                    previous = saved.get(key)
                    if previous is None:
                        value.masked_fill_(mask, 0)
                        continue
                    if decay is not None and key in _ZERO_GRADIENT_DECAY:
                        previous = previous * decay[_ZERO_GRADIENT_DECAY[key]]
                    torch.where(mask, previous, value, out=value)


def read_on_host(reads: Sequence[tuple[list[torch.Tensor], Callable[[list[float]], None]]]) -> None:
    """Read every 0-dim tensor of ``reads`` on the host in one transfer (one host sync), and
    call each ``then`` with its values as floats (in float64; float32 on Apple's MPS)."""
    tensors = [t for values, _ in reads for t in values]
    if not tensors:
        return
    device = tensors[0].device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    stacked = torch.stack([t.detach().reshape(()).to(device=device, dtype=dtype) for t in tensors])
    host = stacked.tolist()  # the host sync
    start = 0
    for values, then in reads:
        then(host[start : start + len(values)])
        start += len(values)


def log_host_values(trainer: Any, values: dict[str, float], prog_bar: Collection[str]) -> None:
    """Log ``values`` (numbers read at a log step) to ``trainer``'s loggers at its global step
    and into ``trainer.callback_metrics`` (as CPU tensors); those named in ``prog_bar``, or
    starting with ``stopping/``, also onto its progress bar (``trainer.progress_bar_metrics``,
    the numbers Lightning's progress bars show)."""
    if not values:
        return
    step = int(trainer.global_step)
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
    trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
    shown = {k: v for k, v in values.items() if k in prog_bar or k.startswith("stopping/")}
    if shown:
        trainer.progress_bar_metrics.update(shown)


def _wants_fused(optimizer: torch.optim.Optimizer, net: nn.Module) -> bool:
    """Whether ``optimizer`` is Adam or AdamW with ``fused`` and ``foreach`` left unset (and no
    differentiable or capturable mode) over float parameters on a CPU or a CUDA device: then
    the fused implementation gives the same update for less time."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    defaults = optimizer.defaults
    if defaults.get("fused") is not None or defaults.get("foreach") is not None:
        return False
    if defaults.get("differentiable") or defaults.get("capturable"):
        return False
    parameters = list(net.parameters())
    return bool(parameters) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in parameters
    )
