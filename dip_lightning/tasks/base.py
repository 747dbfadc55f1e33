"""``DIPModule``: the one Deep Image Prior loop that every task shares.

``z`` (a fixed buffer) is perturbed by ``sigma_p * noise`` each step, the network maps it to an
image ``x_hat``, the task's degradation maps ``x_hat`` to the observation space, and the data term
compares ``A(x_hat)`` with the observation ``y``. The loop never knows which task it runs: a task
subclass only chooses its degradation (:meth:`DIPModule.build_degradation`) and its defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from dip_lightning.data.datamodule import ImageSample, SingleImageDataModule
from dip_lightning.data.padding import CropBox, padded_size
from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError
from dip_lightning.networks.inputs import INPUT_TYPES, InputType, make_input
from dip_lightning.networks.skip import SkipNet

#: A network class (or factory) called as ``net(in_channels, out_channels)``; in a config,
#: ``class_path`` plus every ``init_args`` except the two channel counts.
NetFactory = Callable[[int, int], nn.Module]

LossName = Literal["mse", "l1"]


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] (torchmetrics, ``data_range=1.0``), as a 0-dim tensor."""
    return peak_signal_noise_ratio(x, y, data_range=1.0)


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

    Each side is a multiple of ``net.multiple`` (the product of its downsampling factors) and at
    least twice that, so the coarsest level still has 2 pixels for reflection padding.

    >>> from dip_lightning.networks import SkipNet
    >>> network_size(SkipNet(1, 1, channels_down=8, channels_up=8, channels_skip=2), 37, 100)
    (64, 128)
    """
    multiple = int(getattr(net, "multiple", 1))
    pad_h, pad_w = padded_size(height, width, multiple)
    return max(pad_h, 2 * multiple), max(pad_w, 2 * multiple)


class DIPModule(LightningModule):
    """Fit a randomly initialised network to one degraded image.

    Args:
        net: the network, ``net(in_channels, out_channels)``; the paper's skip hourglass by
            default (5 levels of 128 channels, 4 skip channels).
        input_type: ``uniform`` (the paper's, in [0, input_scale]), ``normal`` or ``meshgrid``.
        input_depth: channels of ``z`` (2 for ``meshgrid``).
        input_scale: scale of the uniform or normal input (0.1 in the paper).
        sigma_p: std of the fresh Gaussian perturbation added to ``z`` at every step.
        lr: learning rate (it replaces any ``lr`` given to ``optimizer``).
        optimizer: the optimizer class; Adam by default.
        loss: the data term, ``mse`` or ``l1``.
        ema_decay: weight of the exponential moving average of the outputs (0.99 in the paper's
            denoising); 0 turns it off. When on, the average is the restored image.
        guard_drop_db: roll the parameters back to the last good state when the PSNR of
            ``A(x_hat)`` against the observation drops by more than this many dB, or the loss is
            not finite; ``null`` turns the guard off.
        image_every_n_steps: log the output image to TensorBoard every this many steps.
        seed: seed of the network weights, ``z`` and the per-step perturbation.

    Metrics against the clean reference (when one is known) are computed every
    ``trainer.log_every_n_steps`` steps; the peak PSNR is tracked at every step on the device.
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

    def __init__(
        self,
        net: NetFactory = SkipNet,
        input_type: InputType = "uniform",
        input_depth: int = 32,
        input_scale: float = 0.1,
        sigma_p: float = 1.0 / 30.0,
        lr: float = 0.01,
        optimizer: OptimizerCallable = torch.optim.Adam,
        loss: LossName = "mse",
        ema_decay: float = 0.0,
        guard_drop_db: float | None = 5.0,
        image_every_n_steps: int = 500,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if input_type not in INPUT_TYPES:
            raise ConfigError(
                f"model.input_type {input_type!r} is unknown; use one of {', '.join(INPUT_TYPES)}"
            )
        if input_type == "meshgrid" and input_depth != 2:
            raise ConfigError("a meshgrid input has 2 channels; set model.input_depth: 2")
        checks: list[tuple[str, float, bool, str]] = [
            ("input_depth", input_depth, input_depth >= 1, "use at least 1 channel"),
            ("sigma_p", sigma_p, 0 <= sigma_p <= 10, "use a std in [0, 10] (1/30 in the paper)"),
            ("lr", lr, 0 < lr <= 100, "use a learning rate in (0, 100] (0.01 in the paper)"),
            ("ema_decay", ema_decay, 0 <= ema_decay < 1, "use a weight in [0, 1), 0.99 or 0"),
            ("image_every_n_steps", image_every_n_steps, image_every_n_steps >= 1, "use >= 1"),
        ]
        if guard_drop_db is not None:
            checks.append(("guard_drop_db", guard_drop_db, guard_drop_db > 0, "use > 0 or null"))
        for name, value, ok, fix in checks:
            if not ok or not math.isfinite(float(value)):
                raise ConfigError(f"model.{name} = {value} is out of range; {fix}")
        if loss not in ("mse", "l1"):
            raise ConfigError(f"model.loss {loss!r} is unknown; use mse or l1")
        self.save_hyperparameters(ignore=["net", "optimizer"])
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
        self.image_every_n_steps = int(image_every_n_steps)
        self.seed = int(seed)

        self.net: nn.Module | None = None
        self.degradation: Degradation | None = None
        self.sample: ImageSample | None = None
        self.crop_box: CropBox | None = None
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None
        self._guard_saved: list[torch.Tensor] = []
        self._bad: torch.Tensor | None = None
        self._log_every = 50

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
            torch.manual_seed(self.seed)
            net = self.net_factory(self.input_depth, channels)
        pad_h, pad_w = network_size(net, height, width)
        top, left = (pad_h - height) // 2, (pad_w - width) // 2
        self.crop_box = CropBox(top=top, left=left, height=height, width=width)
        self.net = net
        self.degradation = degradation
        self.sample = sample
        generator = torch.Generator().manual_seed(self.seed)
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
        return {
            key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in params.items()
        }

    @property
    def parameters_count(self) -> int:
        """Trainable parameters of the network."""
        assert self.net is not None
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        assert self.net is not None
        optimizer = self.optimizer_factory(self.net.parameters())
        for group in optimizer.param_groups:
            group["lr"] = self.lr
            group["initial_lr"] = self.lr
        return optimizer

    def configure_callbacks(self) -> list[Callback]:
        from dip_lightning.callbacks import ImageLogger, RunArtifacts

        return [RunArtifacts(), ImageLogger(every_n_steps=self.image_every_n_steps)]

    # ------------------------------------------------------------------ the loop

    def on_fit_start(self) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed + 1)
        if self._generator_state is not None:
            generator.set_state(self._generator_state)
            self._generator_state = None
        self._generator = generator
        self._log_every = max(int(getattr(self.trainer, "log_every_n_steps", 50)), 1)

    def perturbed_input(self) -> torch.Tensor:
        """``z + sigma_p * eps`` with fresh ``eps`` from the module's generator."""
        z = self.z
        if self.sigma_p == 0 or self._generator is None:
            return z
        noise = torch.randn(z.shape, generator=self._generator, device=z.device, dtype=z.dtype)
        return z + noise * self.sigma_p

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The restored image for input ``z``, cropped to the output size, in float32."""
        assert self.net is not None and self.crop_box is not None
        box = self.crop_box
        x = self.net(z)
        return x[..., box.top : box.bottom, box.left : box.right].float()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        assert self.degradation is not None
        step = self.global_step + 1
        x = self(self.perturbed_input())
        prediction = self.degradation(x)
        data = self.data_term(prediction, self.observation)
        extra = self.regularization(x)
        loss = data if extra is None else data + extra
        with torch.no_grad():
            self._after_output(x.detach(), prediction.detach(), loss.detach(), data.detach(), step)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        if step % self._log_every == 0 or step == self.trainer.max_steps:
            self.log_dict(self.step_metrics(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

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
        if self.guard_drop_db is not None:
            bad = bad | (psnr_observed < self.guard_psnr - self.guard_drop_db)
        self._bad = bad
        self._psnr_observed = psnr_observed
        # a diverged output enters neither the last output nor the average
        self.last_output.copy_(torch.where(bad, self.last_output, x))
        if self.ema_decay > 0:
            if step == 1:
                self.output_ema.copy_(x)
            else:
                average = torch.lerp(self.output_ema, x, 1.0 - self.ema_decay)
                self.output_ema.copy_(torch.where(bad, self.output_ema, average))
        if self.clean is not None:
            current = psnr(self.restored_batch(), self.clean)
            better = (current > self.peak_psnr) & ~bad
            self.peak_psnr.copy_(torch.where(better, current, self.peak_psnr))
            self.peak_step.copy_(torch.where(better, step, self.peak_step))

    def on_after_backward(self) -> None:
        """Roll back to the last good parameters when this step's output diverged."""
        if self.guard_drop_db is None or self._bad is None or self.net is None:
            return
        bad = self._bad
        params = [p for p in self.net.parameters() if p.requires_grad]
        with torch.no_grad():
            if not self._guard_saved:
                self._guard_saved = [p.detach().clone() for p in params]
            for param, saved in zip(params, self._guard_saved, strict=False):
                param.copy_(torch.where(bad, saved, param))
                saved.copy_(param)
                if param.grad is not None:
                    param.grad.masked_fill_(bad, 0.0)
            self.guard_psnr.copy_(torch.where(bad, self.guard_psnr, self._psnr_observed))
            self.recoveries.add_(bad.long())

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
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state: dict[str, Any] = {"guard_saved": [t.cpu() for t in self._guard_saved]}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        checkpoint["dip_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("dip_state", {})
        self._guard_saved = [t.to(self.device) for t in state.get("guard_saved", [])]
        self._generator_state = state.get("generator")

    def on_train_start(self) -> None:
        self._guard_saved = [t.to(self.device) for t in self._guard_saved]
