"""Seed experiments: each a set of ``dip fit`` runs, a CSV and PNG plots.

    dip experiment NAME [--out DIR] [--size tiny|cpu|gpu] [--image PATH] [--images DIR]
    python -m dip_lightning.experiments NAME ...

Every run is a fit of the experiment's config (``configs/experiments/NAME.yaml``, a valid
``dip fit`` config: ``dip fit --config experiments/NAME`` runs its base case) with the variant's
settings given as command-line overrides to the same parser ``dip fit`` uses. The runs go to
``OUT/runs/<label>`` (TensorBoard events, ``restored.png``, ``metrics.json``); the experiment
writes ``OUT/NAME.csv`` and ``OUT/NAME*.png``. The plots need matplotlib (the ``plots`` extra).
Run again into the same ``OUT``, an experiment reuses the runs that finished (an interrupted
experiment continues where it stopped).

``--size`` scales the image, the network and the steps: ``cpu`` (the default) finishes in at
most 15 minutes on a 2-core CPU; ``gpu`` is paper-sized (512-pixel images, 128-channel skip
network, thousands of steps); ``tiny`` (32 pixels, 8 channels, a few steps) only checks that
the experiment runs. Images are centre-cropped to the size (never upscaled).

Experiments:

* ``fitting_curves`` -- MSE against the fitting target per step (log step axis) for a natural
  image, the same with Gaussian noise (sigma 25), its pixels shuffled, and uniform noise.
* ``spectral_bias`` -- inpainting (50% missing pixels): FBC per band (output vs clean image)
  and PSNR per step, without and with each control of the spectral bias (Lipschitz-bounded
  convolutions, lambda 1.6; Gaussian upsampling).
* ``mask_ratio`` -- random-pixel inpainting at 10% .. 90% missing: final and peak PSNR.
* ``skip_ablation`` -- skips at every level, only at levels 3 and 4 (counted from the top,
  full resolution being level 1), none, and a U-Net; on inpainting and denoising.
* ``sensitivity`` -- denoising: lr, input depth, input noise ``sigma_p`` and input type varied
  one at a time around the config.
* ``structural_feedback`` -- denoising (sigma 25) of the 9 CBM3D images (``--images``) without
  and with the structural-feedback loss for each ``s_t`` (``lambda`` = ``--feedback-weight``,
  0.01, warmed up over the first 10% of the steps): peak PSNR and PSNR at the last step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from dip_lightning.callbacks.fbc import FBCLogger
from dip_lightning.errors import ConfigError, DIPError, one_line
from dip_lightning.io_utils import atomic_write_text
from dip_lightning.seeding import stream_generator

log = logging.getLogger("dip_lightning.experiments")

__all__ = ["EXPERIMENTS", "SIZES", "Context", "RunResult", "Size", "main", "run_experiment"]

#: Shared reference data: ``$DIP_SHARED/data`` (default: ``../shared`` beside a source checkout).
SHARED = Path(os.environ.get("DIP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CBM3D = SHARED / "data" / "denoising-cbm3d"

#: The record of a finished run in its run directory (args, metrics, curves, FBC).
RECORD = "experiment_run.json"


# ---------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    """How big the runs of an experiment are."""

    name: str
    image: int  # side of the (centre-cropped) square image
    channels: int  # channels_down = channels_up of the skip network
    levels: int
    input_depth: int
    unet_feature_scale: int
    steps: dict[str, int]  # per experiment
    feedback_image: int  # side of the CBM3D crops
    feedback_images: int  # how many CBM3D images

    def steps_of(self, experiment: str) -> int:
        return self.steps[experiment]


SIZES: dict[str, Size] = {
    "tiny": Size(
        "tiny",
        image=32,
        channels=8,
        levels=3,
        input_depth=4,
        unet_feature_scale=16,
        steps=dict.fromkeys(
            (
                "fitting_curves",
                "spectral_bias",
                "mask_ratio",
                "skip_ablation",
                "sensitivity",
                "structural_feedback",
            ),
            4,
        ),
        feedback_image=32,
        feedback_images=1,
    ),
    "cpu": Size(
        "cpu",
        image=64,
        channels=32,
        levels=5,
        input_depth=32,
        unet_feature_scale=8,
        steps={
            "fitting_curves": 2000,
            "spectral_bias": 1500,
            "mask_ratio": 1200,
            "skip_ablation": 1200,
            "sensitivity": 800,
            "structural_feedback": 600,
        },
        feedback_image=64,
        feedback_images=9,
    ),
    "gpu": Size(
        "gpu",
        image=512,
        channels=128,
        levels=5,
        input_depth=32,
        unet_feature_scale=4,
        steps={
            "fitting_curves": 8000,
            "spectral_bias": 6000,
            "mask_ratio": 6000,
            "skip_ablation": 6000,
            "sensitivity": 3000,
            "structural_feedback": 3000,
        },
        feedback_image=512,
        feedback_images=9,
    ),
}


# ---------------------------------------------------------------------------------- runs


class Recorder(Callback):
    """Per-step values kept on the device and read once at the end (no per-step sync):
    ``mse_target`` (MSE of ``A(x_hat)`` against the observation), and with a clean image
    ``psnr`` (of the restored image, the output average when on) and ``psnr_last`` (of the
    network's output at that step)."""

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor]] = {}

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        from dip_lightning.tasks.base import psnr

        module: Any = pl_module
        with torch.no_grad():
            values = {
                "mse_target": F.mse_loss(module.degradation(module.last_output), module.observation)
            }
            if module.clean is not None:
                values["psnr"] = psnr(module.restored_batch(), module.clean)
                values["psnr_last"] = psnr(module.last_output, module.clean)
        for key, value in values.items():
            self._values.setdefault(key, []).append(value.detach())

    def curves(self) -> dict[str, np.ndarray]:
        """Every recorded value per step (index ``i`` is step ``i + 1``)."""
        return {k: torch.stack(v).float().cpu().numpy() for k, v in self._values.items()}


@dataclass
class RunResult:
    """What one fit left: its label, settings, run directory, ``metrics.json`` and curves."""

    label: str
    settings: dict[str, Any]
    run_dir: Path
    metrics: dict[str, Any]
    curves: dict[str, np.ndarray]
    fbc: FBCLogger | None = None

    def peak(self, key: str = "psnr") -> tuple[float, int]:
        """Best value of a curve and its (1-based) step."""
        values = self.curves[key]
        index = int(np.nanargmax(values))
        return float(values[index]), index + 1

    def at_end(self, key: str) -> float:
        return float(self.curves[key][-1])


@dataclass
class Context:
    """Where and how big an experiment runs."""

    name: str
    size: Size
    out: Path
    image: Path | None = None
    images: Path | None = None
    steps: int | None = None
    feedback_weight: float = 0.01
    seeds: int = 1
    results: list[RunResult] = field(default_factory=list)

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    @property
    def inputs_dir(self) -> Path:
        return self.out / "inputs"

    def steps_for(self, experiment: str | None = None) -> int:
        return self.steps or self.size.steps_of(experiment or self.name)


def config_path(name: str) -> str:
    """The preset path of ``configs/experiments/<name>.yaml``."""
    from dip_lightning.presets import resolve_config

    path = resolve_config(f"experiments/{name}")
    if not Path(path).is_file():
        raise ConfigError(f"no experiment config experiments/{name}.yaml among the presets")
    return path


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's per-fit banners and the per-run 'wrote ...' lines."""
    names = ("lightning.pytorch", "lightning.fabric", "dip_lightning.callbacks", "dip_lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
        warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller")
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def skip_net_args(size: Size) -> list[str]:
    """Overrides that size the config's skip network (channels, levels, input depth)."""
    prefix = "--model.init_args.net.init_args"
    return [
        f"{prefix}.channels_down={size.channels}",
        f"{prefix}.channels_up={size.channels}",
        f"{prefix}.levels={size.levels}",
        f"--model.init_args.input_depth={size.input_depth}",
    ]


def run_fit(
    ctx: Context,
    config: str,
    label: str,
    overrides: Sequence[str],
    settings: dict[str, Any] | None = None,
    steps: int | None = None,
    fbc_every: int | None = None,
) -> RunResult:
    """One fit of ``configs/experiments/<config>.yaml`` with ``overrides``, into
    ``runs/<label>``, through the parser of ``dip fit``; returns its :class:`RunResult`.

    When the fit ends, its curves and metrics are recorded in ``runs/<label>/RECORD``; an
    experiment run again into the same folder reuses every run whose record holds the same
    arguments, so an interrupted experiment continues where it stopped (an unfinished run
    starts over).
    """
    from dip_lightning.cli import DIPCLI, user_error

    steps = steps or ctx.steps_for()
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(ctx.runs_dir),
            "name": "",
            "version": label,
            "default_hp_metric": False,
        },
    }
    args = [
        "--config",
        config_path(config),
        f"--trainer.max_steps={steps}",
        f"--trainer.log_every_n_steps={max(1, steps // 20)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger={json.dumps(logger)}",
        f"--model.init_args.image_every_n_steps={steps}",
        *overrides,
    ]
    run_dir = ctx.runs_dir / label
    record_path = run_dir / RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("args") == args:
            return _finish(ctx, label, settings, run_dir, record, 0.0, reused=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished or different run: start over
    start = time.perf_counter()
    with _quiet():
        try:
            cli = DIPCLI(args=args, run=False, parser_kwargs={"exit_on_error": False})
        except Exception as exc:
            error = user_error(exc)
            if error is None:  # a fault of the experiment's own arguments: keep the traceback
                raise
            raise ConfigError(f"{label}: {error}") from None
        trainer = cli.trainer
        recorder = Recorder()
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        callbacks.append(recorder)
        fbc = next((c for c in callbacks if isinstance(c, FBCLogger)), None)
        if fbc_every is not None and fbc is None:
            fbc = FBCLogger(every_n_steps=fbc_every)
            callbacks.append(fbc)
        elif fbc is not None and fbc_every is not None:
            fbc.every_n_steps = fbc_every
        trainer.fit(cli.model, datamodule=cli.datamodule)
    run_dir = Path(trainer.log_dir or run_dir)
    record = {
        "args": args,
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "curves": {key: values.tolist() for key, values in recorder.curves().items()},
        "fbc": None if fbc is None else fbc.state_dict(),
    }
    atomic_write_text(run_dir / RECORD, json.dumps(record))
    return _finish(ctx, label, settings, run_dir, record, time.perf_counter() - start)


def _finish(
    ctx: Context,
    label: str,
    settings: dict[str, Any] | None,
    run_dir: Path,
    record: dict[str, Any],
    seconds: float,
    reused: bool = False,
) -> RunResult:
    """The :class:`RunResult` of a recorded run, added to the context and logged."""
    curves = {key: np.asarray(values, dtype=np.float32) for key, values in record["curves"].items()}
    fbc: FBCLogger | None = None
    if record.get("fbc") is not None:
        fbc = FBCLogger()
        fbc.load_state_dict(record["fbc"])
    result = RunResult(label, dict(settings or {}), run_dir, record["metrics"], curves, fbc)
    ctx.results.append(result)
    if "psnr" in result.curves:
        best, at = result.peak()
        summary = f": peak {best:.2f} dB at step {at}, last {result.at_end('psnr'):.2f} dB"
    else:
        summary = f": MSE {result.at_end('mse_target'):.5f} at the last step"
    when = "(reused)" if reused else f"({seconds:.0f} s)"
    log.info("%s %s%s %s", ctx.name, label, summary, when)
    return result


# ---------------------------------------------------------------------------------- inputs


def load_rgb(path: Path) -> torch.Tensor:
    """``(3, H, W)`` float image in [0, 1] (gray images are expanded); a file that cannot be
    read raises :class:`~dip_lightning.errors.ImageError` with a one-line message."""
    from dip_lightning.data.io import load_image

    return load_image(path, grayscale=False).tensor


def save_rgb(image: torch.Tensor, path: Path) -> Path:
    """Write a ``(C, H, W)`` image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def center_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    """The centred ``min(side, H, W)`` square of ``image``.

    >>> center_crop(torch.zeros(3, 10, 7), 5).shape, center_crop(torch.zeros(3, 10, 7), 64).shape
    (torch.Size([3, 5, 5]), torch.Size([3, 7, 7]))
    """
    height, width = image.shape[-2:]
    s = min(side, height, width)
    top, left = (height - s) // 2, (width - s) // 2
    return image[..., top : top + s, left : left + s]


def prepared_image(ctx: Context) -> Path:
    """The experiment's image (``--image``, else the embedded sample), cropped to the size."""
    from dip_lightning.data.datamodule import sample_image_path

    source = ctx.image or sample_image_path()
    if not source.is_file():
        raise ConfigError(f"image not found: {source}")
    image = center_crop(load_rgb(source), ctx.size.image)
    return save_rgb(image, ctx.inputs_dir / f"{source.stem}.png")


# ---------------------------------------------------------------------------------- output


def _pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend; a one-line error when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "the experiments draw their plots with matplotlib, which is not installed; "
            "install the plots extra: pip install 'dip-lightning[plots]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys) as a CSV, floats with 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())
    return path


def save_figure(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)
    return path


def summary_row(result: RunResult) -> dict[str, Any]:
    """Final and peak PSNR of the restored image and of the raw output, from the curves."""
    peak, at = result.peak("psnr")
    peak_last, at_last = result.peak("psnr_last")
    return {
        "input_psnr": float(result.metrics.get("input_psnr", math.nan)),
        "psnr": result.at_end("psnr"),
        "peak_psnr": peak,
        "peak_step": at,
        "psnr_last": result.at_end("psnr_last"),
        "peak_psnr_last": peak_last,
        "peak_step_last": at_last,
        "parameters": int(result.metrics["parameters"]),
        "seconds": float(result.metrics["seconds"]),
    }


# ---------------------------------------------------------------------------------- 1. fitting


def fitting_targets(image: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The four targets of the fitting curves, from a natural ``(C, H, W)`` image in [0, 1]:
    the image, the image plus Gaussian noise of std 25/255 (clipped), its pixels shuffled
    (one permutation of the positions for all channels), and uniform noise.

    >>> targets = fitting_targets(torch.rand(3, 4, 5))
    >>> sorted(targets), targets["shuffled"].shape
    (['natural', 'noise', 'noisy', 'shuffled'], torch.Size([3, 4, 5]))
    """
    generator = stream_generator(seed, "observation")
    channels, height, width = image.shape
    noisy = (image + torch.randn(image.shape, generator=generator) * 25 / 255).clamp(0, 1)
    order = torch.randperm(height * width, generator=generator)
    shuffled = image.reshape(channels, -1)[:, order].reshape(image.shape)
    noise = torch.rand(image.shape, generator=generator)
    return {"natural": image, "noisy": noisy, "shuffled": shuffled, "noise": noise}


def fitting_curves(ctx: Context) -> list[Path]:
    image = load_rgb(prepared_image(ctx))
    curves: dict[str, np.ndarray] = {}
    for name, target in fitting_targets(image).items():
        path = save_rgb(target, ctx.inputs_dir / f"target_{name}.png")
        args = ["--data.image", str(path), *skip_net_args(ctx.size)]
        result = run_fit(ctx, "fitting_curves", name, args, {"target": name})
        curves[name] = result.curves["mse_target"]
    steps = np.arange(1, len(next(iter(curves.values()))) + 1)
    rows = [
        {"step": int(s), **{k: float(v[i]) for k, v in curves.items()}} for i, s in enumerate(steps)
    ]
    csv_path = write_csv(ctx.out / "fitting_curves.csv", rows)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = {
        "natural": "natural image",
        "noisy": "natural + noise",
        "shuffled": "shuffled pixels",
        "noise": "uniform noise",
    }
    for name, values in curves.items():
        axis.plot(steps, values, label=labels[name])
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("MSE against the fitting target")
    axis.set_title(f"Fitting curves ({image.shape[-1]}x{image.shape[-2]})")
    axis.grid(alpha=0.3)
    axis.legend()
    return [csv_path, save_figure(figure, ctx.out / "fitting_curves.png")]


# ---------------------------------------------------------------------------------- 2. spectral


SPECTRAL_VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "lipschitz_1.6": ["--model.init_args.net.init_args.lipschitz=1.6"],
    "gaussian_upsampling": ["--model.init_args.net.init_args.upsample_mode=gaussian"],
}


def spectral_bias(ctx: Context) -> list[Path]:
    image = prepared_image(ctx)
    steps = ctx.steps_for()
    every = max(1, steps // 50)
    results = []
    for name, extra in SPECTRAL_VARIANTS.items():
        args = ["--data.image", str(image), "--data.simulate=true"]
        args += [*skip_net_args(ctx.size), *extra]
        results.append(run_fit(ctx, "spectral_bias", name, args, {"variant": name}, None, every))
    rows = []
    for result in results:
        assert result.fbc is not None
        for i, step in enumerate(result.fbc.steps):
            row: dict[str, Any] = {"variant": result.label, "step": step}
            row["psnr"] = float(result.curves["psnr"][step - 1])
            row["psnr_last"] = float(result.curves["psnr_last"][step - 1])
            for reference, prefix in (("clean", "clean"), ("target", "target")):
                for k, value in enumerate(result.fbc.values[reference][i]):
                    row[f"{prefix}_band_{k}"] = float(value)
            rows.append(row)
    csv_path = write_csv(ctx.out / "spectral_bias.csv", rows)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(results) + 1, figsize=(4.2 * (len(results) + 1), 3.8))
    colours = plt.get_cmap("viridis")
    for axis, result in zip(axes, results, strict=False):
        assert result.fbc is not None
        values = np.array(result.fbc.values["clean"])
        for k in range(values.shape[1]):
            colour = colours(k / max(1, values.shape[1] - 1))
            axis.plot(result.fbc.steps, values[:, k], color=colour, label=f"band {k}")
        axis.set_xscale("log")
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("step")
        axis.set_ylabel("FBC (output vs clean)")
        axis.set_title(result.label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axis = axes[-1]
    for result in results:
        axis.plot(np.arange(1, steps + 1), result.curves["psnr"], label=result.label)
    axis.set_xscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("PSNR (dB)")
    axis.set_title("inpainting, 50% missing")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return [csv_path, save_figure(figure, ctx.out / "spectral_bias.png")]


# ---------------------------------------------------------------------------------- 3. ratios


def mask_ratio(ctx: Context) -> list[Path]:
    image = prepared_image(ctx)
    ratios = [0.1, 0.9] if ctx.size.name == "tiny" else [r / 10 for r in range(1, 10)]
    rows = []
    for ratio in ratios:
        args = ["--data.image", str(image), f"--data.missing_ratio={ratio}"]
        result = run_fit(ctx, "mask_ratio", f"missing_{ratio:.1f}", args + skip_net_args(ctx.size))
        rows.append({"missing_ratio": ratio, **summary_row(result)})
    csv_path = write_csv(ctx.out / "mask_ratio.csv", rows)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    x = [100 * r["missing_ratio"] for r in rows]
    axis.plot(x, [r["peak_psnr"] for r in rows], "o-", label="peak PSNR")
    axis.plot(x, [r["psnr"] for r in rows], "s-", label="PSNR at the last step")
    axis.plot(x, [r["input_psnr"] for r in rows], "^--", label="input (masked) PSNR")
    axis.set_xlabel("missing pixels (%)")
    axis.set_ylabel("PSNR (dB)")
    axis.set_title("Random-pixel inpainting")
    axis.grid(alpha=0.3)
    axis.legend()
    return [csv_path, save_figure(figure, ctx.out / "mask_ratio.png")]


# ---------------------------------------------------------------------------------- 4. skips


def skip_variants(size: Size, upsample_mode: str) -> dict[str, list[str]]:
    """Overrides of each architecture: skips everywhere, at levels 3 and 4 (1 = the top), none,
    and a U-Net of comparable width."""
    prefix = "--model.init_args.net.init_args"
    levels = size.levels
    only = [4 if level in (3, 4) else 0 for level in range(1, levels + 1)]
    unet = {
        "class_path": "dip_lightning.networks.UNet",
        "init_args": {
            "feature_scale": size.unet_feature_scale,
            "upsample_mode": upsample_mode,
            "padding": "reflection",
            "norm": "batch",
        },
    }
    return {
        "skip_all_levels": [*skip_net_args(size), f"{prefix}.channels_skip=4"],
        "skip_levels_3_4": [*skip_net_args(size), f"{prefix}.channels_skip={only}"],
        "no_skip": [*skip_net_args(size), f"{prefix}.channels_skip=0"],
        "unet": [
            f"--model.init_args.net={json.dumps(unet)}",
            f"--model.init_args.input_depth={size.input_depth}",
        ],
    }


def skip_ablation(ctx: Context) -> list[Path]:
    image = prepared_image(ctx)
    rows = []
    results: dict[str, list[RunResult]] = {}
    for task, upsample in (("inpaint", "nearest"), ("denoise", "bilinear")):
        for arch, args in skip_variants(ctx.size, upsample).items():
            result = run_fit(
                ctx,
                f"skip_ablation_{task}",
                f"{task}_{arch}",
                ["--data.image", str(image), "--data.simulate=true", *args],
                steps=ctx.steps_for("skip_ablation"),
            )
            results.setdefault(task, []).append(result)
            rows.append({"task": task, "architecture": arch, **summary_row(result)})
    csv_path = write_csv(ctx.out / "skip_ablation.csv", rows)
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (task, task_results) in zip(axes, results.items(), strict=True):
        for result in task_results:
            steps = np.arange(1, len(result.curves["psnr"]) + 1)
            label = result.label.removeprefix(f"{task}_")
            parameters = result.metrics["parameters"]
            axis.plot(steps, result.curves["psnr"], label=f"{label} ({parameters:,} params)")
        axis.set_xscale("log")
        axis.set_xlabel("step")
        axis.set_ylabel("PSNR (dB)")
        axis.set_title(
            {"inpaint": "inpainting, 50% missing", "denoise": "denoising, sigma 25"}[task]
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return [csv_path, save_figure(figure, ctx.out / "skip_ablation.png")]


# ---------------------------------------------------------------------------------- 5. sensitivity


#: Scale of a ``normal`` input with the standard deviation of the paper's U[0, 0.1] input.
NORMAL_SCALE_MATCHED = 0.1 / math.sqrt(12)


def sensitivity_grid(size: Size) -> dict[str, list[tuple[Any, list[str]]]]:
    """Each parameter's values and their overrides (the others stay at the config's values).

    The input types are compared at the standard deviation of the paper's uniform input
    (``normal`` at scale 0.1 / sqrt(12)); ``input_scale`` varies the uniform input's amplitude.
    """
    depth = size.input_depth
    depths = sorted({max(2, depth // 8), max(2, depth // 4), depth, 2 * depth})
    types: list[tuple[str, list[str]]] = [
        ("uniform", []),
        ("normal", [f"--model.init_args.input_scale={NORMAL_SCALE_MATCHED:.6g}"]),
        ("fourier", []),
        ("meshgrid", ["--model.init_args.input_depth=2"]),
    ]
    return {
        "lr": [(v, [f"--model.init_args.lr={v}"]) for v in (0.001, 0.003, 0.01, 0.03)],
        "input_depth": [(v, [f"--model.init_args.input_depth={v}"]) for v in depths],
        "sigma_p": [(v, [f"--model.init_args.sigma_p={v}"]) for v in (0.0, 1 / 60, 1 / 30, 0.1)],
        "input_type": [(v, [f"--model.init_args.input_type={v}", *a]) for v, a in types],
        "input_scale": [(v, [f"--model.init_args.input_scale={v}"]) for v in (0.03, 0.1, 0.3)],
    }


def sensitivity(ctx: Context) -> list[Path]:
    """One setting varied at a time, each fitted with ``ctx.seeds`` seeds (model.seed 0, 1,
    ...); the plot shows the mean over the seeds and, with more than one, their range."""
    image = prepared_image(ctx)
    rows = []
    grid = sensitivity_grid(ctx.size)
    if ctx.size.name == "tiny":  # a smoke test: both ends of each range
        grid = {key: [values[0], values[-1]] for key, values in grid.items()}
    for parameter, values in grid.items():
        for value, extra in values:
            name = f"{value:.4g}" if isinstance(value, float) else str(value)
            for seed in range(ctx.seeds):
                label = f"{parameter}_{name}" + (f"_seed{seed}" if seed else "")
                seed_args = [f"--model.init_args.seed={seed}"] if seed else []
                args = ["--data.image", str(image), "--data.simulate=true"]
                args += [*skip_net_args(ctx.size), *extra, *seed_args]
                result = run_fit(ctx, "sensitivity", label, args)
                rows.append(
                    {"parameter": parameter, "value": value, "seed": seed, **summary_row(result)}
                )
    csv_path = write_csv(ctx.out / "sensitivity.csv", rows)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(grid), figsize=(4 * len(grid), 3.8))
    for axis, parameter in zip(axes, grid, strict=True):
        values = [value for value, _ in grid[parameter]]
        x = np.arange(len(values))
        for key, style, label in (
            ("peak_psnr", "o-", "peak PSNR"),
            ("psnr", "s-", "PSNR at the last step"),
        ):
            per_value = [
                np.array([r[key] for r in rows if r["parameter"] == parameter and r["value"] == v])
                for v in values
            ]
            means = np.array([p.mean() for p in per_value])
            if ctx.seeds > 1:
                spread = np.array(
                    [[means[i] - p.min(), p.max() - means[i]] for i, p in enumerate(per_value)]
                ).T
                axis.errorbar(x, means, yerr=spread, fmt=style, capsize=3, label=label)
            else:
                axis.plot(x, means, style, label=label)
        names = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in values]
        axis.set_xticks(x, names)
        axis.set_xlabel(parameter)
        axis.set_ylabel("PSNR (dB)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = f", mean of {ctx.seeds} seeds (bars: their range)" if ctx.seeds > 1 else ""
    figure.suptitle(f"Denoising (sigma 25): one setting varied at a time{seeds}")
    return [csv_path, save_figure(figure, ctx.out / "sensitivity.png")]


# ---------------------------------------------------------------------------------- 6. feedback

FEEDBACK_VARIANTS: tuple[str, ...] = ("none", "observed_ssim", "temporal_ssim", "edge")


def feedback_images(ctx: Context) -> list[Path]:
    """The images of the feedback experiment: ``--images`` (a folder or one file), else the
    CBM3D set of the shared data; the first ``feedback_images`` of the size, sorted by name."""
    source = ctx.images or CBM3D
    if source.is_file():
        paths = [source]
    elif source.is_dir():
        suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes)
    else:
        raise ConfigError(
            f"no images at {source}; give --images DIR (the CBM3D set, e.g. "
            "../shared/data/denoising-cbm3d) or set DIP_SHARED"
        )
    if not paths:
        raise ConfigError(f"no images in {source}")
    return paths[: ctx.size.feedback_images]


def structural_feedback(ctx: Context) -> list[Path]:
    steps = ctx.steps_for()
    weight = ctx.feedback_weight
    prefix = "--model.init_args.net.init_args"
    levels = min(ctx.size.levels, 4)
    net = [
        f"{prefix}.channels_down={ctx.size.channels}",
        f"{prefix}.channels_up={ctx.size.channels}",
        f"{prefix}.levels={levels}",
        f"--model.init_args.input_depth={ctx.size.input_depth}",
    ]
    rows = []
    results: dict[str, list[RunResult]] = {}
    for path in feedback_images(ctx):
        crop = center_crop(load_rgb(path), ctx.size.feedback_image)
        image = save_rgb(crop, ctx.inputs_dir / f"{path.stem}.png")
        for variant in FEEDBACK_VARIANTS:
            if variant == "none":
                feedback = "--model.init_args.feedback=null"
            else:
                spec = {
                    "class_path": "dip_lightning.losses.StructuralFeedback",
                    "init_args": {
                        "similarity": variant,
                        "weight": weight,
                        "warmup_steps": max(1, steps // 10),
                    },
                }
                feedback = f"--model.init_args.feedback={json.dumps(spec)}"
            args = ["--data.image", str(image), "--data.simulate=true", *net, feedback]
            result = run_fit(ctx, "structural_feedback", f"{path.stem}_{variant}", args)
            results.setdefault(variant, []).append(result)
            rows.append(
                {"image": path.stem, "feedback": variant, "weight": weight, **summary_row(result)}
            )
    csv_path = write_csv(ctx.out / "structural_feedback.csv", rows)
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    keys = [("peak_psnr", "peak PSNR"), ("psnr", f"PSNR at step {steps} (output average)")]
    images = list(dict.fromkeys(r["image"] for r in rows))
    width = 0.8 / len(FEEDBACK_VARIANTS)
    for axis, (key, title) in zip(axes[:2], keys, strict=True):
        for j, variant in enumerate(FEEDBACK_VARIANTS):
            mine = {r["image"]: r[key] for r in rows if r["feedback"] == variant}
            x = np.arange(len(images) + 1) + (j - (len(FEEDBACK_VARIANTS) - 1) / 2) * width
            values = [mine[i] for i in images]
            axis.bar(x, [*values, float(np.mean(values))], width, label=variant)
        axis.set_xticks(np.arange(len(images) + 1), [*images, "mean"], rotation=45, ha="right")
        low = min(r[key] for r in rows)
        axis.set_ylim(low - 1, None)
        axis.set_ylabel("PSNR (dB)")
        axis.set_title(title)
        axis.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    axis = axes[2]
    means = {v: np.mean([r.curves["psnr"] for r in results[v]], axis=0) for v in FEEDBACK_VARIANTS}
    for variant, mean in means.items():
        axis.plot(np.arange(1, len(mean) + 1), mean, label=variant)
    top = max(float(m.max()) for m in means.values())
    axis.set_ylim(max(min(float(m.min()) for m in means.values()), top - 6), top + 0.5)
    axis.set_xlabel("step")
    axis.set_ylabel("mean PSNR (dB)")
    axis.set_title(f"mean over {len(images)} images, lambda {weight}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return [csv_path, save_figure(figure, ctx.out / "structural_feedback.png")]


# ---------------------------------------------------------------------------------- the command

#: Experiments by name: the function and a one-line description.
EXPERIMENTS: dict[str, tuple[Callable[[Context], list[Path]], str]] = {
    "fitting_curves": (fitting_curves, "MSE vs steps: natural, noisy, shuffled, noise"),
    "spectral_bias": (spectral_bias, "inpainting: FBC per band and PSNR, with the controls"),
    "mask_ratio": (mask_ratio, "random-pixel inpainting from 10% to 90% missing"),
    "skip_ablation": (skip_ablation, "skips everywhere / levels 3-4 / none / UNet"),
    "sensitivity": (sensitivity, "lr, input depth, sigma_p, input type"),
    "structural_feedback": (structural_feedback, "denoising with and without each s_t"),
}


def run_experiment(
    name: str,
    out: str | Path | None = None,
    size: str = "cpu",
    image: str | Path | None = None,
    images: str | Path | None = None,
    steps: int | None = None,
    feedback_weight: float = 0.01,
    seeds: int = 1,
) -> list[Path]:
    """Run experiment ``name`` and return the files it wrote (its CSV first, then the PNGs)."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    _pyplot()  # fail before any fit when matplotlib is missing
    ctx = Context(
        name=name,
        size=SIZES[size],
        out=Path(out or Path("experiments") / name),
        image=Path(image) if image else None,
        images=Path(images) if images else None,
        steps=steps,
        feedback_weight=feedback_weight,
        seeds=seeds,
    )
    ctx.out.mkdir(parents=True, exist_ok=True)
    function, _ = EXPERIMENTS[name]
    start = time.perf_counter()
    written = function(ctx)
    log.info(
        "%s: %d runs in %.0f s; wrote %s",
        name,
        len(ctx.results),
        time.perf_counter() - start,
        ", ".join(str(p) for p in written),
    )
    return written


def parser() -> Any:
    """The jsonargparse parser of ``dip experiment``."""
    from jsonargparse import ArgumentParser

    described = "; ".join(f"{n}: {d}" for n, (_, d) in EXPERIMENTS.items())
    parser = ArgumentParser(
        prog="dip experiment",
        description="Run a seed experiment: its fits, a CSV and PNG plots.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("name", type=str, help=f"The experiment. {described}.")
    parser.add_argument("--out", type=str | None, default=None, help="Output folder.")
    parser.add_argument(
        "--size",
        type=str,
        default="cpu",
        help="tiny (a smoke test), cpu (<= 15 min on a 2-core CPU, the default) or gpu.",
    )
    parser.add_argument("--image", type=str | None, default=None, help="The image to use.")
    parser.add_argument(
        "--images",
        type=str | None,
        default=None,
        help="structural_feedback: a folder of images (default: the shared CBM3D set).",
    )
    parser.add_argument("--steps", type=int | None, default=None, help="Steps of every fit.")
    parser.add_argument(
        "--feedback_weight",
        "--feedback-weight",
        type=float,
        default=0.01,
        help="structural_feedback: lambda of the feedback term (warmed up over 10% of the steps).",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="sensitivity: fits per setting, with model seeds 0, 1, ... (the plot shows the "
        "mean and the range).",
    )
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """``dip experiment NAME ...`` and ``python -m dip_lightning.experiments NAME ...``."""
    import argparse

    from dip_lightning.cli import tidy_parser_message

    argv = list(sys.argv[1:] if args is None else args)
    try:
        parsed = parser().parse_args(argv)
    except argparse.ArgumentError as exc:
        raise ConfigError(tidy_parser_message(str(exc))) from None
    try:
        run_experiment(
            parsed.name,
            out=parsed.out,
            size=parsed.size,
            image=parsed.image,
            images=parsed.images,
            steps=parsed.steps,
            feedback_weight=parsed.feedback_weight,
            seeds=parsed.seeds,
        )
    except OSError as exc:
        given = [parsed.out or Path("experiments") / parsed.name, parsed.image, parsed.images]
        if not _names_a_user_path(exc, [Path(p) for p in given if p]):
            raise
        action = "write" if exc.filename and _is_under(exc.filename, given[0]) else "read"
        raise ConfigError(
            f"cannot {action} {exc.filename}: {exc.strerror or one_line(exc)}; check the path"
        ) from None


def _is_under(name: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    path, root = Path(os.path.abspath(name)), Path(os.path.abspath(folder))
    return path == root or root in path.parents


def _names_a_user_path(exc: OSError, paths: Sequence[Path]) -> bool:
    """Whether ``exc`` is about one of the paths the user gave (or a file beneath one, or a
    folder above one that had to be created): the user's to fix, not a fault of the code."""
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    return any(_is_under(name, path) or _is_under(path, name) for name in names for path in paths)


if __name__ == "__main__":  # pragma: no cover
    from dip_lightning.cli import _configure_logging

    _configure_logging()
    try:
        main()
    except DIPError as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None
