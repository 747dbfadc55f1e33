"""Conventions of every command: --quiet, the TensorBoard hint at the end of a fit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dip_lightning.cli import main

SMALL = [
    "--model.net.class_path=dip_lightning.networks.SkipNet",
    "--model.net.init_args.channels_down=8",
    "--model.net.init_args.channels_up=8",
    "--model.net.init_args.channels_skip=2",
    "--model.net.init_args.levels=2",
    "--trainer.max_steps=2",
]


def test_fit_names_its_run_directory_and_tensorboard(
    tmp_path: Path, rgb_png: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("dip_lightning").setLevel(logging.INFO)
    main(["fit", f"--data.image={rgb_png}", *SMALL, f"--trainer.logger.save_dir={tmp_path}"])
    err = capfd.readouterr().err
    assert "run directory:" in err and f"tensorboard --logdir {tmp_path}" in err


def test_quiet_fit_prints_no_progress_and_no_info(
    tmp_path: Path, rgb_png: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "fit",
            "--quiet",
            f"--data.image={rgb_png}",
            *SMALL,
            f"--trainer.logger.save_dir={tmp_path}",
        ]
    )
    captured = capfd.readouterr()
    assert "Epoch" not in captured.err and "run directory" not in captured.err
    assert "| Name" not in captured.out  # no model summary
    assert next(tmp_path.rglob("restored.png")).is_file()
    # the next command in this process is not quiet
    main(["fit", f"--data.image={rgb_png}", *SMALL, f"--trainer.logger.save_dir={tmp_path}"])
    assert "run directory" in capfd.readouterr().err
