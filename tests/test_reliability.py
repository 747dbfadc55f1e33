"""Reliability: the divergence policy, processes killed mid-write or mid-fit, and one-line
errors for values the parser lets through."""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, smooth_image, write_png
from lightning.pytorch import Callback, Trainer
from PIL import Image
from test_cli import fit_args

from dip_lightning.cli import main
from dip_lightning.data import SingleImageDataModule
from dip_lightning.data.io import load_image
from dip_lightning.errors import ConfigError
from dip_lightning.metrics.psnr import psnr
from dip_lightning.networks import SkipNet
from dip_lightning.tasks import DenoisingDIP

SmallNet = partial(SkipNet, channels_down=8, channels_up=8, channels_skip=2, levels=3)
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


class Wreck(Callback):
    """Fill the network's parameters with NaN before each step whose index is in ``steps``."""

    def __init__(self, steps: range) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            with torch.no_grad():
                for p in pl_module.net.parameters():
                    p.fill_(float("nan"))


class Snapshot(Callback):
    """The restored image after every step."""

    def __init__(self) -> None:
        self.restored: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.restored.append(pl_module.restored_batch().clone())


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def messages() -> Any:
    handler = Messages()
    logger = logging.getLogger("dip_lightning.tasks")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def trainer(root: Path, steps: int, **kwargs: Any) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(
        max_steps=steps,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        **kwargs,
    )


def learning_rate(t: Trainer) -> float:
    return float(t.optimizers[0].param_groups[0]["lr"])


# ------------------------------------------------------------------ the divergence policy


def test_repeated_divergence_lowers_the_learning_rate_and_the_fit_goes_on(
    tmp_path: Path, rgb_png: Path, messages: list[str]
) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4, lr=0.01, max_recoveries=5)
    t = trainer(tmp_path, 20, callbacks=[Wreck(range(3, 9))])  # steps 4 to 9 diverge
    t.fit(module, datamodule=data)
    assert t.global_step == 20
    assert module.lr_reductions == 1 and not module.stopped_on_divergence
    assert learning_rate(t) == pytest.approx(0.005)
    assert int(module.recoveries) == 6
    assert torch.isfinite(module.restored()).all()
    assert any("learning rate 0.01 -> 0.005 (reduction 1 of 3)" in m for m in messages)
    assert "start from model.lr 0.005" in messages[-1]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["lr_reductions"], metrics["stopped_on_divergence"]) == (1, False)


def test_persistent_divergence_stops_the_fit_keeping_the_good_output(
    tmp_path: Path, rgb_png: Path, messages: list[str]
) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4, max_recoveries=2, max_lr_reductions=2)
    snapshot = Snapshot()
    t = trainer(tmp_path, 100, callbacks=[Wreck(range(3, 100)), snapshot])
    t.fit(module, datamodule=data)
    assert module.stopped_on_divergence and module.lr_reductions == 2
    assert t.global_step < 20
    assert learning_rate(t) == pytest.approx(0.0025)
    # the restored image only took in the good steps: it is the one after step 3
    assert torch.equal(module.restored_batch(), snapshot.restored[2])
    assert torch.isfinite(module.restored()).all()
    assert float(psnr(module.restored_batch(), module.observation)) > 10
    stop = [m for m in messages if m.startswith("stopped at step")]
    assert len(stop) == 1 and "after 2 learning-rate reductions (lr 0.01 -> 0.0025)" in stop[0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stopped_on_divergence"] is True and metrics["lr_reductions"] == 2
    with Image.open(tmp_path / "restored.png") as image:
        assert np.asarray(image).std() > 1


def test_the_policy_can_be_turned_off(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4, max_recoveries=None)
    t = trainer(tmp_path, 15, callbacks=[Wreck(range(2, 15))])
    t.fit(module, datamodule=data)
    assert t.global_step == 15 and module.lr_reductions == 0
    assert int(module.recoveries) == 13
    assert learning_rate(t) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_recoveries", 0),
        ("lr_decay_on_divergence", 1.0),
        ("lr_decay_on_divergence", 0.0),
        ("max_lr_reductions", -1),
        ("seed", 2**64),
    ],
)
def test_bad_policy_settings_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"model.{key} = "):
        DenoisingDIP(**{key: value})


def test_the_divergence_state_resumes_exactly(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    wreck = range(3, 9)  # steps 4 to 9: the run is under way when the checkpoint is taken
    make = partial(DenoisingDIP, net=SmallNet, input_depth=4, max_recoveries=4)
    whole = make()
    t_whole = trainer(tmp_path / "whole", 14, callbacks=[Wreck(wreck)])
    t_whole.fit(whole, datamodule=data)
    assert whole.lr_reductions == 1

    first = make()
    t_first = trainer(tmp_path / "first", 6, callbacks=[Wreck(wreck)])
    t_first.fit(first, datamodule=data)
    assert first.lr_reductions == 0
    ckpt = tmp_path / "half.ckpt"
    t_first.save_checkpoint(ckpt)
    second = make()
    t_second = trainer(tmp_path / "second", 14, callbacks=[Wreck(wreck)])
    t_second.fit(second, datamodule=data, ckpt_path=ckpt)
    assert second.lr_reductions == 1
    assert learning_rate(t_second) == learning_rate(t_whole)
    assert torch.equal(whole.restored(), second.restored())
    for a, b in zip(whole.net.parameters(), second.net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_absurd_learning_rate_ends_with_a_finite_non_constant_image(
    tmp_path: Path, rgb_png: Path
) -> None:
    args = fit_args(tmp_path, "--data.image", str(rgb_png), "--trainer.max_steps", "60")
    args += ["--model.lr", "10"]
    result = subprocess.run(
        [sys.executable, "-m", "dip_lightning", *args],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    run = tmp_path / "lightning_logs" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["recoveries"] >= 1  # the guard rolled diverged steps back
    restored = load_image(run / "restored.png").tensor
    clean = load_image(rgb_png).tensor
    assert restored.shape == clean.shape
    assert bool(torch.isfinite(restored).all())
    assert float(restored.std()) > 0.02  # not a constant image


# ------------------------------------------------------------------ killed processes


WRITER = textwrap.dedent(
    """
    import sys, torch
    from dip_lightning.data.io import save_image
    from dip_lightning.io_utils import atomic_write_json
    out = sys.argv[1]
    generator = torch.Generator().manual_seed(0)
    for i in range(1_000_000):
        image = torch.rand(3, 600, 800, generator=generator)
        save_image(image, out + "/restored.png")
        atomic_write_json(out + "/metrics.json", {"i": i, "values": list(range(50_000))})
        if i == 0:
            print("written", flush=True)
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.13, 0.31])
def test_a_process_killed_mid_write_leaves_whole_files(tmp_path: Path, delay: float) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "written"
    time.sleep(delay)
    process.kill()
    process.wait(timeout=60)
    with Image.open(tmp_path / "restored.png") as image:
        image.load()
        assert image.size == (800, 600) and image.mode == "RGB"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["values"] == list(range(50_000))
    # what a kill can leave besides them is a hidden temporary file, never a partial output
    others = {p.name for p in tmp_path.iterdir()} - {"restored.png", "metrics.json"}
    assert all(name.startswith(".") and ".tmp." in name for name in others), others


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(
    tmp_path: Path, rgb_png: Path
) -> None:
    root = tmp_path / "killed"
    run = root / "lightning_logs" / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    args = fit_args(root, "--data.image", str(rgb_png), "--trainer.max_steps", "100000")
    process = subprocess.Popen(
        [sys.executable, "-m", "dip_lightning", *args],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not ckpt.exists():
        assert process.poll() is None, "the fit ended early"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    step = saved["global_step"]
    assert step >= 200 and step % 200 == 0
    resumed = tmp_path / "resumed"
    extra = ["--data.image", str(rgb_png), "--trainer.max_steps", str(step + 3)]
    main(fit_args(resumed, *extra, "--ckpt_path", str(ckpt)))
    metrics = json.loads((resumed / "lightning_logs/run/metrics.json").read_text())
    assert metrics["steps"] == step + 3


# ------------------------------------------------------------------ one-line errors


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(50_000, 50_000))
    root = tmp_path / "out"
    line = _one_line_error(fit_args(root, "--data.image", str(bomb)), capsys)
    assert "too large" in line and str(bomb) in line, line
    assert not root.exists()


def test_a_directory_as_the_image_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "out"
    line = _one_line_error(fit_args(root, "--data.image", str(tmp_path)), capsys)
    assert line == f"error: cannot read image: {tmp_path}: is a directory; pass an image file"
    assert not root.exists()


FIX_CORRUPT = "check that it is a valid, complete image file (PNG, JPEG, TIFF, ...)"


def _bad_file(directory: Path, case: str) -> tuple[list[str], str]:
    """The options that give ``dip fit`` a bad file, and the start of the line it must print."""
    good = write_png(directory / "good.png", smooth_image(21, 19))
    path = directory / "bad.png"
    if case == "missing image":
        return ["--data.image", str(path)], f"error: image not found: {path}; check the path"
    if case == "missing clean":
        extra = ["--data.image", str(good), "--data.clean", str(path)]
        return extra, f"error: clean image not found: {path}; check the path"
    if case == "text named .png":
        path.write_text("hello, this is not an image\n")
        message = f"not a recognised image file; {FIX_CORRUPT}"
    elif case == "empty file":
        path.write_bytes(b"")
        message = f"not a recognised image file; {FIX_CORRUPT}"
    elif case == "truncated file":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        message = "truncated or corrupt image data ("
    else:
        Image.new("L", (1, 1)).save(path)
        message = "image is 1x1; need at least 2x2 pixels"
    return ["--data.image", str(path)], f"error: cannot read image: {path}: {message}"


@pytest.mark.parametrize(
    "case",
    ["missing image", "missing clean", "text named .png", "empty file", "truncated file", "1x1"],
)
def test_a_bad_image_file_gives_the_documented_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    extra, expected = _bad_file(tmp_path, case)
    root = tmp_path / "out"
    line = _one_line_error(fit_args(root, *extra), capsys)
    assert line.startswith(expected), line
    if case == "truncated file":
        assert line.endswith(f"); {FIX_CORRUPT}"), line
    assert not root.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--model.lr", "fast"],
            'error: Parser key "model": Parser key "lr": Expected a float. Got value: fast',
        ),
        (["--model.init_args.nope", "1"], """error: Parser key "model": Option 'nope' is not"""),
        (
            ["--model.init_args.perturbation", "nope"],
            'error: Parser key "model": Parser key "perturbation": Expected a',
        ),
    ],
)
def test_parser_errors_name_the_key_and_point_to_the_help(
    tmp_path: Path, rgb_png: Path, capsys: pytest.CaptureFixture[str], extra, expected
) -> None:
    root = tmp_path / "out"
    line = _one_line_error(fit_args(root, "--data.image", str(rgb_png), *extra), capsys)
    assert line.startswith(expected) and line.endswith(" fit --help)"), line
    assert not root.exists()


YAML_CASES = {
    "binary config": None,
    "list": "- 1\n- 2\n",
    "data not a mapping": "data: 5\n",
    "trainer not a mapping": "trainer: 5\n",
    "null lr": "model:\n  init_args:\n    lr: null\n",
    "null sigma": "data:\n  noise_sigma: null\n",
    "null steps": "trainer:\n  max_steps: null\n",
    "infinite lr": "model:\n  init_args:\n    lr: .inf\n",
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_a_bad_config_file_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    config = tmp_path / "config.yaml"
    text = YAML_CASES[case]
    if text is None:
        config.write_bytes(write_png(tmp_path / "x.png", smooth_image(4, 4)).read_bytes())
    else:
        config.write_text(text)
    root = tmp_path / "out"
    line = _one_line_error(fit_args(root, "--config", str(config)), capsys)
    expected = YAML_MESSAGES.get(case, "").format(config=config)
    assert line.startswith(f"error: {expected}"), line
    assert not root.exists()


YAML_MESSAGES = {
    "binary config": "config file {config} is not text; give a YAML file",
    "data not a mapping": "data must hold options (name: value), got 5",
    "trainer not a mapping": "trainer must hold options (name: value), got 5",
    "null lr": "invalid configuration: model.init_args.lr cannot be null",
    "null sigma": "invalid configuration: data.noise_sigma cannot be null",
    "null steps": "trainer.max_steps cannot be null",
    "infinite lr": "model.lr = inf is out of range; use a learning rate in (0, 100]",
}


ABSURD = {
    "negative sigma": ["--data.noise_sigma", "-1"],
    "huge sigma": ["--data.noise_sigma", "1e9"],
    "ratio of 1": ["--data.missing_ratio", "1"],
    "negative ratio": ["--data.missing_ratio", "-0.5"],
    "negative steps": ["--trainer.max_steps", "-5"],
    "fractional steps": ["--trainer.max_steps", "2.5"],
    "zero lr": ["--model.lr", "0"],
    "huge lr": ["--model.lr", "1e6"],
    "nan lr": ["--model.lr", "nan"],
    "huge model seed": ["--model.init_args.seed", str(10**30)],
    "huge data seed": ["--data.seed", str(10**30)],
    "huge global seed": ["--seed_everything", str(10**30)],
    "negative epochs": ["--trainer.max_epochs", "-5"],
    "no such accelerator": ["--trainer.accelerator", "tpu"],
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_values_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rgb_png: Path, case: str
) -> None:
    root = tmp_path / "out"
    args = fit_args(root, "--data.image", str(rgb_png), *ABSURD[case])
    line = _one_line_error(args, capsys)
    assert line.startswith(f"error: {ABSURD_MESSAGES[case]}"), line
    assert not root.exists()


SIGMA = "is out of range [0, 255]; give the noise std on the 0-255 scale"
RATIO = "is out of range; give the fraction of pixels to drop in (0, 1)"
LR = "is out of range; use a learning rate in (0, 100]"
ABSURD_MESSAGES = {
    "negative sigma": f"data.noise_sigma = -1.0 {SIGMA}",
    "huge sigma": f"data.noise_sigma = 1000000000.0 {SIGMA}",
    "ratio of 1": f"data.missing_ratio = 1.0 {RATIO}",
    "negative ratio": f"data.missing_ratio = -0.5 {RATIO}",
    "negative steps": "trainer.max_steps = -5: a fit runs a number of optimisation steps",
    "fractional steps": 'Parser key "trainer.max_steps": Expected a int. Got value: 2.5',
    "zero lr": f"model.lr = 0.0 {LR}",
    "huge lr": f"model.lr = 1000000.0 {LR}",
    "nan lr": 'Parser key "model": Parser key "lr": Expected a float. Got value: nan',
    "huge model seed": f"model.seed = {10**30} is out of range; use a seed below 2**63",
    "huge data seed": f"data.seed = {10**30} is out of range; use a seed below 2**63",
    "huge global seed": f"seed_everything: {10**30} is not in bounds",
    "negative epochs": "invalid configuration: `max_epochs` must be a non-negative integer",
    "no such accelerator": "invalid configuration: ",
}
