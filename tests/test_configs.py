"""Every YAML in configs/ through the real CLI for a few steps, on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONFIGS, REPO, smooth_image, write_png

from dip_lightning.cli import DIPCLI, main
from dip_lightning.data.datamodule import SingleImageDataModule, sample_image_path

ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml"))


def small_inputs(config: Path, tmp_path: Path) -> list[str]:
    """Command-line overrides that point a config at small synthetic inputs of its kind.

    Every file its ``data`` section names gets a synthetic stand-in that fits: the image
    (48x40, or 1/scale of it when it is a low-resolution input), and a clean reference, a guide
    and a half-known mask of the restored image's size. A config that simulates its
    observation gets ``--data.simulate true`` with the image (else the image is the observation).
    """
    spec = yaml.safe_load(config.read_text())
    data = spec.get("data") or {}
    channels = 1 if data.get("grayscale") else 3
    scale = int(data.get("scale") or 1)
    simulate = data.get("simulate")
    if simulate is None:
        simulate = bool(
            data.get("noise_sigma") or data.get("missing_ratio") or data.get("jpeg_quality")
        )
    height, width = 48, 40  # the restored image's size
    low = 1 if simulate else scale  # a low-resolution input is 1/scale of that
    image = write_png(tmp_path / "image.png", smooth_image(height // low, width // low, channels))
    args = ["--data.image", str(image)]
    if simulate:  # the stand-in is a clean image: the config's simulation is asked for
        args += ["--data.simulate", "true"]
    if data.get("clean"):
        clean = write_png(tmp_path / "clean.png", smooth_image(height, width, channels, seed=1))
        args += ["--data.clean", str(clean)]
    model = (spec.get("model") or {}).get("class_path", "")
    if data.get("guide") or model.endswith("FlashNoFlashDIP"):
        guide = write_png(tmp_path / "guide.png", smooth_image(height, width, channels, seed=2))
        args += ["--data.guide", str(guide)]
    if data.get("mask") or (model.endswith("InpaintingDIP") and not data.get("missing_ratio")):
        rows, cols = np.indices((height, width)) // 4
        mask = np.where((rows + cols) % 2 == 0, 255, 0).astype(np.uint8)
        args += ["--data.mask", str(write_png(tmp_path / "mask.png", mask))]
    return args


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_runs_through_the_cli(config: Path, tmp_path: Path) -> None:
    args = [
        "fit",
        "--config",
        str(config),
        *small_inputs(config, tmp_path),
        "--trainer.max_steps",
        "3",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.class_path",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]
    main(args)
    (run,) = (tmp_path / "runs" / "lightning_logs").iterdir()
    assert (run / "restored.png").is_file()
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_the_cpu_configs_simulate_their_observation_on_the_embedded_sample(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # configs/flash.yaml names its guide from the repository root
    cli = DIPCLI(args=["--config", str(config), "--trainer.logger=false"], run=False)
    data = cli.datamodule
    assert isinstance(data, SingleImageDataModule)
    assert data.image_path == sample_image_path() and data.simulate
    sample = cli.model.sample
    assert sample is not None and sample.clean is not None  # scored against the clean sample
    assert data.describe_observation().startswith("simulated the observation: ")
