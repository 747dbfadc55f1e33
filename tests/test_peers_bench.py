"""benchmarks/peers.py: the inputs it makes for each task, its scores against scikit-image, and
one tiny inpainting run end to end through ``dip restore`` and its peer, resumed from its store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED_DATA, load_benchmark

SCRIPT = REPO / "benchmarks" / "peers.py"
SHARED = SHARED_DATA


bench = load_benchmark("peers")


def smooth(side: int = 36) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(3, 5, 5, generator=g)
    up = torch.nn.functional.interpolate(low[None], size=(side, side), mode="bicubic")[0]
    return (up.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("task", ["denoise", "inpaint", "super-resolution"])
def test_the_inputs_of_each_task(tmp_path: Path, task: str) -> None:
    from PIL import Image

    clean = smooth()
    paths = bench.make_inputs(task, clean, seed=3, folder=tmp_path, sigma=25.0)  # type: ignore[attr-defined]
    observation = np.asarray(Image.open(paths["observation"]), dtype=np.float64)
    if task == "denoise":
        residual = observation - clean
        assert 20 < residual.std() < 27  # sigma 25, a little clipped
    elif task == "inpaint":
        known = np.asarray(Image.open(paths["mask"])) > 127
        assert 0.4 < known.mean() < 0.6
        assert (observation[~known] == 0).all()
        assert (observation[known] == clean[known]).all()
    else:
        assert observation.shape == (9, 9, 3)
    again = bench.make_inputs(task, clean, seed=3, folder=tmp_path / "again", sigma=25.0)  # type: ignore[attr-defined]
    assert np.array_equal(np.asarray(Image.open(again["observation"])), observation)


def test_scores_agree_with_scikit_image() -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(1)
    clean = torch.rand(3, 33, 35, generator=g)
    restored = (clean + 0.05 * torch.randn(3, 33, 35, generator=g)).clamp(0, 1)
    scores = bench.score("denoise", restored, clean)  # type: ignore[attr-defined]
    a, b = restored.permute(1, 2, 0).numpy(), clean.permute(1, 2, 0).numpy()
    assert scores["psnr"] == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1), abs=1e-4)
    reference = structural_similarity(
        b,
        a,
        data_range=1,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert scores["ssim"] == pytest.approx(reference, abs=2e-3)


def test_a_tiny_run_end_to_end_and_resumed(tmp_path: Path) -> None:
    if not (SHARED / "denoising-cbm3d").is_dir():
        pytest.skip(f"{SHARED} not found (set DIP_SHARED)")
    command = [
        sys.executable,
        str(SCRIPT),
        "--task",
        "inpaint",
        "--images",
        "1",
        "--crop",
        "48",
        "--methods",
        "dip-default",
        "peer",
        "--max-steps",
        "3",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    store = json.loads((tmp_path / "peers.json").read_text())
    methods = {key.rsplit("/", 1)[1] for key in store}
    assert "dip-default" in methods and "peer" in methods
    assert {r["task"] for r in store.values()} == {"inpaint"}
    for record in store.values():
        assert 5 < record["psnr"] < 60 and 0 < record["ssim"] <= 1 and record["seconds"] > 0
    assert "| mean |" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert again.returncode == 0
    assert json.loads((tmp_path / "peers.json").read_text()) == store  # nothing ran again
    assert " dB in " not in again.stdout
