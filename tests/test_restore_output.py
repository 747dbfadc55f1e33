"""What ``dip restore`` and :func:`dip_lightning.restore_image` print and leave behind, seen
from outside: separate processes, their stdout and stderr as a user reads them, and the
temporary folder (``TMPDIR``) after them.

The fits are the real presets on a 15x17 image for a few steps, so each process takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONFIGS, smooth_image, write_png


@pytest.fixture
def temp(tmp_path: Path) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def noisy(path: Path) -> Path:
    image = smooth_image(15, 17).astype(np.float64)
    rng = np.random.default_rng(0)
    return write_png(path, np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8))


def dip(temp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return python(temp, "-m", "dip_lightning", *args)


def python(temp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300
    )


def scratch_folders(temp: Path) -> list[str]:
    return sorted(p.name for p in temp.iterdir() if p.name.startswith("dip-restore-"))


def cut_short_warning(source: Path, steps: int) -> str:
    return (
        f"warning: {source}: the fit reached the step cap ({steps}, --max-steps) before the "
        "heldout criterion scored a step; the image written is the last step and may be worse "
        "than the input"
    )


def test_a_restore_prints_its_output_and_leaves_no_temporary_folder(
    tmp_path: Path, temp: Path
) -> None:
    """Only the real output path, a one-line warning for a fit cut short by --max-steps, and
    none of Lightning's notices; the run's temporary folder is gone."""
    source, out = noisy(tmp_path / "in.png"), tmp_path / "out.png"
    done = dip(temp, "restore", str(source), "-o", str(out), "--max-steps", "3")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{source} -> {out} (step 3 of 3)",
        cut_short_warning(source, 3),
    ]
    bars = [line for line in done.stdout.replace("\r", "\n").splitlines() if line.strip()]
    assert bars and all(line.startswith("restoring: ") for line in bars)
    assert "3/3 [" in bars[-1] and "best -, patience 200" in bars[-1]
    assert out.is_file() and scratch_folders(temp) == []


def test_verbose_shows_lightnings_own_output(tmp_path: Path, temp: Path) -> None:
    source, out = noisy(tmp_path / "in.png"), tmp_path / "out.png"
    done = dip(temp, "restore", str(source), "-o", str(out), "--max-steps", "2", "--verbose")
    assert done.returncode == 0, done.stderr
    assert "GPU available: False, used: False" in done.stderr
    assert "Trainable params" in done.stderr
    assert scratch_folders(temp) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "inpaint"], "error: --task inpaint needs --mask (white = known pixel)"),
        (
            ["--task", "inpaint", "--mask", "{broken}"],
            "error: cannot read mask: {broken}: not a recognised image file; check that it is "
            "a valid, complete image file (PNG, JPEG, TIFF, ...)",
        ),
    ],
)
def test_a_failed_restore_leaves_no_temporary_folder(
    tmp_path: Path, temp: Path, args: list[str], message: str
) -> None:
    source, out = noisy(tmp_path / "in.png"), tmp_path / "out.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    args = [a.format(broken=broken) for a in args]
    done = dip(temp, "restore", str(source), "-o", str(out), *args)
    assert done.returncode == 2
    assert done.stderr == message.format(broken=broken) + "\n"
    assert done.stdout == ""
    assert scratch_folders(temp) == [] and not out.exists()


def test_the_python_api_restores_as_dip_restore_quietly(tmp_path: Path, temp: Path) -> None:
    """restore_image: dip restore's preset (not the paper's 2.2M-parameter network) and
    stopping criterion, its checkpoint as last.ckpt, and nothing printed but the warning."""
    from dip_lightning.networks import SkipNet

    source, out, logs = noisy(tmp_path / "in.png"), tmp_path / "out.png", tmp_path / "logs"
    script = f"""
import json
from dip_lightning import restore_image
kept = restore_image({str(source)!r}, {str(out)!r}, max_steps=3, logdir={str(logs)!r},
                     progress=False)
alone = restore_image({str(source)!r}, max_steps=2, progress=False)
print(json.dumps({{
    "shape": list(kept.image.shape), "output": str(kept.output), "none": alone.output,
    "same_shape": list(alone.image.shape) == list(kept.image.shape),
    "parameters": kept.metrics["parameters"], "criteria": sorted(kept.metrics["criteria"]),
}}))
"""
    done = python(temp, "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [cut_short_warning(source, 3), cut_short_warning(source, 2)]
    result = json.loads(done.stdout)
    assert result["shape"] == [3, 15, 17] and result["same_shape"]
    assert result["output"] == str(out) and out.is_file() and result["none"] is None
    assert result["criteria"] == ["heldout"]
    preset = yaml.safe_load((CONFIGS / "restore" / "denoise.yaml").read_text())["model"]
    args = preset["init_args"]
    net = SkipNet(args["input_depth"], 3, **args["net"]["init_args"])
    assert result["parameters"] == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert (logs / "in" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert scratch_folders(temp) == []
