"""SURE as a data term: the estimate against the true error of a linear smoother, whose
divergence is known in closed form, and the fit that uses it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from dip_lightning.data import SingleImageDataModule
from dip_lightning.errors import ConfigError
from dip_lightning.networks import SkipNet
from dip_lightning.tasks import DenoisingDIP, SuperResolutionDIP
from dip_lightning.tasks.sure import monte_carlo_divergence, sure

SmallNet = partial(SkipNet, channels_down=8, channels_up=8, channels_skip=2, levels=3)

#: a 3x3 smoothing kernel; with circular padding ``f(y) = k * y`` has the divergence
#: ``N * k[1, 1]`` (the trace of the convolution matrix)
KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 16


def smoother(y: torch.Tensor) -> torch.Tensor:
    """The linear smoother, ``(1, 1, H, W)`` in and out, circular boundary."""
    return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="circular"), KERNEL[None, None])


def clean_image(height: int = 23, width: int = 29) -> torch.Tensor:
    rows = torch.linspace(0, 1, height, dtype=torch.float64)[:, None]
    cols = torch.linspace(0, 1, width, dtype=torch.float64)[None, :]
    return (0.5 + 0.3 * torch.sin(6 * rows) * torch.cos(4 * cols))[None, None]


def test_the_monte_carlo_divergence_of_a_linear_smoother_is_its_trace() -> None:
    y = clean_image()
    trace = y.numel() * float(KERNEL[1, 1])
    g = torch.Generator().manual_seed(0)
    values = torch.stack(
        [
            monte_carlo_divergence(
                smoother, y, torch.randn(y.shape, generator=g, dtype=y.dtype), 1e-3
            )
            for _ in range(400)
        ]
    )
    standard_error = float(values.std()) / 20
    assert abs(float(values.mean()) - trace) < 4 * standard_error
    assert standard_error < 0.05 * trace


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_sure_is_unbiased_for_the_true_error_of_a_linear_smoother(sigma: float) -> None:
    """Over noise draws, SURE (with the exact divergence, and with one Monte-Carlo probe per
    draw) has the mean of the true mean squared error against the clean image."""
    x = clean_image()
    trace = torch.tensor(x.numel() * float(KERNEL[1, 1]), dtype=x.dtype)
    g = torch.Generator().manual_seed(1)
    true, exact, probed, residual = [], [], [], []
    for _ in range(300):
        y = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
        fy = smoother(y)
        true.append(float((fy - x).square().mean()))
        exact.append(float(sure(y, fy, sigma, trace)))
        probe = torch.randn(x.shape, generator=g, dtype=x.dtype)
        divergence = monte_carlo_divergence(smoother, y, probe, 1e-4, fy=fy)
        probed.append(float(sure(y, fy, sigma, divergence)))
        residual.append(float((y - fy).square().mean()))
    mean_true = sum(true) / len(true)
    for estimate in (exact, probed):
        diffs = torch.tensor(estimate) - torch.tensor(true)
        standard_error = float(diffs.std()) / len(diffs) ** 0.5
        assert abs(float(diffs.mean())) < 4 * standard_error + 1e-12
        assert abs(sum(estimate) / len(estimate) - mean_true) < 0.1 * mean_true
    # the plain residual is not: it is off by sigma^2 (1 - 2 k), k the smoother's centre tap,
    # which is what SURE's correction takes away
    diffs = torch.tensor(residual) - torch.tensor(true)
    standard_error = float(diffs.std()) / len(diffs) ** 0.5
    bias = sigma**2 * (1 - 2 * float(KERNEL[1, 1]))
    assert abs(float(diffs.mean()) - bias) < 4 * standard_error
    assert abs(bias) > 8 * standard_error


def test_sure_counts_only_the_observed_values() -> None:
    y = torch.zeros(1, 1, 4, 5)
    assert float(sure(y, y, 0.1, torch.tensor(0.0), count=10)) == pytest.approx(-10 * 0.01 / 20)


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def fit(tmp_path: Path, module: DenoisingDIP, data: SingleImageDataModule, steps: int) -> Losses:
    losses = Losses()
    Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    ).fit(module, datamodule=data)
    return losses


def test_a_sure_fit_takes_the_observation_as_input(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    options = dict(net=SmallNet, input_type="observation", input_depth=3, lr=0.01, seed=2)
    module = DenoisingDIP(loss="sure", sure_sigma=25, **options)  # type: ignore[arg-type]
    losses = fit(tmp_path, module, data, 12)
    box = module.crop_box
    assert box is not None
    assert torch.equal(
        module.z[..., box.top : box.bottom, box.left : box.right], module.observation
    )
    assert module._sure_sigma_used == pytest.approx(25 / 255)
    assert len(losses.values) == 12 and all(v == v for v in losses.values)
    # SURE is the squared error minus sigma^2 plus the divergence term: below the plain MSE
    plain = DenoisingDIP(loss="mse", **options)  # type: ignore[arg-type]
    mse = fit(tmp_path / "mse", plain, data, 1).values[0]
    assert losses.values[0] < mse


def test_sure_estimates_sigma_when_not_given(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(
        net=SmallNet, input_type="observation", input_depth=3, loss="sure", sure_sigma=None
    )
    fit(tmp_path, module, data, 2)
    assert 0.5 * 25 / 255 < module._sure_sigma_used < 1.5 * 25 / 255


def test_sure_resumes_with_its_probes(tmp_path: Path, rgb_png: Path) -> None:
    """The probes' generator is part of the checkpoint: 4 + 4 steps equal 8 steps."""
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)

    def module() -> DenoisingDIP:
        return DenoisingDIP(
            net=SmallNet, input_type="observation", input_depth=3, loss="sure", sure_sigma=25
        )

    def trainer(steps: int, root: Path) -> Trainer:
        return Trainer(
            max_steps=steps,
            default_root_dir=root,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    whole = module()
    trainer(8, tmp_path / "whole").fit(whole, datamodule=data)
    first = trainer(4, tmp_path / "half")
    first.fit(module(), datamodule=data)
    checkpoint = tmp_path / "half.ckpt"
    first.save_checkpoint(checkpoint)
    resumed = module()
    trainer(8, tmp_path / "rest").fit(resumed, datamodule=data, ckpt_path=str(checkpoint))
    assert torch.equal(resumed.last_output, whole.last_output)


def test_sure_refuses_what_it_cannot_estimate(rgb_png: Path) -> None:
    with pytest.raises(ConfigError, match="input_type: observation"):
        DenoisingDIP(net=SmallNet, loss="sure")
    with pytest.raises(ConfigError, match="sure_sigma"):
        DenoisingDIP(net=SmallNet, input_type="observation", loss="sure", sure_sigma=-1)
    data = SingleImageDataModule(image=str(rgb_png), scale=2)
    module = SuperResolutionDIP(
        net=SmallNet, input_type="observation", input_depth=3, loss="sure", sure_sigma=25
    )
    with pytest.raises(ConfigError, match="observation of the restored image's size"):
        module.attach(data)
