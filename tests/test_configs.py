"""Every YAML in configs/ through the real CLI for a few steps, on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, smooth_image, write_png

from dip_lightning.cli import main

ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml"))


def small_inputs(config: Path, tmp_path: Path) -> list[str]:
    """Command-line overrides that point a config at small synthetic inputs of its kind."""
    spec = yaml.safe_load(config.read_text())
    data = spec.get("data") or {}
    gray = bool(data.get("grayscale"))
    image = write_png(tmp_path / "image.png", smooth_image(48, 40, 1 if gray else 3))
    args = ["--data.image", str(image)]
    if data.get("clean"):
        args += ["--data.clean", str(image)]
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
