"""The CUDA path of ``dip fit``: fp32 and bf16-mixed fits on one GPU through the real CLI, an
exact resume, batched fits, and the host syncs a fit makes between log steps.

Every test here is marked ``cuda``: without a CUDA device they are collected and skipped with
the reason (tests/conftest.py). Run them with ``pytest -m cuda``; ``benchmarks/gpu_check.py``
runs them and prints one row each.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CONFIGS, load_benchmark, smooth_image, write_png
from PIL import Image
from test_cli import SMALL_NET

from dip_lightning.cli import DIPCLI, main
from dip_lightning.tasks.batched import BatchedDIP, batch_names

# deterministic cuBLAS (read when cuBLAS starts, so before the first fit)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = pytest.mark.cuda

#: the accelerator every fit here runs on
GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
#: a network of kernels that are deterministic on CUDA: zero padding and nearest upsampling
#: (the backward passes of reflection padding and bilinear upsampling add with atomics)
DETERMINISTIC = [
    "--trainer.deterministic",
    "true",
    "--model.init_args.net.init_args.padding",
    "zero",
    "--model.init_args.net.init_args.upsample_mode",
    "nearest",
]


def fit_args(root: Path, image: Path | None, *extra: str) -> list[str]:
    """``dip fit`` of the denoising config with a small network on the GPU; no logger, no
    progress bar; the run directory is ``root``."""
    return [
        "fit",
        "--config",
        str(CONFIGS / "denoise.yaml"),
        *SMALL_NET,
        *GPU,
        *(["--data.image", str(image)] if image else []),
        "--data.simulate=true",  # the config's noise on the clean test images: psnr is known
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        *extra,
    ]


def checkpoint_state(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture
def deterministic() -> Iterator[None]:
    """Undo what ``--trainer.deterministic true`` sets for the whole process."""
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_dip_fit_on_one_gpu_writes_the_restored_image(
    tmp_path: Path, rgb_png: Path, precision: str
) -> None:
    main(fit_args(tmp_path, rgb_png, "--trainer.max_steps", "12", "--trainer.precision", precision))
    with Image.open(tmp_path / "restored.png") as restored:
        assert restored.size == (45, 37) and restored.mode == "RGB"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 12
    assert math.isfinite(metrics["psnr"]) and math.isfinite(metrics["peak_psnr"])
    # a checkpoint loaded without map_location puts each tensor back where it was saved from
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["state_dict"]["z"].device.type == "cuda"


def test_bf16_mixed_on_the_gpu_follows_fp32(tmp_path: Path, rgb_png: Path) -> None:
    psnr, images = {}, {}
    for precision in ("32-true", "bf16-mixed"):
        run = tmp_path / precision
        main(fit_args(run, rgb_png, "--trainer.max_steps", "30", "--trainer.precision", precision))
        psnr[precision] = json.loads((run / "metrics.json").read_text())["psnr"]
        images[precision] = np.asarray(Image.open(run / "restored.png"))
    # autocast ran the convolutions in bf16 (another result) and the fit still went the same way
    assert not np.array_equal(images["32-true"], images["bf16-mixed"])
    assert abs(psnr["32-true"] - psnr["bf16-mixed"]) < 1.0, psnr


def test_a_resumed_fit_on_the_gpu_equals_an_uninterrupted_one(
    tmp_path: Path, rgb_png: Path, deterministic: None
) -> None:
    main(fit_args(tmp_path / "whole", rgb_png, *DETERMINISTIC, "--trainer.max_steps", "16"))
    main(fit_args(tmp_path / "half", rgb_png, *DETERMINISTIC, "--trainer.max_steps", "8"))
    checkpoint = tmp_path / "half" / "checkpoints" / "last.ckpt"
    assert checkpoint_state(tmp_path / "half")["global_step"] == 8
    resumed = fit_args(tmp_path / "resumed", rgb_png, *DETERMINISTIC, "--trainer.max_steps", "16")
    main([*resumed, "--ckpt_path", str(checkpoint)])

    whole = np.asarray(Image.open(tmp_path / "whole" / "restored.png"))
    again = np.asarray(Image.open(tmp_path / "resumed" / "restored.png"))
    assert np.array_equal(whole, again)
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["steps"] == 16
    a, b = checkpoint_state(tmp_path / "whole"), checkpoint_state(tmp_path / "resumed")
    assert a["global_step"] == b["global_step"] == 16
    # every parameter and buffer (the input, the output average, the peak) and Adam's moments
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    moments_a = a["optimizer_states"][0]["state"]
    moments_b = b["optimizer_states"][0]["state"]
    assert moments_a.keys() == moments_b.keys()
    for index, state in moments_a.items():
        for name, value in state.items():
            assert torch.equal(value, moments_b[index][name]), (index, name)


def _images(tmp_path: Path, count: int) -> list[Path]:
    return [write_png(tmp_path / f"im{i}.png", smooth_image(19, 25, seed=i)) for i in range(count)]


def test_a_batched_fit_on_the_gpu_equals_the_separate_fits(tmp_path: Path) -> None:
    paths = _images(tmp_path, 2)
    # float64: the grouped and the separate convolutions round alike to 1e-9
    common = ["--trainer.precision", "64-true", "--trainer.max_steps", "10"]
    batch = [f"--batch.images={json.dumps([str(p) for p in paths])}", "--batch.seeds=2"]
    cli = DIPCLI(args=fit_args(tmp_path / "batch", None, *common, *batch)[1:], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert isinstance(cli.model, BatchedDIP)
    members = cli.model.dip_members()
    assert len(members) == 4
    for member, (path, seed) in zip(members, [(p, s) for p in paths for s in (0, 1)], strict=True):
        single_args = fit_args(tmp_path / "one", path, *common, f"--model.init_args.seed={seed}")
        single = DIPCLI(args=single_args[1:], run=False)
        single.trainer.fit(single.model, single.datamodule)
        output = member.restored_batch()
        assert output.device.type == "cuda" and output.dtype == torch.float64
        torch.testing.assert_close(output, single.model.restored_batch(), rtol=0, atol=1e-9)
    outputs = [m.restored_batch() for m in members]
    assert all(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_a_batched_bf16_fit_on_the_gpu_writes_each_image(tmp_path: Path) -> None:
    paths = _images(tmp_path, 2)
    images = json.dumps([str(p) for p in paths])
    run = tmp_path / "run"
    batch = [f"--batch.images={images}", "--batch.seeds=2", "--trainer.precision=bf16-mixed"]
    main(fit_args(run, None, *batch, "--trainer.max_steps", "6"))
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 6
    names = batch_names([str(p) for p in paths], 2)
    assert len(names) == 4
    for name in names:
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert metrics["steps"] == 6 and math.isfinite(metrics["psnr"])
        with Image.open(run / name / "restored.png") as image:
            assert image.size == (25, 19) and image.mode == "RGB"


def test_a_fit_on_the_gpu_syncs_with_the_host_only_at_log_steps(
    tmp_path: Path, rgb_png: Path
) -> None:
    every = 10

    def default_fit(root: Path, steps: int) -> list[str]:
        """``dip fit`` as a user runs it: TensorBoard logger and progress bar on."""
        return [
            "fit",
            "--config",
            str(CONFIGS / "denoise.yaml"),
            *SMALL_NET,
            *GPU,
            "--data.image",
            str(rgb_png),
            "--trainer.max_steps",
            str(steps),
            "--trainer.log_every_n_steps",
            str(every),
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger.class_path",
            "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.init_args.save_dir",
            str(root),
        ]

    # the same fit 100 steps longer: the difference is what the steps themselves sync
    # as benchmarks/gpu_check.py counts
    count_host_syncs = load_benchmark("gpu_check").count_host_syncs
    short = count_host_syncs(default_fit(tmp_path / "short", 10))
    long = count_host_syncs(default_fit(tmp_path / "long", 110))
    assert short > 0  # the count sees the syncs of setting up and writing the run
    per_100_steps = long - short
    assert per_100_steps <= 100 // every + 5, (
        f"{per_100_steps} host syncs in 100 steps with a log every {every} "
        f"({short} in a 10-step fit)"
    )
