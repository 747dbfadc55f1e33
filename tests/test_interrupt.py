"""Ctrl-C and SIGTERM during `dip fit`: a checkpoint and the output so far, then an exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from test_cli import fit_args

from dip_lightning.cli import main


def _start(root: Path, image: Path, steps: int) -> subprocess.Popen[str]:
    args = fit_args(root, "--data.image", str(image), "--trainer.max_steps", str(steps))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "dip_lightning", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_training(run: Path, process: subprocess.Popen[str], timeout: float = 600) -> None:
    """Wait until the fit has written its first periodic checkpoint (step 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "checkpoints" / "last.ckpt").exists():
            return
        if process.poll() is not None:
            pytest.fail(f"the fit ended early: {process.communicate()[0][-2000:]}")
        time.sleep(0.2)
    process.kill()
    pytest.fail("the fit did not reach its first checkpoint in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_saves_and_resume_matches(tmp_path: Path, rgb_png: Path, sig: int) -> None:
    root = tmp_path / "interrupted"
    run = root / "lightning_logs" / "run"
    process = _start(root, rgb_png, steps=100_000)
    _wait_for_training(run, process)
    time.sleep(0.5)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output
    assert "interrupted at step" in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    stopped = metrics["steps"]
    assert stopped >= 200
    assert (run / "restored.png").is_file()

    total = stopped + 7
    ckpt = run / "checkpoints" / "last.ckpt"
    resumed_root, whole_root = tmp_path / "resumed", tmp_path / "whole"
    image = ["--data.image", str(rgb_png), "--trainer.max_steps", str(total)]
    main(fit_args(resumed_root, *image, "--ckpt_path", str(ckpt)))
    main(fit_args(whole_root, *image))
    resumed = np.array(Image.open(resumed_root / "lightning_logs/run/restored.png"))
    whole = np.array(Image.open(whole_root / "lightning_logs/run/restored.png"))
    assert np.array_equal(resumed, whole)


def test_interrupting_a_batched_fit_writes_every_image(tmp_path: Path, rgb_png: Path) -> None:
    other = tmp_path / "other.png"
    Image.open(rgb_png).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    root = tmp_path / "interrupted"
    run = root / "lightning_logs" / "run"
    images = json.dumps([str(rgb_png), str(other)])
    args = fit_args(root, f"--batch.images={images}", "--trainer.max_steps", "100000")
    process = subprocess.Popen(
        [sys.executable, "-m", "dip_lightning", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_training(run, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output
    assert "interrupted at step" in output
    for name in ("rgb", "other"):
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert metrics["interrupted"] is True and metrics["steps"] >= 200
        assert (run / name / "restored.png").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
