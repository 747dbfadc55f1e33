"""Every task end to end on a tiny image, the data options they read, and their one-line errors."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, smooth_image, write_png
from lightning.pytorch import Trainer
from PIL import Image

from dip_lightning.cli import main
from dip_lightning.data import SingleImageDataModule
from dip_lightning.data.datamodule import jpeg_compress
from dip_lightning.errors import ConfigError
from dip_lightning.metrics import psnr_y, rgb_to_y
from dip_lightning.networks import SkipNet
from dip_lightning.tasks import (
    DenoisingDIP,
    DIPModule,
    FlashNoFlashDIP,
    InpaintingDIP,
    SuperResolutionDIP,
)

SmallNet = partial(SkipNet, channels_down=8, channels_up=8, channels_skip=2, levels=3)


def fit(
    root: Path, module: DIPModule, data: SingleImageDataModule, steps: int = 12
) -> dict[str, Any]:
    """Fit through ``Trainer.fit`` and return the run's ``metrics.json``."""
    trainer = Trainer(
        max_steps=steps,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=4,
    )
    trainer.fit(module, datamodule=data)
    assert (root / "restored.png").is_file()
    return dict(json.loads((root / "metrics.json").read_text()))


def png(path: Path, height: int, width: int, channels: int = 3, seed: int = 0) -> Path:
    return write_png(path, smooth_image(height, width, channels, seed=seed))


def mask_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def half_mask(height: int, width: int) -> np.ndarray:
    """A checkerboard of 4x4 blocks: 255 known, 0 missing."""
    rows, cols = np.indices((height, width)) // 4
    return np.where((rows + cols) % 2 == 0, 255, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------- inpainting


def test_inpainting_with_random_pixels_beats_the_masked_input(tmp_path: Path) -> None:
    image = png(tmp_path / "x.png", 37, 45)
    data = SingleImageDataModule(image=str(image), missing_ratio=0.5, seed=3)
    assert data.simulate
    module = InpaintingDIP(net=SmallNet, input_depth=8)
    metrics = fit(tmp_path / "run", module, data, steps=30)
    mask = module.degradation.mask  # type: ignore[union-attr]
    assert mask.shape == (1, 1, 37, 45)
    assert 0.4 < float(1 - mask.mean()) < 0.6
    assert torch.equal(module.observation, module.clean * mask)  # type: ignore[operator]
    assert metrics["task"] == "inpaint"
    assert (metrics["height"], metrics["width"], metrics["channels"]) == (37, 45, 3)
    assert metrics["psnr"] > metrics["input_psnr"] + 3


def test_random_mask_follows_the_data_seed_and_can_differ_per_channel(tmp_path: Path) -> None:
    image = str(png(tmp_path / "x.png", 20, 24))

    def mask_of(**kwargs: Any) -> torch.Tensor:
        data = SingleImageDataModule(image=image, missing_ratio=0.3, **kwargs)
        module = InpaintingDIP(net=SmallNet, input_depth=4)
        return module.build_degradation(data).mask

    assert torch.equal(mask_of(seed=1), mask_of(seed=1))
    assert not torch.equal(mask_of(seed=1), mask_of(seed=2))
    per_channel = mask_of(seed=1, per_channel_mask=True)
    assert per_channel.shape == (1, 3, 20, 24)
    assert not torch.equal(per_channel[:, 0], per_channel[:, 1])


def test_inpainting_a_real_observation_with_a_mask_file(tmp_path: Path) -> None:
    image = png(tmp_path / "x.png", 24, 32, channels=1)
    mask = mask_png(tmp_path / "m.png", half_mask(24, 32))
    data = SingleImageDataModule(image=str(image), mask=str(mask), clean=str(image))
    assert not data.simulate
    module = InpaintingDIP(net=SmallNet, input_depth=4)
    metrics = fit(tmp_path / "run", module, data, steps=6)
    known = torch.from_numpy(half_mask(24, 32) > 0).float()
    # the missing pixels of the observation are zeroed, the known ones kept
    assert torch.equal(module.observation[0, 0], data.image.tensor[0] * known)
    assert metrics["channels"] == 1 and "input_psnr" in metrics


def test_inpainting_without_a_mask_is_refused(tmp_path: Path) -> None:
    data = SingleImageDataModule(image=str(png(tmp_path / "x.png", 16, 16)))
    with pytest.raises(ConfigError, match=r"data\.mask .* data\.missing_ratio"):
        InpaintingDIP(net=SmallNet, input_depth=4).attach(data)


# ---------------------------------------------------------------------------- super-resolution


def test_super_resolution_of_a_simulated_observation(tmp_path: Path) -> None:
    image = png(tmp_path / "hr.png", 37, 45)
    data = SingleImageDataModule(image=str(image), scale=2, simulate=True)
    module = SuperResolutionDIP(net=SmallNet, input_depth=8)
    metrics = fit(tmp_path / "run", module, data, steps=10)
    # the clean image is cropped to multiples of the scale, the observation is half its size
    assert module.clean.shape == (1, 3, 36, 44)  # type: ignore[union-attr]
    assert module.observation.shape == (1, 3, 18, 22)
    assert Image.open(tmp_path / "run" / "restored.png").size == (44, 36)
    assert metrics["task"] == "super-resolution"
    assert {"psnr_y", "bicubic_psnr", "bicubic_psnr_y"} <= metrics.keys()
    assert "input_psnr" not in metrics  # the observation is not the output's size
    restored = torch.from_numpy(np.array(Image.open(tmp_path / "run" / "restored.png")))
    restored = restored.permute(2, 0, 1).float() / 255
    expected = float(psnr_y(restored, module.clean[0], border=2))  # type: ignore[index]
    assert metrics["psnr_y"] == pytest.approx(expected, abs=0.05)  # 8-bit rounding of the PNG


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_super_resolution_output_is_scale_times_the_input(tmp_path: Path, scale: int) -> None:
    low = png(tmp_path / "lr.png", 7, 5)
    data = SingleImageDataModule(image=str(low), scale=scale)
    assert not data.simulate
    module = SuperResolutionDIP(net=SmallNet, input_depth=4)
    metrics = fit(tmp_path / "run", module, data, steps=2)
    assert Image.open(tmp_path / "run" / "restored.png").size == (5 * scale, 7 * scale)
    assert (metrics["height"], metrics["width"]) == (7 * scale, 5 * scale)
    assert "psnr_y" not in metrics  # no clean reference


def test_super_resolution_reports_the_bicubic_baseline_for_a_real_pair(tmp_path: Path) -> None:
    high = png(tmp_path / "hr.png", 32, 24)
    low = tmp_path / "lr.png"
    Image.open(high).resize((12, 16), Image.Resampling.LANCZOS).save(low)
    data = SingleImageDataModule(image=str(low), clean=str(high), scale=2)
    metrics = fit(tmp_path / "run", SuperResolutionDIP(net=SmallNet, input_depth=4), data, 3)
    assert metrics["bicubic_psnr"] > 20 and metrics["bicubic_psnr_y"] > 20


def test_tv_weight_adds_the_total_variation_to_the_loss() -> None:
    module = SuperResolutionDIP(net=SmallNet, tv_weight=0.5)
    x = torch.zeros(1, 3, 6, 6)
    x[..., 3:] = 1.0
    reg = module.regularization(x)
    assert reg is not None and float(reg) == pytest.approx(0.5 * 3 * 5, rel=1e-3)
    assert SuperResolutionDIP(net=SmallNet).regularization(x) is None
    with pytest.raises(ConfigError, match="tv_weight"):
        SuperResolutionDIP(tv_weight=-1.0)


def test_super_resolution_needs_a_scale(tmp_path: Path) -> None:
    data = SingleImageDataModule(image=str(png(tmp_path / "x.png", 16, 16)))
    with pytest.raises(ConfigError, match=r"data\.scale"):
        SuperResolutionDIP(net=SmallNet, input_depth=4).attach(data)


# ------------------------------------------------------------------------- flash and JPEG


def test_flash_no_flash_feeds_the_flash_image_to_the_network(tmp_path: Path) -> None:
    noflash = png(tmp_path / "noflash.png", 21, 27, seed=1)
    flash = png(tmp_path / "flash.png", 21, 27, seed=2)
    data = SingleImageDataModule(image=str(noflash), guide=str(flash))
    module = FlashNoFlashDIP(net=SmallNet)
    assert (module.input_depth, module.sigma_p, module.lr) == (3, 0.0, 0.1)
    metrics = fit(tmp_path / "run", module, data, steps=8)
    box = module.crop_box
    assert box is not None and module.z.shape == (1, 3, 24, 32)
    inside = module.z[0, :, box.top : box.bottom, box.left : box.right]
    assert torch.equal(inside, data.guide.tensor)  # type: ignore[union-attr]
    assert metrics["task"] == "flash-no-flash"
    assert (metrics["height"], metrics["width"]) == (21, 27)


def test_flash_no_flash_needs_a_guide_with_input_depth_channels(tmp_path: Path) -> None:
    image = str(png(tmp_path / "x.png", 16, 16))
    with pytest.raises(ConfigError, match=r"data\.guide"):
        FlashNoFlashDIP(net=SmallNet).attach(SingleImageDataModule(image=image))
    data = SingleImageDataModule(image=image, guide=image)
    with pytest.raises(ConfigError, match="input_depth: 3"):
        FlashNoFlashDIP(net=SmallNet, input_depth=4).attach(data)


def test_jpeg_artifact_removal_of_a_simulated_jpeg(tmp_path: Path) -> None:
    image = png(tmp_path / "x.png", 33, 40)
    data = SingleImageDataModule(image=str(image), jpeg_quality=10)
    assert data.simulate
    module = DenoisingDIP(net=SmallNet, input_depth=3)
    metrics = fit(tmp_path / "run", module, data, steps=4)
    expected = jpeg_compress(data.image.tensor, 10)
    assert torch.equal(module.observation[0], expected)
    assert 20 < metrics["input_psnr"] < 40


# --------------------------------------------------------------------------- data options


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"missing_ratio": 1.0}, "missing_ratio"),
        ({"missing_ratio": -0.1}, "missing_ratio"),
        ({"missing_ratio": 0.5, "simulate": False}, "simulate is off"),
        ({"per_channel_mask": True}, "per_channel_mask"),
        ({"scale": 3}, "data.scale = 3"),
        ({"scale": 2, "missing_ratio": 0.5}, "cannot be combined"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
    ],
)
def test_contradictory_data_options_are_refused(
    rgb_png: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        SingleImageDataModule(image=str(rgb_png), **kwargs)


def test_clean_and_guide_must_have_the_restored_size(tmp_path: Path) -> None:
    low, high = png(tmp_path / "lr.png", 8, 6), png(tmp_path / "hr.png", 32, 24)
    SingleImageDataModule(image=str(low), clean=str(high), scale=4)
    with pytest.raises(ConfigError, match="must be 12x16, 2 times the 6x8"):
        SingleImageDataModule(image=str(low), clean=str(high), scale=2)
    with pytest.raises(ConfigError, match="guide image is 24x32"):
        SingleImageDataModule(image=str(low), guide=str(high))


# ------------------------------------------------------------------ one-line errors via the CLI


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``dip`` and return its one-line error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def inpaint_args(root: Path, image: Path, mask: Path) -> list[str]:
    return [
        "fit",
        "--model",
        "dip_lightning.tasks.InpaintingDIP",
        "--data.image",
        str(image),
        "--data.mask",
        str(mask),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong_size", "is 20x16 (width x height) but the image is 24x18"),
        ("all_zero", "has no known pixel"),
        ("all_one", "hides nothing"),
        ("gray", "is not binary"),
        ("colour_channels_differ", "has colour channels that differ"),
    ],
)
def test_bad_masks_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    image = png(tmp_path / "x.png", 18, 24, channels=1)
    arrays = {
        "wrong_size": half_mask(16, 20),
        "all_zero": np.zeros((18, 24)),
        "all_one": np.full((18, 24), 255),
        "gray": np.full((18, 24), 128),
        "colour_channels_differ": np.stack([half_mask(18, 24), 255 - half_mask(18, 24)] * 2)[
            :3
        ].transpose(1, 2, 0),
    }
    mask = mask_png(tmp_path / "mask.png", arrays[case])
    line = cli_error(inpaint_args(tmp_path / "runs", image, mask), capsys)
    assert line.startswith("error: mask ") and message in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data.scale", "8", "--data.simulate", "true"], "data.scale 8 does not fit the 12x10"),
        (["--data.scale", "3"], "data.scale = 3 is not supported"),
        ([], "super-resolution needs a factor"),
    ],
)
def test_a_scale_that_does_not_fit_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    image = png(tmp_path / "x.png", 10, 12)
    args = ["fit", "--model", "dip_lightning.tasks.SuperResolutionDIP", "--data.image", str(image)]
    args += ["--trainer.default_root_dir", str(tmp_path / "runs"), *extra]
    line = cli_error(args, capsys)
    assert message in line, line
    assert not (tmp_path / "runs").exists()


def test_flash_without_a_guide_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = png(tmp_path / "x.png", 10, 12)
    args = ["fit", "--config", str(REPO / "configs" / "flash.yaml"), "--data.image", str(image)]
    args += ["--data.guide", "null", "--trainer.default_root_dir", str(tmp_path / "runs")]
    assert "data.guide" in cli_error(args, capsys)


# ------------------------------------------------------------------------------------ Y-PSNR


@pytest.mark.parametrize(("channels", "border"), [(3, 0), (3, 4), (1, 2)])
def test_psnr_y_agrees_with_scikit_image(channels: int, border: int) -> None:
    skimage_color = pytest.importorskip("skimage.color")
    skimage_metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(channels + border)
    clean = torch.rand(channels, 29, 34, generator=g)
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=g)).clamp(0, 1)

    def luma(x: torch.Tensor) -> np.ndarray:
        array = x.numpy().astype(np.float64)
        if channels == 1:
            return array[0] * 255
        return skimage_color.rgb2ycbcr(array.transpose(1, 2, 0))[..., 0]

    ref_x, ref_y = luma(noisy), luma(clean)
    if border:
        ref_x, ref_y = ref_x[border:-border, border:-border], ref_y[border:-border, border:-border]
    expected = skimage_metrics.peak_signal_noise_ratio(ref_y, ref_x, data_range=255)
    assert float(psnr_y(noisy, clean, border=border)) == pytest.approx(expected, abs=1e-3)
    assert float(psnr_y(noisy[None], clean[None], border=border)) == pytest.approx(
        expected, abs=1e-3
    )
    if channels == 3:
        np.testing.assert_allclose(rgb_to_y(clean)[0].numpy() * 255, luma(clean), rtol=0, atol=1e-3)
