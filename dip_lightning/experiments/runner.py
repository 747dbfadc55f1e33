"""The runner of the seed experiments: sizes, the fits, their records, CSV and plot helpers.

An experiment is a module of :mod:`dip_lightning.experiments` that defines ``EXPERIMENT``, an
:class:`Experiment`; :func:`discover` finds them all, and :func:`run_experiment` (``dip
experiment NAME``) runs one in a :class:`Context`. Its fits go through :func:`run_fit`, which
records each finished run so that a rerun into the same folder reuses it.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib
import io
import json
import logging
import math
import os
import pkgutil
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
from dip_lightning.errors import ConfigError, one_line
from dip_lightning.io_utils import atomic_write_text

log = logging.getLogger("dip_lightning.experiments")

#: Shared reference data: ``$DIP_SHARED/data`` (default: ``../shared`` beside a source checkout).
SHARED = Path(os.environ.get("DIP_SHARED", Path(__file__).resolve().parents[3] / "shared"))

#: The record of a finished run in its run directory (args, metrics, curves, FBC).
RECORD = "experiment_run.json"

#: The package whose modules are the experiments.
PACKAGE = "dip_lightning.experiments"


# ---------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    """How big the runs of an experiment are (the steps are the experiment's own:
    :attr:`Experiment.steps`)."""

    name: str
    image: int  # side of the (centre-cropped) square image
    channels: int  # channels_down = channels_up of the skip network
    levels: int
    input_depth: int
    unet_feature_scale: int
    feedback_image: int  # side of the CBM3D crops
    feedback_images: int  # how many CBM3D images


SIZES: dict[str, Size] = {
    "tiny": Size(
        "tiny",
        image=32,
        channels=8,
        levels=3,
        input_depth=4,
        unet_feature_scale=16,
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
        feedback_image=512,
        feedback_images=9,
    ),
}


# ---------------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Experiment:
    """A seed experiment, defined as ``EXPERIMENT`` by the module of its ``name`` in
    :mod:`dip_lightning.experiments`; its fits use ``configs/experiments/<name>*.yaml``."""

    name: str
    description: str  # one line, shown by ``dip experiment --help``
    run: Callable[[Context], list[Path]]  # the fits; returns the CSV, then the plots
    steps: dict[str, int]  # steps of every fit at each size of :data:`SIZES`
    order: int = 100  # position among the experiments (``--help``, :data:`EXPERIMENTS`)


@functools.cache
def discover() -> dict[str, Experiment]:
    """Every experiment by name, in their ``order``: the ``EXPERIMENT`` of each module of
    :mod:`dip_lightning.experiments` (a module without one is a helper, not an experiment).

    >>> list(discover())[:2]
    ['fitting_curves', 'spectral_bias']
    """
    package = importlib.import_module(PACKAGE)
    found: list[Experiment] = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "runner":
            continue
        experiment = getattr(importlib.import_module(f"{PACKAGE}.{info.name}"), "EXPERIMENT", None)
        if experiment is None:
            continue
        if not isinstance(experiment, Experiment) or experiment.name != info.name:
            raise TypeError(
                f"{PACKAGE}.{info.name}.EXPERIMENT must be an Experiment named {info.name!r}"
            )
        missing = set(SIZES) - set(experiment.steps)
        if missing:
            raise TypeError(f"experiment {info.name} gives no steps for {sorted(missing)}")
        found.append(experiment)
    return {e.name: e for e in sorted(found, key=lambda e: (e.order, e.name))}


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
        from dip_lightning.metrics.psnr import psnr

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
        """``--steps`` when given, else the steps of the experiment at this size."""
        return self.steps or discover()[experiment or self.name].steps[self.size.name]


def config_path(name: str) -> str:
    """The preset path of ``configs/experiments/<name>.yaml``."""
    from dip_lightning.presets import resolve_config

    path = resolve_config(f"experiments/{name}")
    if not Path(path).is_file():
        raise ConfigError(f"no experiment config experiments/{name}.yaml among the presets")
    return path


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


def pyplot() -> Any:
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
    """Write ``rows`` (dicts with the same keys) as a CSV, floats with 6 significant digits.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     print(write_csv(Path(folder) / "a.csv", [{"x": 1, "y": 1 / 3}]).read_text(), end="")
    x,y
    1,0.333333
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())
    return path


def save_figure(figure: Any, path: Path) -> Path:
    """Lay out ``figure``, write it as a PNG at 120 dpi and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)
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


# ---------------------------------------------------------------------------------- the command


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
    experiments = discover()
    if name not in experiments:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(experiments)}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    pyplot()  # fail before any fit when matplotlib is missing
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
    start = time.perf_counter()
    written = experiments[name].run(ctx)
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

    described = "; ".join(f"{e.name}: {e.description}" for e in discover().values())
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
