"""No host sync between log steps: a 100-step fit, as ``dip fit`` and ``dip restore`` run it,
reads tensors on the host only at its log steps, once each.

On the CPU every read of a tensor on the host is counted (``Tensor.item``, ``__float__``,
``__int__``, ``__bool__``, ``tolist``, ``cpu``, ``numpy``): on a GPU each would wait for the
device. With a CUDA device the same fits are counted by ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CONFIGS, smooth_image, write_png
from lightning.pytorch import Callback, Trainer

from dip_lightning import restore
from dip_lightning.callbacks import HeldoutStopping, StoppingCriterion
from dip_lightning.cli import DIPCLI

READS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")
STEPS = 100

TINY_NET = [
    "--model.init_args.net.init_args.channels_down=8",
    "--model.init_args.net.init_args.channels_up=8",
    "--model.init_args.net.init_args.channels_skip=2",
    "--model.init_args.net.init_args.levels=3",
    "--model.init_args.input_depth=4",
]


class StepClock(Callback):
    """The step a fit is in, from the start of its first step to the end of its last."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.steps = 0

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.step = trainer.global_step + 1
        self.steps += 1

    def on_train_epoch_end(self, trainer: Trainer, *args: Any) -> None:
        self.step = None


@contextmanager
def host_reads(clock: StepClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The steps at which a tensor was read on the host (one entry per read)."""
    steps: list[int] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _original: Any = original, **kw: Any) -> Any:
            if clock.step is not None:
                steps.append(clock.step)
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    yield steps
    monkeypatch.undo()


def dip_fit_args(root: Path, image: Path, every: int) -> list[str]:
    """``dip fit --config denoise`` as a user runs it (TensorBoard, progress bar), small."""
    return [
        "--config",
        str(CONFIGS / "denoise.yaml"),
        *TINY_NET,
        f"--data.image={image}",
        "--data.simulate=true",  # noise added to a clean image: PSNR and SSIM are logged too
        f"--trainer.max_steps={STEPS}",
        f"--trainer.log_every_n_steps={every}",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={root}",
        "--trainer.enable_model_summary=false",
    ]


def dip_restore_args(root: Path, image: Path, *options: str) -> list[str]:
    """The ``dip fit`` arguments ``dip restore`` builds for ``image``, small."""
    cfg = restore.parse([str(image), "-o", str(root / "out.png"), "--max-steps", str(STEPS)])
    cfg.quiet = "--quiet" in options
    args = restore.fit_arguments(cfg, restore.Job(image, root / "out.png"), root)
    return [*args, *TINY_NET, "--trainer.enable_model_summary=false"]


def run(args: list[str], reads: Callable[[StepClock], Any]) -> tuple[Any, StepClock, Any]:
    cli = DIPCLI(args=args, run=False)
    clock = StepClock()
    cli.trainer.callbacks.insert(0, clock)  # type: ignore[attr-defined]
    with reads(clock) as counted:
        cli.trainer.fit(cli.model, cli.datamodule)
    return cli, clock, counted


def log_steps(every: int) -> set[int]:
    return {s for s in range(1, STEPS + 1) if s % every == 0 or s == STEPS}


def check(steps: list[int], every: int, per_log_step: int = 1) -> None:
    between = sorted(s for s in steps if s not in log_steps(every))
    assert not between, f"host reads between log steps, at steps {between}"
    # one read a log step, and a few at the end (the image, the criterion's choice)
    most = per_log_step * (STEPS // every) + 4
    assert len(steps) <= most, f"{len(steps)} host reads: {sorted(steps)}"


def test_a_dip_fit_reads_the_host_once_a_log_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = write_png(tmp_path / "image.png", smooth_image(21, 27))
    every = 10
    cli, clock, steps = run(
        dip_fit_args(tmp_path, image, every), lambda clock: host_reads(clock, monkeypatch)
    )
    assert clock.steps == STEPS and cli.trainer.global_step == STEPS
    check(steps, every)
    assert len(set(steps)) == len(log_steps(every))  # and it does read at each
    # what was read is what was logged: on the progress bar and in the callback metrics
    assert {"psnr", "train/loss"} <= set(cli.trainer.progress_bar_metrics)
    assert isinstance(cli.trainer.progress_bar_metrics["psnr"], float)
    assert "ssim" in cli.trainer.callback_metrics


@pytest.mark.parametrize("quiet", [False, True])
def test_dip_restore_reads_the_host_once_a_log_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    image = write_png(tmp_path / "image.png", smooth_image(21, 27))
    args = dip_restore_args(tmp_path, image, *(["--quiet"] if quiet else []))
    cli, clock, steps = run(args, lambda clock: host_reads(clock, monkeypatch))
    every = cli.trainer.log_every_n_steps
    assert clock.steps == STEPS and every < STEPS
    criteria = [c for c in cli.trainer.callbacks if isinstance(c, StoppingCriterion)]
    assert [type(c) for c in criteria] == [HeldoutStopping]  # restore's default for denoising
    assert criteria[0].selection() is not None  # it scored the steps
    # the progress bar of dip restore reads the criterion's best step in the same read
    check(steps, every, per_log_step=1)


# ---------------------------------------------------------------------- on a GPU


@contextmanager
def cuda_syncs(clock: StepClock) -> Iterator[list[int]]:
    """The steps at which the fit synchronised with the GPU, as
    ``torch.cuda.set_sync_debug_mode("warn")`` reports them."""
    steps: list[int] = []
    show = warnings.showwarning

    def record(message: Any, *args: Any, **kwargs: Any) -> None:
        if "synchronizing CUDA operation" in str(message) and clock.step is not None:
            steps.append(clock.step)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield steps
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = show


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("command", ["fit", "restore"])
def test_on_a_gpu_a_fit_syncs_only_at_log_steps(tmp_path: Path, command: str) -> None:
    image = write_png(tmp_path / "image.png", smooth_image(21, 27))
    gpu = ["--trainer.accelerator=gpu", "--trainer.devices=1"]
    if command == "fit":
        args = [*dip_fit_args(tmp_path, image, 10), *gpu]
    else:
        args = [*dip_restore_args(tmp_path, image), *gpu]
    cli, clock, steps = run(args, cuda_syncs)
    assert clock.steps == STEPS
    check(steps, cli.trainer.log_every_n_steps, per_log_step=1 if command == "fit" else 2)


# ---------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_plain_psnr_agrees_with_scikit_image_and_torchmetrics(dtype: torch.dtype) -> None:
    from skimage.metrics import peak_signal_noise_ratio as skimage_psnr
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from dip_lightning.metrics import psnr as module_psnr
    from dip_lightning.metrics.psnr import psnr

    generator = torch.Generator().manual_seed(3)
    for shape, noise in (((1, 3, 37, 31), 0.1), ((2, 1, 9, 13), 0.01), ((3, 5, 7), 0.3)):
        x = torch.rand(shape, generator=generator, dtype=torch.float64)
        y = (x + noise * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
        x, y = x.to(dtype), y.to(dtype)
        expected = skimage_psnr(y.double().numpy(), x.double().numpy(), data_range=1.0)
        ours = psnr(x, y)
        assert ours.dtype == dtype and ours.shape == ()
        tolerance = 1e-9 if dtype == torch.float64 else 1e-4
        assert float(ours) == pytest.approx(expected, rel=tolerance)
        assert float(module_psnr(x, y)) == float(ours)
        reference = peak_signal_noise_ratio(x, y, data_range=1.0)  # computed in float32
        assert float(ours) == pytest.approx(float(reference), rel=1e-5)
        assert float(psnr(2 * x, 2 * y, data_range=2.0)) == pytest.approx(expected, rel=tolerance)


def fbc_fit(tmp_path: Path, logger: bool, fbc: bool) -> Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    from dip_lightning.callbacks import FBCLogger
    from dip_lightning.data import SingleImageDataModule
    from dip_lightning.networks import SkipNet
    from dip_lightning.tasks import DenoisingDIP

    image = write_png(tmp_path / "image.png", smooth_image(17, 19))
    data = SingleImageDataModule(image=str(image), noise_sigma=25)
    net = SkipNet(4, 3, channels_down=8, channels_up=8, channels_skip=2, levels=2)
    module = DenoisingDIP(net=lambda *_: net, input_depth=4)
    trainer = Trainer(
        max_steps=4,
        default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="runs") if logger else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=2,
        callbacks=[FBCLogger(every_n_steps=2)] if fbc else [],
    )
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.mark.parametrize(("logger", "fbc"), [(True, False), (False, True), (True, True)])
def test_fbc_is_measured_only_with_a_logger_and_when_asked_for(
    tmp_path: Path, logger: bool, fbc: bool
) -> None:
    from dip_lightning.callbacks import FBCLogger

    trainer = fbc_fit(tmp_path, logger, fbc)
    loggers = [c for c in trainer.callbacks if isinstance(c, FBCLogger)]  # type: ignore[attr-defined]
    assert len(loggers) == int(fbc)  # the module adds none
    measured = bool(loggers and loggers[0].steps)
    assert measured == (logger and fbc)
    assert measured == any(tmp_path.rglob("fbc.csv"))
    if measured:
        assert loggers[0].steps == [2, 4]
