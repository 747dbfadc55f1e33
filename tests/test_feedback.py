"""The structural-feedback term: the similarities, the warm-up, and a fit that uses it."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import smooth_image, write_png
from lightning.pytorch import Callback, Trainer

from dip_lightning.cli import main
from dip_lightning.data import SingleImageDataModule
from dip_lightning.errors import ConfigError
from dip_lightning.losses import (
    StructuralFeedback,
    edge_similarity,
    feedback_weight,
    observed_ssim,
    temporal_ssim,
)
from dip_lightning.networks import SkipNet
from dip_lightning.tasks import DenoisingDIP, InpaintingDIP

SmallNet = partial(SkipNet, channels_down=8, channels_up=8, channels_skip=2, levels=3)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(rng: torch.Generator, shape=(2, 3, 23, 19)) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(shape, generator=rng)
    y = (0.6 * x + 0.4 * torch.rand(shape, generator=rng)).clamp(0, 1)
    return x, y


def known_pixels(rng: torch.Generator, shape=(2, 1, 23, 19)) -> torch.Tensor:
    return (torch.rand(shape, generator=rng) > 0.5).float()


SIMILARITIES = {
    "observed_ssim": lambda x, y, m: observed_ssim(x, y),
    "observed_ssim_masked": lambda x, y, m: observed_ssim(x * m, y * m, m),
    "temporal_ssim": lambda x, y, m: temporal_ssim(x, y),
    "edge": lambda x, y, m: edge_similarity(x, y),
}


@pytest.mark.parametrize("name", SIMILARITIES)
def test_similarity_in_unit_interval_and_one_for_identical(rng, name) -> None:
    function = SIMILARITIES[name]
    mask = known_pixels(rng)
    for _ in range(3):
        x, y = images(rng)
        for a, b in ((x, y), (x, 1 - x), (x, torch.zeros_like(x)), (x, torch.rand_like(x))):
            value = float(function(a, b, mask))
            assert 0.0 <= value <= 1.0
        assert float(function(x, x, mask)) == pytest.approx(1.0, abs=1e-5)
        assert float(function(x, y, mask)) < 1.0


@pytest.mark.parametrize("name", SIMILARITIES)
def test_gradients_flow_to_the_output(rng, name) -> None:
    x, y = images(rng)
    x.requires_grad_(True)
    (1 - SIMILARITIES[name](x, y, known_pixels(rng))).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_observed_ssim_ignores_the_missing_pixels(rng) -> None:
    x, y = images(rng)
    mask = known_pixels(rng)
    changed = torch.where(mask.bool(), x, torch.rand_like(x))  # differs only where missing
    assert float(observed_ssim(changed * mask, y * mask, mask)) == pytest.approx(
        float(observed_ssim(x * mask, y * mask, mask))
    )


def test_the_average_is_detached(rng) -> None:
    x, average = images(rng)
    average.requires_grad_(True)
    x.requires_grad_(True)
    (temporal_ssim(x, average) + edge_similarity(x, average)).backward()
    assert average.grad is None and x.grad is not None


def test_warmup_schedule() -> None:
    assert [feedback_weight(s, 0.1, 10) for s in (1, 5, 10, 11, 1000)] == pytest.approx(
        [0.01, 0.05, 0.1, 0.1, 0.1]
    )
    assert feedback_weight(1, 0.1, 0) == 0.1
    feedback = StructuralFeedback("edge", weight=0.2, warmup_steps=4)
    assert [feedback.weight_at(s) for s in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.05, 0.1, 0.15, 0.2, 0.2]
    )


def test_feedback_term_is_lambda_times_one_minus_s(rng) -> None:
    x, y = images(rng)
    for name in ("observed_ssim", "temporal_ssim", "edge"):
        feedback = StructuralFeedback(name, weight=0.3)
        term = feedback(x, prediction=x, observation=y, average=y, step=7)
        s = feedback.score(x, prediction=x, observation=y, average=y)
        assert float(term) == pytest.approx(0.3 * (1 - float(s)))
        if feedback.needs_average:  # no average yet (the first step): no term
            assert float(feedback(x, prediction=x, observation=y, step=1)) == 0.0
    with pytest.raises(ConfigError):
        StructuralFeedback("ssim")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        StructuralFeedback(weight=-1.0)


class Terms(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(trainer.callback_metrics.get("train/feedback", math.nan)))


@pytest.mark.parametrize(
    ("task", "name", "ema"),
    [
        ("denoise", "observed_ssim", 0.99),
        ("denoise", "temporal_ssim", 0.0),
        ("denoise", "edge", 0.9),
        ("inpaint", "observed_ssim", 0.0),
        ("inpaint", "edge", 0.0),
    ],
)
def test_a_short_fit_with_feedback_runs(tmp_path: Path, rgb_png: Path, task, name, ema) -> None:
    feedback = StructuralFeedback(name, weight=0.05, warmup_steps=3)
    if task == "denoise":
        data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
        module = DenoisingDIP(net=SmallNet, input_depth=4, feedback=feedback, ema_decay=ema)
    else:
        data = SingleImageDataModule(image=str(rgb_png), missing_ratio=0.5)
        module = InpaintingDIP(net=SmallNet, input_depth=4, feedback=feedback, ema_decay=ema)
    terms = Terms()
    trainer = Trainer(
        max_steps=6,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[terms],
    )
    trainer.fit(module, datamodule=data)
    assert len(terms.values) == 6
    assert all(math.isfinite(v) and 0 <= v <= 0.05 for v in terms.values)
    if feedback.needs_average:
        assert terms.values[0] == 0.0 and terms.values[-1] > 0
        own = module.feedback_average
        assert (own is None) == (ema > 0)
        if own is not None:
            assert torch.isfinite(own).all() and float(own.abs().sum()) > 0
    if task == "inpaint" and name == "observed_ssim":
        assert module.feedback_known is not None
        assert 0.4 < float(module.feedback_known.mean()) < 0.6
    assert torch.isfinite(module.restored()).all()


def test_feedback_from_the_command_line(tmp_path: Path) -> None:
    image = write_png(tmp_path / "image.png", smooth_image(32, 32))
    feedback = (
        '{"class_path": "dip_lightning.losses.StructuralFeedback",'
        ' "init_args": {"similarity": "temporal_ssim", "weight": 0.02, "warmup_steps": 2}}'
    )
    main(
        [
            "fit",
            "--config",
            "denoise",
            "--data.image",
            str(image),
            f"--model.init_args.feedback={feedback}",
            "--model.init_args.net.init_args.levels=3",
            "--model.init_args.net.init_args.channels_down=8",
            "--model.init_args.net.init_args.channels_up=8",
            "--trainer.max_steps=3",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    (run,) = (tmp_path / "lightning_logs").iterdir()
    assert "StructuralFeedback" in (run / "config.yaml").read_text()
    assert (run / "restored.png").is_file()
