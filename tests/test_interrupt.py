"""Ctrl-C and SIGTERM during `dip fit`: a checkpoint and the output so far, then an exact resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from test_cli import SMALL_NET, fit_args

from dip_lightning.cli import main


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


RUN = Path("lightning_logs") / "version_0"
CKPT = RUN / "checkpoints" / "last.ckpt"


def _dip(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dip_lightning", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["SIGINT", "SIGTERM"],
)
def test_interrupt_then_the_printed_command_resumes_the_run(
    tmp_path: Path, rgb_png: Path, sig: int, status: int
) -> None:
    """Ctrl-C (130) or SIGTERM (143) in a fit with the default logger; then exactly the
    command it prints, ``dip fit --ckpt_path ...`` without the config, continues the same run
    folder to the same image as a fit that was never stopped."""
    options = [
        "--config",
        str(REPO / "configs" / "denoise.yaml"),
        *SMALL_NET,
        "--data.image",
        str(rgb_png),
        "--trainer.enable_progress_bar",
        "false",
    ]
    process = _dip(tmp_path, "fit", *options, "--trainer.max_steps", "100000")
    _wait_for_training(tmp_path / RUN, process)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == status, output
    assert "Traceback" not in output
    found = re.search(r"^interrupted at step (\d+): .*$", output, flags=re.MULTILINE)
    assert found is not None, output
    stopped = int(found.group(1))
    assert found.group(0) == (
        f"interrupted at step {stopped}: wrote {RUN / 'restored.png'} and {CKPT}; "
        f"continue with --ckpt_path {CKPT}"
    )
    if sig == signal.SIGINT:
        assert "stopping after this step (Ctrl-C again to stop at once)" in output
    metrics = json.loads((tmp_path / RUN / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["steps"] == stopped >= 200

    total = stopped + 7
    bar = ["--trainer.enable_progress_bar", "true"]  # the config saved turned it off
    resumed = _dip(
        tmp_path, "fit", "--ckpt_path", str(CKPT), "--trainer.max_steps", str(total), *bar
    )
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    # the bar goes on from the step reached to the fit's total
    assert f"| {stopped}/{total} [" in output and f"| {total}/{total} [" in output, output
    assert "Traceback" not in output and "not resumable" not in output, output
    assert f"resuming {CKPT} at step {stopped}, writing into {RUN}" in output
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    metrics = json.loads((tmp_path / RUN / "metrics.json").read_text())
    assert metrics["steps"] == total and "interrupted" not in metrics

    whole_root = tmp_path / "whole"
    main(fit_args(whole_root, "--data.image", str(rgb_png), "--trainer.max_steps", str(total)))
    whole = np.array(Image.open(whole_root / "lightning_logs/run/restored.png"))
    assert np.array_equal(np.array(Image.open(tmp_path / RUN / "restored.png")), whole)


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
    assert process.returncode == 130, output
    assert "interrupted at step" in output
    for name in ("rgb", "other"):
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert metrics["interrupted"] is True and metrics["steps"] >= 200
        assert (run / name / "restored.png").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
