"""``dip restore``: restore images with no clean reference, stopping by itself.

    dip restore photo.jpg -o clean.png                          # denoise
    dip restore scan.png --task inpaint --mask holes.png -o filled.png
    dip restore small.png --task super-resolution --scale 4 -o big.png
    dip restore noflash.jpg --task flash --flash flash.jpg -o out.png
    dip restore photos/ -o restored/                            # every image of a folder

Each input is one fit of ``dip fit`` built from a preset (``--preset fast``: sized for a CPU;
``paper``: the paper's settings) with a stopping criterion that needs no ground truth: by default
the error on 5% of the observed pixels left out of the fit (see
:mod:`dip_lightning.callbacks.stopping`). The image of the step the criterion selects is written,
atomically, with the input's size (times ``--scale``), mode and bit depth. With several inputs, an
input that fails gets its one error line and the others are still restored; the exit status is
then 2. ``--batch-size K`` fits up to ``K`` inputs of one size at once as one grouped network
(:class:`~dip_lightning.tasks.batched.BatchedDIP`), each stopping by itself.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from dip_lightning.data.io import SUPPORTED_SUFFIXES
from dip_lightning.errors import ConfigError
from dip_lightning.io_utils import atomic_write_json
from dip_lightning.presets import list_presets

__all__ = ["RESTORE_PRESETS", "main", "restore_parser"]

log = logging.getLogger("dip_lightning")

Task = Literal["denoise", "jpeg", "inpaint", "super-resolution", "flash"]
Criterion = Literal["auto", "heldout", "variance", "ema-variance"]

#: The fit config of each task and preset (names of built-in presets, see ``dip presets``).
RESTORE_PRESETS: dict[str, dict[str, str]] = {
    "fast": {
        "denoise": "restore/denoise",
        "jpeg": "restore/jpeg",
        "inpaint": "restore/inpaint",
        "super-resolution": "restore/super_resolution",
        "flash": "restore/flash",
    },
    "paper": {
        "denoise": "paper/denoise",
        "jpeg": "paper/jpeg_snail",
        "inpaint": "paper/inpaint_kate",
        "super-resolution": "paper/sr_zebra_x4",
        "flash": "paper/flash_cave",
    },
}

#: ``--patience`` of the held-out criterion when none is given, per task: where the observation
#: is noisy (denoising, JPEG, the no-flash image) the held-out error turns up soon after its
#: minimum, while inpainting and super-resolution keep improving slowly for long and a short
#: patience would stop them on a plateau.
HELDOUT_PATIENCE: dict[str, int] = {
    "denoise": 200,
    "jpeg": 200,
    "flash": 200,
    "inpaint": 1000,
    "super-resolution": 1000,
}


#: ``--criterion auto``: the held-out error, except for inpainting, where it selected steps far
#: too early on textured images (its 5% of the observed pixels say little about the missing
#: ones) while the variance of the outputs, with no noise to fit, waits for the fit to settle.
DEFAULT_CRITERION: dict[str, str] = {"inpaint": "variance"}


def default_criterion(task: str) -> str:
    """The criterion ``--criterion auto`` picks for ``task``."""
    return DEFAULT_CRITERION.get(task, "heldout")


def default_patience(task: str, criterion: str) -> int | None:
    """The patience ``dip restore`` gives ``criterion`` for ``task`` (``None``: the criterion's
    own default)."""
    return HELDOUT_PATIENCE.get(task) if criterion == "heldout" else None


_CRITERIA = {
    "heldout": "dip_lightning.callbacks.HeldoutStopping",
    "variance": "dip_lightning.callbacks.WindowedVariance",
    "ema-variance": "dip_lightning.callbacks.ExponentialVariance",
}


def restore_parser() -> ArgumentParser:
    """The jsonargparse parser of ``dip restore`` (errors raise instead of exiting)."""
    from dip_lightning.cli import add_option

    parser = ArgumentParser(
        prog="dip restore",
        description="Restore images with Deep Image Prior, stopping without ground truth.",
        exit_on_error=False,
        default_env=False,
    )

    def option(name: str, **kwargs: Any) -> None:
        add_option(parser, name, **kwargs)

    parser.add_argument("--config", action=ActionConfigFile, help="Options from a YAML file.")
    parser.add_argument(
        "inputs", nargs="+", type=str, help="Images to restore, or folders of images."
    )
    parser.add_argument(
        "-o",
        "--output",
        type=str,
        required=True,
        help="The restored image (one input), or a folder that receives <input name>.png for "
        "each input (several inputs, a folder, or a path ending in /).",
    )
    option("task", type=Task, default="denoise", help="What to undo.")
    option("mask", type=str | None, default=None, help="inpaint: mask file (white = known).")
    option("scale", type=int, default=4, help="super-resolution: factor (2, 4 or 8).")
    option("flash", type=str | None, default=None, help="flash: the flash image (the guide).")
    option(
        "preset",
        type=Literal["fast", "paper"],
        default="fast",
        help="fast: a network and settings sized for a CPU; paper: the paper's settings.",
    )
    option(
        "criterion",
        type=Criterion,
        default="auto",
        help="heldout: error on 5%% of the observed pixels left out of the fit; variance: "
        "windowed moving variance of the outputs; ema-variance: its exponential variant; "
        "auto: variance for inpaint, heldout for the other tasks.",
    )
    option(
        "patience",
        type=int | None,
        default=None,
        help="Steps without a better criterion before stopping (default: heldout 200 for "
        "denoise, jpeg and flash, 1000 for inpaint and super-resolution; variance and "
        "ema-variance 1000).",
    )
    option("device", type=Literal["auto", "cpu", "cuda"], default="auto")
    option(
        "precision",
        type=str | None,
        default=None,
        help="Trainer precision (32-true, bf16-mixed, 16-mixed); default: the preset's.",
    )
    option("max_steps", type=int | None, default=None, help="At most this many steps.")
    option("seed", type=int, default=0, help="Seed of the network, its input and the hold-out.")
    option(
        "clean",
        type=str | None,
        default=None,
        help="A clean reference, only to report PSNR/SSIM (one input).",
    )
    option(
        "metrics",
        type=str | None,
        default=None,
        help="Write metrics.json here (several inputs: an object keyed by input).",
    )
    option(
        "logdir",
        type=str | None,
        default=None,
        help="Keep each fit's TensorBoard run and checkpoint under this folder.",
    )
    option(
        "batch_size",
        type=int,
        default=1,
        help="Fit up to this many inputs of one size at once, as one grouped network (faster "
        "on a GPU for small images; on a CPU one at a time is as fast).",
    )
    option("resume", type=str | None, default=None, help="Continue from this checkpoint.")
    option("overwrite", action=ActionYesNo, default=False, help="Replace existing outputs.")
    option(
        "quiet",
        action=ActionYesNo,
        default=False,
        help="No progress bar; warnings and errors only.",
    )
    return parser


@dataclass
class Job:
    """One input and where its result goes."""

    input: Path
    output: Path


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
    )


def plan(inputs: list[str], output: str) -> list[Job]:
    """The jobs for ``inputs`` (files or folders) and ``output``; folders are expanded."""
    paths: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = _images_in(path)
            if not found:
                raise ConfigError(f"{path} holds no image ({', '.join(SUPPORTED_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(path)
    target = Path(output)
    to_folder = (
        len(paths) > 1
        or any(Path(name).is_dir() for name in inputs)
        or output.endswith(("/", "\\"))
        or target.is_dir()
    )
    if not to_folder:
        if target.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise ConfigError(
                f"cannot write {target}: unsupported extension {target.suffix or '(none)'!r}; "
                f"use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
            )
        return [Job(paths[0], target)]
    stems = [p.stem for p in paths]
    jobs = []
    for path in paths:
        name = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix[1:]}"
        jobs.append(Job(path, target / f"{name}.png"))
    return jobs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output(job: Job, inputs: list[Path], overwrite: bool) -> None:
    """Refuse to write over an input, or over an existing file without ``overwrite``."""
    for path in inputs:
        if _same_file(job.output, path):
            raise ConfigError(f"the output {job.output} is an input; choose another output path")
    if job.output.is_dir():
        raise ConfigError(f"the output {job.output} is a folder; give a file name")
    if job.output.exists() and not overwrite:
        raise ConfigError(f"{job.output} exists; pass --overwrite to replace it")


def fit_arguments(cfg: Namespace, job: Job, run_dir: Path) -> list[str]:
    """The ``dip fit`` arguments of one job."""
    presets = list_presets()
    preset = RESTORE_PRESETS[cfg.preset][cfg.task]
    if preset not in presets:
        raise ConfigError(f"the built-in preset {preset} is missing; reinstall dip-lightning")
    criterion = _CRITERIA[cfg.criterion]
    args = [
        "--config",
        str(presets[preset]),
        f"--data.image={job.input}",
        "--data.simulate=false",
        "--data.noise_sigma=0",
        "--data.missing_ratio=0",
        "--data.jpeg_quality=null",
        "--data.scale=1",
        "--data.mask=null",
        "--data.guide=null",
        f"--data.seed={cfg.seed}",
        f"--model.seed={cfg.seed}",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.callbacks+={criterion}",
    ]
    patience = (
        cfg.patience if cfg.patience is not None else default_patience(cfg.task, cfg.criterion)
    )
    if patience is not None:
        args.append(f"--trainer.callbacks.patience={patience}")
    if cfg.criterion == "heldout":
        args.append("--model.init_args.holdout_fraction=0.05")
    if cfg.clean:
        args.append(f"--data.clean={cfg.clean}")
    if cfg.task == "inpaint":
        if not cfg.mask:
            raise ConfigError("--task inpaint needs --mask (white = known pixel)")
        args.append(f"--data.mask={cfg.mask}")
    elif cfg.mask:
        raise ConfigError(f"--mask is for --task inpaint, not {cfg.task}")
    if cfg.task == "super-resolution":
        args.append(f"--data.scale={cfg.scale}")
    if cfg.task == "flash":
        if not cfg.flash:
            raise ConfigError("--task flash needs --flash (the flash image of the same scene)")
        args.append(f"--data.guide={cfg.flash}")
    elif cfg.flash:
        raise ConfigError(f"--flash is for --task flash, not {cfg.task}")
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[cfg.device]
    args += [f"--trainer.accelerator={accelerator}", "--trainer.devices=1"]
    if cfg.precision:
        args.append(f"--trainer.precision={cfg.precision}")
    if cfg.max_steps is not None:
        if cfg.max_steps < 1:
            raise ConfigError(f"--max-steps {cfg.max_steps} is out of range; use >= 1")
        args.append(f"--trainer.max_steps={cfg.max_steps}")
    if cfg.logdir:
        args += [
            "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
            f"--trainer.logger.save_dir={cfg.logdir}",
            f"--trainer.logger.name={job.input.stem}",
            "--trainer.logger.default_hp_metric=false",
        ]
    else:
        args.append("--trainer.logger=false")
    if cfg.quiet:
        args += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    return args


def restore_batch(cfg: Namespace, jobs: list[Job], inputs: list[Path]) -> list[dict[str, Any]]:
    """Restore each of ``jobs`` into its output, in one fit (a batched one for several jobs);
    their metrics. Raises :class:`DIPError`."""
    import json

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dip_lightning.cli import DIPCLI
    from dip_lightning.tasks.batched import batch_names

    for job in jobs:
        check_output(job, inputs, cfg.overwrite)
        if not job.input.exists():
            raise ConfigError(f"cannot read image: {job.input}: no such file")
    scratch = cfg.logdir is None
    run_dir = Path(tempfile.mkdtemp(prefix="dip-restore-")) if scratch else Path(cfg.logdir)
    args = fit_arguments(cfg, jobs[0], run_dir)
    folders = [""]
    if len(jobs) > 1:
        images = [str(job.input) for job in jobs]
        args.append(f"--batch.images={json.dumps(images)}")
        folders = batch_names(images, 1)
    keep = False
    try:
        cli = DIPCLI(args=args, run=False)
        trainer = cli.trainer
        directory = Path(trainer.log_dir or trainer.default_root_dir)
        try:
            trainer.fit(cli.model, cli.datamodule, ckpt_path=cfg.resume)
        except (KeyboardInterrupt, SIGTERMException):
            keep = True
            for job, folder in zip(jobs, folders, strict=True):
                partial = directory / folder / "restored.png"
                if partial.exists():
                    job.output.parent.mkdir(parents=True, exist_ok=True)
                    _copy_atomically(partial, job.output)
                    log.warning("interrupted: wrote the best output so far to %s", job.output)
            log.warning(
                "continue with the same command and --resume %s",
                directory / "checkpoints" / "last.ckpt",
            )
            raise
        results = []
        for job, folder in zip(jobs, folders, strict=True):
            metrics = json.loads((directory / folder / "metrics.json").read_text())
            job.output.parent.mkdir(parents=True, exist_ok=True)
            _copy_atomically(directory / folder / "restored.png", job.output)
            metrics.update(input=str(job.input), output=str(job.output))
            if len(jobs) > 1:
                metrics["batch"] = len(jobs)
            log.info(
                "%s -> %s (step %s of %s%s)",
                job.input,
                job.output,
                metrics.get("selected_step"),
                metrics.get("steps"),
                f", psnr {metrics['psnr']:.2f} dB" if "psnr" in metrics else "",
            )
            results.append(metrics)
        return results
    finally:
        if scratch and not keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """``jobs`` in batches of at most ``size`` inputs of one size and mode (in input order
    within each size; an input that cannot be read is a batch of its own, to fail alone)."""
    if size == 1:
        return [[job] for job in jobs]
    from PIL import Image

    groups: dict[Any, list[list[Job]]] = {}
    order: list[list[Job]] = []
    for index, job in enumerate(jobs):
        try:
            with Image.open(job.input) as image:
                key: Any = (image.size, image.mode)
        except (OSError, ValueError):
            key = ("unreadable", index)
        runs = groups.setdefault(key, [])
        if not runs or len(runs[-1]) >= size:
            runs.append([])
            order.append(runs[-1])
        runs[-1].append(job)
    return order


def _copy_atomically(source: Path, target: Path) -> None:
    """Write ``source``'s image to ``target`` in ``target``'s format, atomically."""
    from dip_lightning.data.io import load_image, save_image

    if source.suffix.lower() == target.suffix.lower():
        from dip_lightning.io_utils import atomic_write_bytes

        atomic_write_bytes(target, source.read_bytes())
        return
    loaded = load_image(source, what="image")
    save_image(loaded.tensor, target, like=loaded.info, alpha=loaded.alpha)


def parse(argv: list[str]) -> Namespace:
    """Parse ``dip restore`` arguments; a one-line :class:`ConfigError` for a mistake."""
    from dip_lightning.cli import tidy_parser_message

    parser = restore_parser()
    try:
        cfg = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{tidy_parser_message(str(exc))} (see dip restore --help)") from None
    except (UnicodeDecodeError, ValueError, TypeError) as exc:  # a --config that is not YAML
        raise ConfigError(f"cannot read the options: {exc}; give a YAML file to --config") from None
    if cfg.task != "super-resolution" and "--scale" in " ".join(argv):
        raise ConfigError(f"--scale is for --task super-resolution, not {cfg.task}")
    if cfg.clean and len(cfg.inputs) > 1:
        raise ConfigError("--clean is a reference for one input; give one input with it")
    if cfg.patience is not None and cfg.patience < 1:
        raise ConfigError(f"--patience {cfg.patience} is out of range; use >= 1")
    if cfg.criterion == "auto":
        cfg.criterion = default_criterion(cfg.task)
    return cfg


def main(argv: list[str] | None = None) -> None:
    """``dip restore``: called by :func:`dip_lightning.cli.main` with the arguments after
    ``restore``."""
    args = list(sys.argv[2:] if argv is None else argv)
    cfg = parse(args)
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    if cfg.quiet:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        _restore_all(cfg)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


_QUIET_LOGGERS = ("dip_lightning", "lightning.pytorch")


def _restore_all(cfg: Namespace) -> None:
    from dip_lightning.cli import user_error

    jobs = plan(cfg.inputs, cfg.output)
    if cfg.resume and len(jobs) > 1:
        raise ConfigError("--resume continues one fit; give the one input it belongs to")
    inputs = [job.input for job in jobs]
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} is out of range; use >= 1")
    if cfg.resume and cfg.batch_size > 1:
        raise ConfigError("--resume continues one fit; leave out --batch-size")
    results: dict[str, dict[str, Any]] = {}
    failed = 0
    for batch in batches(jobs, cfg.batch_size):
        names = ", ".join(str(job.input) for job in batch)
        try:
            for job, metrics in zip(batch, restore_batch(cfg, batch, inputs), strict=True):
                results[str(job.input)] = metrics
        except Exception as exc:
            error = user_error(exc)
            if error is None or len(jobs) == 1:
                raise
            sys.stderr.write(f"error: {names}: {error}\n")
            failed += len(batch)
        except SystemExit as exc:  # a parser error of the fit, already printed
            if len(jobs) == 1 or exc.code in (0, None):
                raise
            failed += len(batch)
    if cfg.metrics and results:
        single = len(jobs) == 1
        atomic_write_json(cfg.metrics, next(iter(results.values())) if single else results)
    if failed:
        sys.stderr.write(f"error: {failed} of {len(jobs)} inputs failed\n")
        raise SystemExit(2)
