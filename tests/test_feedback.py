"""The structural-feedback term: the similarities, the warm-up, and a fit that uses it."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_image, write_png
from lightning.pytorch import Callback, Trainer
from scipy import ndimage
from skimage.metrics import structural_similarity

from dip_lightning.cli import main
from dip_lightning.data import SingleImageDataModule
from dip_lightning.errors import ConfigError
from dip_lightning.losses import (
    StructuralFeedback,
    edge_similarity,
    feedback_weight,
    observed_ssim,
    ssim_map,
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


# ------------------------------------------------------------------ independent references


def reference_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The SSIM map of two ``(H, W)`` images in [0, 1] by Wang et al.'s formula, with scipy's
    Gaussian filter (std 1.5, radius 5: the 11x11 window; std scaled for a smaller image) and
    whole-sample reflection at the borders (scipy's ``mirror``)."""
    side = min(x.shape)
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="mirror", truncate=(kernel // 2) / sigma)

    ux, uy = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - ux**2, blur(y * y) - uy**2, blur(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * ux * uy + c1) * (2 * cxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def reference_maps(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """:func:`reference_ssim_map` of every channel of ``(N, C, H, W)`` images."""
    a, b = x.double().numpy(), y.double().numpy()
    return np.stack(
        [
            np.stack([reference_ssim_map(a[n, c], b[n, c]) for c in range(a.shape[1])])
            for n in range(a.shape[0])
        ]
    )


def reference_edge_similarity(x: torch.Tensor, average: torch.Tensor) -> float:
    """Cosine similarity of the Sobel gradient fields (scipy, replicated borders), per image,
    averaged, clamped to [0, 1]."""

    def sobel(plane: np.ndarray) -> np.ndarray:  # (2, H, W): along the width, the height
        return np.stack([ndimage.sobel(plane, axis=axis, mode="nearest") for axis in (1, 0)])

    def gradients(image: np.ndarray) -> np.ndarray:  # (N, C, 2, H, W)
        return np.stack([np.stack([sobel(plane) for plane in planes]) for planes in image])

    gx = gradients(x.double().numpy()).reshape(x.shape[0], -1)
    ga = gradients(average.double().numpy()).reshape(x.shape[0], -1)
    cosine = (gx * ga).sum(1) / (np.linalg.norm(gx, axis=1) * np.linalg.norm(ga, axis=1))
    return float(np.clip(cosine.mean(), 0.0, 1.0))


def test_the_reference_is_scikit_images_ssim_away_from_the_border(rng) -> None:
    x, y = images(rng, (1, 1, 23, 19))
    reference = reference_ssim_map(x[0, 0].double().numpy(), y[0, 0].double().numpy())
    _, full = structural_similarity(
        x[0, 0].double().numpy(),
        y[0, 0].double().numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    # scikit-image reflects about the edge (half-sample), so only the border differs
    np.testing.assert_allclose(reference[5:-5, 5:-5], full[5:-5, 5:-5], atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 23, 19), (1, 2, 9, 10)])
def test_ssim_map_matches_the_reference(rng, shape) -> None:
    x, y = images(rng, shape)
    np.testing.assert_allclose(ssim_map(x, y).double().numpy(), reference_maps(x, y), atol=2e-5)


def test_the_similarities_match_the_references(rng) -> None:
    x, y = images(rng)
    maps = reference_maps(x, y)
    assert float(observed_ssim(x, y)) == pytest.approx(max(0.0, maps.mean()), abs=1e-5)
    assert float(temporal_ssim(x, y)) == pytest.approx(max(0.0, maps.mean()), abs=1e-5)
    assert float(edge_similarity(x, y)) == pytest.approx(reference_edge_similarity(x, y), abs=1e-5)
    # the observed SSIM over the known pixels: the map of the masked images, weighted by the mask
    known = known_pixels(rng)
    masked = reference_maps(x * known, y * known)
    weights = np.broadcast_to(known.numpy(), masked.shape)
    expected = (masked * weights).sum() / weights.sum()
    assert float(observed_ssim(x, y, known)) == pytest.approx(expected, abs=1e-5)
    # anti-correlated images: a negative SSIM, clamped to 0
    assert reference_maps(x, 1 - x).mean() < 0 and float(temporal_ssim(x, 1 - x)) == 0.0


def test_observed_ssim_ignores_the_missing_pixels(rng) -> None:
    x, y = images(rng)
    known = known_pixels(rng)
    changed = torch.where(known.bool(), x, torch.rand_like(x))  # differs only where missing
    assert float((changed - x).abs().sum()) > 10
    assert float(observed_ssim(changed, y, known)) == pytest.approx(
        float(observed_ssim(x, y, known)), abs=1e-6
    )
    # a change on a known pixel is seen
    spot = torch.nonzero(known[0, 0])[len(torch.nonzero(known[0, 0])) // 2]
    moved = x.clone()
    moved[0, :, spot[0], spot[1]] = 1 - moved[0, :, spot[0], spot[1]]
    assert float(observed_ssim(moved, y, known)) != pytest.approx(
        float(observed_ssim(x, y, known)), abs=1e-6
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
    # four different images: the term must compare the right two
    x, prediction = images(rng)
    observation, average = images(rng)
    known = known_pixels(rng)
    masked = reference_maps(prediction * known, observation * known)
    weights = np.broadcast_to(known.numpy(), masked.shape)
    expected = {
        "observed_ssim": max(0.0, (masked * weights).sum() / weights.sum()),
        "temporal_ssim": max(0.0, reference_maps(x, average).mean()),
        "edge": reference_edge_similarity(x, average),
    }
    assert len({round(v, 3) for v in expected.values()}) == 3
    for name, s in expected.items():
        feedback = StructuralFeedback(name, weight=0.3, warmup_steps=10)
        arguments = {"prediction": prediction, "observation": observation, "known": known}
        term = feedback(x, **arguments, average=average, step=5)
        assert float(term) == pytest.approx(0.15 * (1 - s), abs=1e-6)
        term = feedback(x, **arguments, average=average, step=20)
        assert float(term) == pytest.approx(0.3 * (1 - s), abs=1e-6)
        if feedback.needs_average:  # no average yet (the first step): no term
            assert float(feedback(x, **arguments, step=1)) == 0.0
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
