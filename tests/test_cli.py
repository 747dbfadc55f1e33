"""``dip fit`` end to end: what a run writes, resuming, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, smooth_image, write_png
from PIL import Image

from dip_lightning.cli import main

SMALL_NET = [
    "--model.init_args.net.init_args.channels_down",
    "8",
    "--model.init_args.net.init_args.channels_up",
    "8",
    "--model.init_args.net.init_args.levels",
    "3",
    "--model.init_args.input_depth",
    "4",
]
METRIC_KEYS = {
    "task",
    "steps",
    "selected_step",
    "seconds",
    "seconds_per_step",
    "height",
    "width",
    "channels",
    "parameters",
    "psnr",
    "ssim",
    "input_psnr",
    "peak_psnr",
    "peak_step",
}


def fit_args(root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(REPO / "configs" / "denoise.yaml"),
        *SMALL_NET,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.class_path",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.logger.init_args.version",
        "run",
        *extra,
    ]


def test_fit_writes_the_run_directory(tmp_path: Path, rgb_png: Path) -> None:
    args = fit_args(tmp_path, "--data.image", str(rgb_png), "--trainer.max_steps", "12")
    args += ["--data.simulate", "true"]  # the config's noise on the clean image: psnr is known
    assert main(args) is None
    run = tmp_path / "lightning_logs" / "run"
    restored = Image.open(run / "restored.png")
    assert restored.size == Image.open(rgb_png).size
    assert restored.mode == "RGB"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics.keys() >= METRIC_KEYS
    assert metrics["steps"] == metrics["selected_step"] == 12
    assert (metrics["height"], metrics["width"], metrics["channels"]) == (37, 45, 3)
    assert metrics["task"] == "denoise"
    assert 1 <= metrics["peak_step"] <= 12
    assert metrics["peak_psnr"] >= metrics["psnr"] - 1e-6
    assert metrics["seconds_per_step"] > 0
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())


def test_gray_and_16_bit_inputs_keep_their_mode(tmp_path: Path) -> None:
    array = (smooth_image(35, 33, channels=1).astype(np.uint16) * 257).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    main(fit_args(tmp_path, "--data.image", str(path), "--trainer.max_steps", "3"))
    restored = Image.open(tmp_path / "lightning_logs" / "run" / "restored.png")
    assert restored.size == (33, 35)
    assert restored.mode in ("I;16", "I")
    assert np.array(restored).max() > 255


def test_resuming_from_the_checkpoint_gives_the_same_image(tmp_path: Path, rgb_png: Path) -> None:
    image = ["--data.image", str(rgb_png)]
    main(fit_args(tmp_path / "whole", *image, "--trainer.max_steps", "10"))
    main(fit_args(tmp_path / "half", *image, "--trainer.max_steps", "5"))
    ckpt = tmp_path / "half" / "lightning_logs" / "run" / "checkpoints" / "last.ckpt"
    main(
        fit_args(
            tmp_path / "resumed", *image, "--trainer.max_steps", "10", "--ckpt_path", str(ckpt)
        )
    )
    whole = np.array(Image.open(tmp_path / "whole/lightning_logs/run/restored.png"))
    resumed = np.array(Image.open(tmp_path / "resumed/lightning_logs/run/restored.png"))
    assert np.array_equal(whole, resumed)
    metrics = json.loads((tmp_path / "resumed/lightning_logs/run/metrics.json").read_text())
    assert metrics["steps"] == 10


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    tiny = write_png(tmp_path / "tiny.png", np.zeros((1, 1), np.uint8))
    return {
        "missing file": ["--data.image", str(tmp_path / "missing.png")],
        "not an image": ["--data.image", str(text)],
        "smaller than 2x2": ["--data.image", str(tiny)],
        "unknown option": ["--trainer.max_stepz", "3"],
        "unknown model key": ["--model.init_args.learning_rate", "3"],
        "wrong type": ["--model.init_args.lr", "fast"],
        "negative lr": ["--model.init_args.lr", "-1"],
        "bad choice": ["--model.init_args.net.init_args.padding", "mirror"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "not an image",
        "smaller than 2x2",
        "unknown option",
        "unknown model key",
        "wrong type",
        "negative lr",
        "bad choice",
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    root = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(root, "--trainer.max_steps", "2", *_bad_inputs(tmp_path)[case]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    assert not root.exists()


def test_console_entry_point_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "dip_lightning", "fit", "--config", "configs/denoise.yaml",
         "--data.image", str(tmp_path / "nope.png")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: image not found: {tmp_path / 'nope.png'}; check the path"]
    assert "Traceback" not in result.stderr


def test_data_and_model_seeds_are_independent(tmp_path: Path, rgb_png: Path) -> None:
    args = ["--data.image", str(rgb_png), "--data.noise_sigma", "25", "--data.seed", "1"]
    main(fit_args(tmp_path, *args, "--model.init_args.seed", "2", "--trainer.max_steps", "2"))
    assert (tmp_path / "lightning_logs" / "run" / "restored.png").is_file()
