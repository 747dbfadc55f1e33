"""Building a fit: the checks of the module's options, the network at its padded size, ``z``
and the buffers (:class:`FitBuilding`), and the optimizer (fused where it gives the same
update)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dip_lightning.data.datamodule import ImageSample, SingleImageDataModule
from dip_lightning.data.padding import CropBox, padded_size
from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError
from dip_lightning.networks.inputs import INPUT_TYPES
from dip_lightning.seeding import stream_generator, stream_seed

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = ["FitBuilding", "check_options", "network_size", "wants_fused"]


def check_options(
    *,
    input_type: str,
    input_depth: int,
    input_scale: float,
    sigma_p: float,
    lr: float,
    loss: str,
    ema_decay: float,
    guard_drop_db: float | None,
    max_recoveries: int | None,
    lr_decay_on_divergence: float,
    max_lr_reductions: int,
    image_every_n_steps: int,
    seed: int,
    holdout_fraction: float,
    perturbation: str,
    **others: Any,
) -> None:
    """Refuse an option of :class:`~dip_lightning.tasks.DIPModule` that is out of range, with
    a one-line :class:`~dip_lightning.errors.ConfigError` that names it and says what to use
    (``others``, the options that need no check, are ignored).

    >>> options = dict(input_type="uniform", input_depth=32, input_scale=0.1, sigma_p=0.03,
    ...     lr=0.01, loss="mse", ema_decay=0.0, guard_drop_db=5.0, max_recoveries=5,
    ...     lr_decay_on_divergence=0.5, max_lr_reductions=3, image_every_n_steps=500, seed=0,
    ...     holdout_fraction=0.0, perturbation="fresh")
    >>> check_options(**options)
    >>> check_options(**{**options, "lr": 0})
    Traceback (most recent call last):
    ...
    dip_lightning.errors.ConfigError: model.lr = 0 is out of range; use a learning rate in ...
    """
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
    if loss not in ("mse", "l1", "sure"):
        raise ConfigError(f"model.loss {loss!r} is unknown; use mse, l1 or sure")
    if loss == "sure" and input_type != "observation":
        raise ConfigError(
            "model.loss sure needs the observation as the network's input (its divergence is "
            "taken with respect to it); set model.input_type: observation"
        )
    sure_sigma, sure_epsilon = others.get("sure_sigma"), others.get("sure_epsilon", 1e-3)
    if sure_sigma is not None and not 0 < sure_sigma <= 255:
        raise ConfigError(f"model.sure_sigma = {sure_sigma} is out of range; use (0, 255] or null")
    if not 0 < sure_epsilon <= 1:
        raise ConfigError(f"model.sure_epsilon = {sure_epsilon} is out of range; use (0, 1]")
    if perturbation not in ("fresh", "bank"):
        raise ConfigError(f"model.perturbation {perturbation!r} is unknown; use fresh or bank")


def check_observation_input(observation: torch.Tensor, box: CropBox) -> None:
    """Refuse ``input_type: observation`` where the observation is not of the output's size."""
    if tuple(observation.shape[-2:]) != (box.height, box.width):
        raise ConfigError(
            f"model.input_type observation needs an observation of the restored image's size "
            f"({box.width}x{box.height}), got {observation.shape[-1]}x{observation.shape[-2]}; "
            "use it for denoising, JPEG or inpainting, or another model.input_type"
        )


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


def wants_fused(optimizer: torch.optim.Optimizer, net: nn.Module) -> bool:
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


class FitBuilding(_Base):
    """The building of a :class:`~dip_lightning.tasks.DIPModule` for its data: the degradation,
    the network, ``z`` and the buffers (:meth:`attach`), and the optimizer."""

    net_factory: Callable[[int, int], nn.Module]
    optimizer_factory: Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer]
    task_name: str
    seed: int
    lr: float
    input_depth: int
    net: nn.Module | None
    degradation: Degradation | None
    sample: ImageSample | None
    crop_box: CropBox | None
    _parameters_count: int

    if TYPE_CHECKING:

        def build_degradation(self, data: SingleImageDataModule) -> Degradation: ...

        def output_size(self, sample: ImageSample) -> tuple[int, int]: ...

        def build_input(
            self, data: SingleImageDataModule, height: int, width: int, generator: torch.Generator
        ) -> torch.Tensor: ...

        def _attach_holdout(self) -> None: ...

        def _attach_feedback(self) -> None: ...

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
        if wants_fused(optimizer, net):
            # Adam(W) left at its defaults runs fused: the same update, one kernel per step
            optimizer = type(optimizer)(net.parameters(), **{**optimizer.defaults, "fused": True})
        for group in optimizer.param_groups:
            group["lr"] = self.lr
            group["initial_lr"] = self.lr
        return optimizer
