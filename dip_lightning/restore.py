"""``dip restore``: restore images with no clean reference, stopping by itself.

    dip restore photo.jpg -o clean.png                          # denoise
    dip restore scan.png --task inpaint --mask holes.png -o filled.png
    dip restore small.png --task super-resolution --scale 4 -o big.png
    dip restore noflash.jpg --task flash --flash flash.jpg -o out.png
    dip restore photos/ -o restored/                            # every image of a folder
    dip restore photos/ -o restored/ --workers 2                # two fits at a time

Each input is one fit of ``dip fit`` built from a preset (``--preset fast``: sized for a CPU;
``paper``: the paper's settings) with a stopping criterion that needs no ground truth: by default
the error on 5% of the observed pixels left out of the fit (see
:mod:`dip_lightning.callbacks.stopping`). The image of the step the criterion selects is written,
atomically, with the input's size (times ``--scale``), mode and bit depth. With several inputs, an
input that fails gets its one error line and the others are still restored; the exit status is
then 2. ``--batch-size K`` fits up to ``K`` inputs of one size at once as one grouped network
(:class:`~dip_lightning.tasks.batched.BatchedDIP`), each stopping by itself.

An output that exists and is complete (an image of the size its input restores to) is skipped
and counted in the summary line; ``--overwrite`` restores it again. With an output folder, the
folder is resumable: ``--workers N`` worker processes and the ranks of torchrun or SLURM share
the inputs, each input is claimed by one process at a time, and ``manifest.json`` lists each
input with its status (see :mod:`dip_lightning.restore_parallel`).

It prints a progress bar that counts towards the step where the criterion will stop
(:class:`~dip_lightning.callbacks.progress.StoppingProgressBar`), one line per output, and a
one-line warning when ``--max-steps`` ended a fit before its criterion stopped it; Lightning's
own output only with ``--verbose``. Without ``--logdir`` each fit runs in a temporary folder that
is removed, whether it succeeds or fails. :func:`restore_image` is the same from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonargparse import (
    ActionConfigFile,
    ActionYesNo,
    ArgumentParser,
    DefaultHelpFormatter,
    Namespace,
)

from dip_lightning.data.io import SUPPORTED_SUFFIXES, not_found
from dip_lightning.errors import ConfigError
from dip_lightning.io_utils import atomic_write_json
from dip_lightning.presets import list_presets

__all__ = ["RESTORE_PRESETS", "Restored", "main", "restore_image", "restore_parser"]

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


#: ``--scale`` when none is given.
DEFAULT_SCALE = 4


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
        formatter_class=_HelpFormatter,
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
    option(
        "scale",
        type=int | None,
        default=None,
        help=f"super-resolution: the factor, 2, 4 or 8 (default: {DEFAULT_SCALE}).",
    )
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
        help="heldout: error on 5% of the observed pixels left out of the fit; variance: "
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
    option(
        "device",
        type=Literal["auto", "cpu", "cuda"],
        default="auto",
        help="Where to fit: cuda (a GPU), cpu, or auto (a GPU when there is one).",
    )
    option(
        "precision",
        type=str | None,
        default=None,
        help="Trainer precision (32-true, bf16-mixed, 16-mixed), or auto: bf16-mixed where "
        "the hardware multiplies bf16 natively (a CPU with AVX512-BF16 or AMX, a GPU of compute "
        "capability 8.0 or later), else 32-true, printing what it chose; default: the preset's.",
    )
    option(
        "max_steps",
        type=int | None,
        default=None,
        help="At most this many steps, in case the criterion has not stopped the fit before "
        f"(default: the preset's cap; {_max_steps_help()}).",
    )
    option("seed", type=int, default=0, help="Seed of the network, its input and the hold-out.")
    option(
        "ensemble",
        type=int,
        default=1,
        help="Fit each input K times, with seeds --seed, --seed + 1, ..., one after another, "
        "and write the mean of the K selected images (K times the time).",
    )
    option(
        "clean",
        type=str | None,
        default=None,
        help="A clean reference, only to report PSNR/SSIM (one input), or a folder of "
        "references named as the inputs.",
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
    option(
        "workers",
        type=int,
        default=1,
        help="Restore with this many worker processes on this machine, each fitting one "
        "input (or batch) at a time; with --device cuda worker i fits on GPU i mod the GPU "
        "count.",
    )
    option(
        "threads",
        type=int | None,
        default=None,
        help="CPU threads of each worker (default: this machine's cores divided among the "
        "workers).",
    )
    option("resume", type=str | None, default=None, help="Continue from this checkpoint.")
    option(
        "overwrite",
        action=ActionYesNo,
        default=False,
        help="Restore again the inputs whose output exists (else a complete output is skipped).",
    )
    option(
        "quiet",
        action=ActionYesNo,
        default=False,
        help="No progress bars; warnings, errors and the summary only.",
    )
    option(
        "verbose",
        action=ActionYesNo,
        default=False,
        help="Also Lightning's own output: the devices, the model summary, its notices and "
        "warnings.",
    )
    return parser


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, but an option whose text says its default shows that one only
    (not the parser's ``null`` for "the preset's")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default: " not in text:
            return super()._get_help_string(action)
        default, action.default = action.default, argparse.SUPPRESS
        try:
            return super()._get_help_string(action)
        finally:
            action.default = default


def preset_max_steps(preset: str, task: str) -> int | None:
    """``trainer.max_steps`` of the fit config of ``preset`` and ``task`` (``dip restore``'s
    step cap when ``--max-steps`` is not given)."""
    import yaml

    path = list_presets().get(RESTORE_PRESETS[preset][task])
    if path is None:
        return None
    config = yaml.safe_load(path.read_text()) or {}
    steps = (config.get("trainer") or {}).get("max_steps")
    return int(steps) if steps is not None else None


def _max_steps_help() -> str:
    """``fast: 3000, flash 2000; paper: ...`` from the presets themselves."""
    parts = []
    for preset, tasks in RESTORE_PRESETS.items():
        steps = {task: preset_max_steps(preset, task) for task in tasks}
        counts: dict[int | None, int] = {}
        for value in steps.values():
            counts[value] = counts.get(value, 0) + 1
        common = max(counts, key=lambda value: counts[value])
        others = ", ".join(f"{task} {value}" for task, value in steps.items() if value != common)
        parts.append(f"{preset}: {common}" + (f", {others}" if others else ""))
    return "; ".join(parts)


@dataclass
class Job:
    """One input and where its result goes."""

    input: Path
    output: Path
    #: its clean reference (``--clean`` with a folder), else ``cfg.clean``
    clean: Path | None = None


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
    )


def plan(inputs: list[str], output: str, clean: str | None = None) -> list[Job]:
    """The jobs for ``inputs`` (files or folders) and ``output``; folders are expanded. With
    ``clean`` a folder, each input's reference is the file of the same name in it (or of the
    same stem with another image suffix)."""
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
    references = Path(clean) if clean is not None and Path(clean).is_dir() else None
    for path in paths:
        name = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix[1:]}"
        reference = _reference(references, path) if references is not None else None
        jobs.append(Job(path, target / f"{name}.png", reference))
    return jobs


def _reference(folder: Path, image: Path) -> Path:
    """The clean reference of ``image`` in ``folder``: the same name, or the same stem."""
    same = folder / image.name
    if same.is_file():
        return same
    found = [p for p in _images_in(folder) if p.stem == image.stem]
    if len(found) == 1:
        return found[0]
    raise ConfigError(f"no clean reference for {image} in {folder} (looked for {same})")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output(job: Job, inputs: list[Path], overwrite: bool) -> None:
    """Refuse to write over an input, or over an existing file without ``overwrite``
    (:func:`restore_jobs` decides first whether an existing output is complete)."""
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
    ]
    if not cfg.quiet and cfg.get("fit_bar", True):  # before the criterion and its options
        args.append("--trainer.callbacks+=dip_lightning.callbacks.progress.StoppingProgressBar")
    if cfg.get("thread_share"):  # a worker's fit takes the cores other workers leave idle
        args.append("--trainer.callbacks+=dip_lightning.callbacks.threads.ThreadShare")
    args.append(f"--trainer.callbacks+={criterion}")
    patience = (
        cfg.patience if cfg.patience is not None else default_patience(cfg.task, cfg.criterion)
    )
    if patience is not None:
        args.append(f"--trainer.callbacks.patience={patience}")
    if cfg.criterion == "heldout":
        args.append("--model.init_args.holdout_fraction=0.05")
    clean = job.clean if job.clean is not None else cfg.clean
    if clean:
        args.append(f"--data.clean={clean}")
    if cfg.task == "inpaint":
        if not cfg.mask:
            raise ConfigError("--task inpaint needs --mask (white = known pixel)")
        args.append(f"--data.mask={cfg.mask}")
    elif cfg.mask:
        raise ConfigError(f"--mask is for --task inpaint, not {cfg.task}")
    if cfg.task == "super-resolution":
        scale = cfg.scale if cfg.scale is not None else DEFAULT_SCALE
        args.append(f"--data.scale={scale}")
    if cfg.task == "flash":
        if not cfg.flash:
            raise ConfigError("--task flash needs --flash (the flash image of the same scene)")
        args.append(f"--data.guide={cfg.flash}")
    elif cfg.flash:
        raise ConfigError(f"--flash is for --task flash, not {cfg.task}")
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[cfg.device]
    gpu = cfg.get("gpu")
    if gpu is not None and accelerator != "cpu":  # this worker's or rank's GPU
        args += ["--trainer.accelerator=gpu", f"--trainer.devices=[{int(gpu)}]"]
    else:
        args += [f"--trainer.accelerator={accelerator}", "--trainer.devices=1"]
    if cfg.precision == "auto":
        from dip_lightning.precision import choose_precision

        choice = choose_precision(cfg.device)
        log.info("%s", choice)
        args.append(f"--trainer.precision={choice.precision}")
    elif cfg.precision:
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
    if cfg.quiet or not cfg.get("fit_bar", True):
        args.append("--trainer.enable_progress_bar=false")
    if not cfg.get("verbose"):
        args.append("--trainer.enable_model_summary=false")
    return args


def restore_batch(
    cfg: Namespace,
    jobs: list[Job],
    inputs: list[Path],
    *,
    run_dir: Path | None = None,
    replace: bool | None = None,
) -> list[dict[str, Any]]:
    """Restore each of ``jobs`` into its output, in one fit (a batched one for several jobs);
    their metrics. Raises :class:`DIPError`.

    Without ``--logdir`` the fit runs in a temporary folder (``run_dir`` when given, else a
    new one), removed when the fit ends or fails; only an interrupted fit keeps it (its
    checkpoint continues with ``--resume``). An existing output is replaced when ``replace``
    (default: ``--overwrite``), else refused."""
    import json

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dip_lightning.cli import DIPCLI
    from dip_lightning.tasks.batched import batch_names

    for job in jobs:
        check_output(job, inputs, cfg.overwrite if replace is None else replace)
        if not job.input.exists():
            raise ConfigError(not_found("image", job.input))
    if int(cfg.get("ensemble", 1)) > 1:
        return [restore_ensemble(cfg, jobs, inputs, run_dir=run_dir)]
    scratch = cfg.logdir is None
    if not scratch:
        run_dir = Path(cfg.logdir)
    elif run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="dip-restore-"))
    keep = False
    try:
        args = fit_arguments(cfg, jobs[0], run_dir)
        folders = [""]
        if len(jobs) > 1:
            images = [str(job.input) for job in jobs]
            args.append(f"--batch.images={json.dumps(images)}")
            folders = batch_names(images, 1)
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
            if not cfg.get("in_ensemble"):  # an ensemble starts again (no --resume)
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
            warning = cut_short(metrics, trainer.max_steps)
            if warning:
                log.warning("warning: %s: %s", job.input, warning)
            results.append(metrics)
        return results
    finally:
        if scratch and not keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def check_ensemble(cfg: Namespace) -> None:
    """Refuse an ``--ensemble`` out of range, or with ``--batch-size`` or ``--resume``."""
    if cfg.ensemble < 1:
        raise ConfigError(f"--ensemble {cfg.ensemble} is out of range; use >= 1")
    if cfg.ensemble > 1 and (cfg.get("batch_size", 1) > 1 or cfg.resume):
        option = "--batch-size" if cfg.get("batch_size", 1) > 1 else "--resume"
        raise ConfigError(
            f"--ensemble fits one input at a time, from the start; leave out {option}"
        )


def restore_ensemble(
    cfg: Namespace, jobs: list[Job], inputs: list[Path], *, run_dir: Path | None = None
) -> dict[str, Any]:
    """``--ensemble K``: fit the one input of ``jobs`` ``K`` times, one after another, as
    ``dip restore --seed s`` does for ``s`` in ``seed, ..., seed + K - 1``, and write the mean of
    the ``K`` images written (so the mean of ``K`` separate runs' outputs, rounded to the output's
    bit depth); its metrics (``steps``: all the members' steps, ``psnr``/``ssim`` of the mean
    with a clean reference, ``members``: each fit's own). Ctrl-C or SIGTERM writes the mean of
    the members so far (the interrupted one's best image so far included) and is raised."""
    import torch
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dip_lightning.data.io import load_image, save_image
    from dip_lightning.metrics.psnr import psnr
    from dip_lightning.metrics.ssim import ssim

    (job,) = jobs
    count = int(cfg.ensemble)
    # the members' outputs and (without --logdir) their runs; no resume: removed in any case
    scratch = run_dir if run_dir is not None else Path(tempfile.mkdtemp(prefix="dip-restore-"))
    scratch.mkdir(parents=True, exist_ok=True)
    images: list[torch.Tensor] = []
    members: list[dict[str, Any]] = []
    source = load_image(job.input)  # the mode, bit depth and alpha the output keeps

    def write_mean() -> torch.Tensor:
        mean = torch.stack(images).mean(dim=0)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        save_image(mean, job.output, like=source.info, alpha=source.alpha)
        return load_image(job.output).tensor  # as written

    try:
        for index in range(count):
            seed = int(cfg.seed) + index
            member = cfg.clone()
            member.ensemble, member.seed, member.in_ensemble = 1, seed, True
            if cfg.logdir is not None:
                member.logdir = str(Path(cfg.logdir) / f"seed{seed}")
            target = scratch / f"seed{seed}{job.output.suffix}"
            member_job = Job(job.input, target, job.clean)
            try:
                (metrics,) = restore_batch(
                    member, [member_job], inputs, run_dir=scratch / f"run{seed}", replace=True
                )
            except (KeyboardInterrupt, SIGTERMException):
                if target.is_file():  # the interrupted member's best image so far
                    images.append(load_image(target).tensor)
                if images:
                    write_mean()
                    log.warning(
                        "interrupted: wrote the mean of %d fits so far to %s",
                        len(images),
                        job.output,
                    )
                raise
            images.append(load_image(target).tensor)
            members.append({"seed": seed, **metrics})
        written = write_mean()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result: dict[str, Any] = {
        "input": str(job.input),
        "output": str(job.output),
        "ensemble": count,
        "steps": sum(int(m.get("steps", 0)) for m in members),
        "members": [
            {k: m[k] for k in ("seed", "selected_step", "steps", "psnr", "ssim") if k in m}
            for m in members
        ],
    }
    clean_path = job.clean if job.clean is not None else cfg.clean
    if clean_path:
        clean = load_image(clean_path, what="clean image", grayscale=written.shape[0] == 1)
        result["psnr"] = float(psnr(written[None], clean.tensor[None]))
        result["ssim"] = float(ssim(written[None], clean.tensor[None]))
    log.info(
        "%s -> %s (mean of %d fits%s)",
        job.input,
        job.output,
        count,
        f", psnr {result['psnr']:.2f} dB" if "psnr" in result else "",
    )
    return result


def cut_short(metrics: dict[str, Any], max_steps: int | None) -> str | None:
    """What to tell of a fit that reached the step cap ``max_steps`` before its stopping
    criterion stopped it (its image is the criterion's best so far, or the last one when it
    scored no step: it can be worse than the input), else ``None``.

    >>> criteria = {"heldout": {"would_stop_step": None, "selected_step": 95}}
    >>> message = cut_short({"steps": 100, "stopping": "heldout", "criteria": criteria}, 100)
    >>> print(*message.split("; "), sep="\\n")
    the fit reached the step cap (100, --max-steps) before the heldout criterion stopped it
    the image written is step 95, its best so far, and may be worse than the input
    >>> criteria = {"heldout": {"would_stop_step": 612, "selected_step": 412}}
    >>> cut_short({"steps": 612, "stopping": "heldout", "criteria": criteria}, 3000) is None
    True
    """
    criteria = metrics.get("criteria") or {}
    name = metrics.get("stopping") or next(iter(criteria), None)  # none: no step scored
    criterion = criteria.get(name)
    if criterion is None or criterion.get("would_stop_step") is not None:
        return None
    if max_steps is None or max_steps < 1 or int(metrics.get("steps", 0)) < max_steps:
        return None  # stopped otherwise (a diverging fit)
    chosen = criterion.get("selected_step")
    head = f"the fit reached the step cap ({max_steps}, --max-steps) before the {name} criterion"
    if chosen is None:
        written = "the image written is the last step"
        return f"{head} scored a step; {written} and may be worse than the input"
    written = f"the image written is step {chosen}, its best so far,"
    return f"{head} stopped it; {written} and may be worse than the input"


#: EXIF orientations that turn the stored image by 90 degrees (width and height swap).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def oriented_size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of a Pillow image as it is fitted: after its EXIF orientation, as
    :func:`~dip_lightning.data.io.load_image` turns it (a corrupt EXIF block: as stored)."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # corrupt EXIF: load_image keeps the pixels as stored
        return width, height
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """``jobs`` in batches of at most ``size`` inputs of one size (after EXIF orientation) and
    mode, in input order within each size; an input that cannot be read is a batch of its own,
    to fail alone."""
    if size == 1:
        return [[job] for job in jobs]
    from PIL import Image

    groups: dict[Any, list[list[Job]]] = {}
    order: list[list[Job]] = []
    for index, job in enumerate(jobs):
        try:
            with Image.open(job.input) as image:
                key: Any = (oriented_size(image), image.mode)
        except (OSError, ValueError):
            key = ("unreadable", index)
        runs = groups.setdefault(key, [])
        if not runs or len(runs[-1]) >= size:
            runs.append([])
            order.append(runs[-1])
        runs[-1].append(job)
    return order


def largest_first(groups: list[list[Job]]) -> list[list[Job]]:
    """``groups`` ordered by their pixels, most first (input order among equals; an input that
    cannot be read counts as none): the order a pool of workers takes them in. The fit's time
    grows with the image, so starting the largest fits first leaves the shortest ones for the
    end of the folder, where a worker that runs out of inputs waits for the others."""
    from PIL import Image

    def pixels(group: list[Job]) -> int:
        total = 0
        for job in group:
            try:
                with Image.open(job.input) as image:
                    width, height = image.size
            except (OSError, ValueError):
                continue
            total += width * height
        return total

    sizes = [pixels(group) for group in groups]
    order = sorted(range(len(groups)), key=lambda index: -sizes[index])
    return [groups[index] for index in order]


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
    if cfg.task != "super-resolution" and cfg.scale is not None:
        raise ConfigError(f"--scale is for --task super-resolution, not {cfg.task}")
    if cfg.clean and len(cfg.inputs) > 1 and not Path(cfg.clean).is_dir():
        raise ConfigError(
            "--clean is a reference for one input; give one input with it, or a folder of "
            "references named as the inputs"
        )
    if cfg.workers < 1:
        raise ConfigError(f"--workers {cfg.workers} is out of range; use >= 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads {cfg.threads} is out of range; use >= 1")
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
    with quiet_output(verbose=cfg.verbose, quiet=cfg.quiet):
        _restore_all(cfg)


@contextlib.contextmanager
def quiet_output(verbose: bool = False, quiet: bool = False) -> Iterator[None]:
    """What ``dip restore`` and :func:`restore_image` print: the output of each input and
    warnings. Lightning's notices (devices, "max_steps reached", tips) and Python warnings from
    the libraries only with ``verbose``; with ``quiet`` warnings and errors only. The run
    folder's own files (a temporary folder, removed) are never announced."""
    names = ["dip_lightning.callbacks.artifacts"]
    if not verbose:
        names += ["lightning.pytorch", "lightning.fabric", "dip_lightning.callbacks"]
    if quiet:
        names.append("dip_lightning")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            if not verbose:
                for module in (
                    "lightning",
                    "lightning_fabric",
                    "pytorch_lightning",
                    "torchmetrics",
                ):
                    warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def worker_output(cfg: Namespace) -> contextlib.AbstractContextManager[None]:
    """What a worker process of ``--workers`` prints: set up as ``dip restore``'s own output."""
    from dip_lightning.cli import _configure_logging

    _configure_logging()
    return quiet_output(verbose=cfg.verbose, quiet=cfg.quiet)


def _restore_all(cfg: Namespace) -> None:
    from dip_lightning import restore_parallel as parallel

    jobs = plan(cfg.inputs, cfg.output, cfg.clean)
    if cfg.resume and len(jobs) > 1:
        raise ConfigError("--resume continues one fit; give the one input it belongs to")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} is out of range; use >= 1")
    if cfg.resume and cfg.batch_size > 1:
        raise ConfigError("--resume continues one fit; leave out --batch-size")
    check_ensemble(cfg)
    if cfg.batch_size > 1 and any(job.clean is not None for job in jobs):
        raise ConfigError(
            "--clean with a folder scores each input in its own fit; leave out --batch-size"
        )
    inputs = [job.input for job in jobs]
    single = len(jobs) == 1 and not _to_folder(cfg, jobs)
    folder = None if single else jobs[0].output.parent
    share = parallel.cluster_share()
    mine = parallel.take_share(jobs, share, key=lambda job: str(job.input))
    state = parallel.OutputFolder(folder, share.rank if share else None) if folder else None
    # complete outputs are skipped here, without a worker
    done = [job for job in mine if existing_output(job, cfg, state) == "complete"]
    todo = [job for job in mine if job not in done]
    local = share.local_world if share is not None else 1
    workers = min(cfg.workers, max(len(batches(todo, cfg.batch_size)), 1))
    threads = cfg.threads or parallel.default_threads(workers, local)
    gpus = _gpu_count(cfg.device)
    first_gpu = (share.local_rank if share is not None else 0) * workers
    cfg.gpu = first_gpu % gpus if gpus and (share is not None or workers > 1) else None
    if workers == 1 and (cfg.threads is not None or local > 1):
        import torch

        torch.set_num_threads(threads)
    summary = _Summary(cfg, len(mine), share, workers)
    try:
        for job in done:
            for outcome in restore_jobs(cfg, [job], inputs, state, single=single):
                summary.add(outcome)
        if workers == 1:
            for batch in batches(todo, cfg.batch_size):
                for outcome in restore_jobs(cfg, batch, inputs, state, single=single):
                    summary.add(outcome)
        else:
            setups = [
                {
                    "threads": threads,
                    # the cores a finished worker leaves go to those still fitting
                    "share_threads": cfg.threads is None and not gpus,
                    "gpu": (first_gpu + index) % gpus if gpus else None,
                    "rank": share.rank if share else None,
                }
                for index in range(workers)
            ]
            parallel.run_workers(
                cfg,
                largest_first(batches(todo, cfg.batch_size)),
                inputs,
                folder,
                setups,
                summary.add,
                summary.status,
                restore_jobs,
                worker_output,
            )
    finally:
        summary.close()
        if state is not None:
            state.sweep()
            if (state.state / "records").is_dir():
                state.write_manifest()
    summary.finish(single, state)


def _to_folder(cfg: Namespace, jobs: list[Job]) -> bool:
    """Whether the output is a folder (several inputs, a folder, a path ending in /)."""
    return (
        len(jobs) > 1
        or Path(cfg.output).is_dir()
        or cfg.output.endswith(("/", "\\"))
        or any(Path(name).is_dir() for name in cfg.inputs)
    )


def _torch_threads() -> int:
    """The CPU threads this process computes with now (a fit's count when it ended: more than
    ``--threads`` where idle cores were handed to it)."""
    import torch

    return torch.get_num_threads()


def _gpu_count(device: str) -> int:
    """The GPUs the fits may use: those of ``--device cuda`` (or auto, when there are)."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class _Summary:
    """What a run prints as inputs finish: error lines, the overall bar in a terminal, and
    the summary line at the end."""

    def __init__(self, cfg: Namespace, total: int, share: Any, workers: int) -> None:
        self.cfg = cfg
        self.total = total
        self.share = share
        self.counts = {"restored": 0, "skipped": 0, "failed": 0, "busy": 0, "interrupted": 0}
        self.internal = False
        self.results: dict[str, dict[str, Any]] = {}
        self.bar: Any = None
        if not cfg.quiet and total > 1 and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc="images",
                unit="image",
                position=1 if workers == 1 else 0,
                leave=True,
                dynamic_ncols=True,
                file=sys.stdout,
                smoothing=0,
            )

    def add(self, outcome: Any) -> None:
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        self.internal = self.internal or outcome.internal
        if outcome.status == "restored":
            self.results[outcome.input] = outcome.metrics
        if outcome.error is not None:
            self._write(f"error: {outcome.input}: {outcome.error}")
        if self.bar is not None:
            self.bar.update(1)

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            sys.stderr.write(line + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self, single: bool, state: Any) -> None:
        """Write ``--metrics``, print the summary line and exit 2 when an input failed."""
        cfg = self.cfg
        if cfg.metrics and self.results:
            value = next(iter(self.results.values())) if single else self.results
            atomic_write_json(cfg.metrics, value)
        counts = self.counts
        failed = counts["failed"]
        if not single or counts["skipped"]:
            parts = [f"{counts['restored']} restored", f"{counts['skipped']} skipped"]
            if counts["busy"]:
                parts.append(f"{counts['busy']} being restored by another process")
            parts.append(f"{failed} failed")
            where = f"; manifest {state.folder / 'manifest.json'}" if state is not None else ""
            rank = ""
            if self.share is not None:
                rank = f"rank {self.share.rank} of {self.share.world}: "
            line = f"{rank}{', '.join(parts)} of {self.total} inputs{where}"
            if not single or cfg.quiet:
                sys.stderr.write(line + "\n")
        if failed:
            sys.stderr.write(f"error: {failed} of {self.total} inputs failed\n")
            raise SystemExit(1 if self.internal else 2)


def expected_size(job: Job, cfg: Namespace) -> tuple[int, int] | None:
    """``(width, height)`` of ``job``'s restored image, ``None`` when its input is unreadable."""
    from PIL import Image

    try:
        with Image.open(job.input) as image:
            width, height = oriented_size(image)
    except (OSError, ValueError):
        return None
    if cfg.task == "super-resolution":
        scale = cfg.scale if cfg.scale is not None else DEFAULT_SCALE
        return width * scale, height * scale
    return width, height


def existing_output(job: Job, cfg: Namespace, state: Any) -> str | None:
    """What to do with ``job``'s output before a fit: ``None`` (fit: no output yet,
    ``--overwrite`` or ``--resume``, the image of an interrupted fit, or an unreadable input
    whose error the fit tells), ``"complete"`` (skip), or why it is no restoration of the
    input (refuse)."""
    from PIL import Image

    if not job.output.exists() or cfg.overwrite or cfg.resume:
        return None
    if job.output.is_dir():
        return None  # check_output refuses it
    if state is not None and state.interrupted(job.output):
        return None
    expected = expected_size(job, cfg)
    if expected is None:
        return None
    try:
        with Image.open(job.output) as image:
            size = image.size
    except (OSError, ValueError):
        return "not an image"
    if size != expected:
        return f"{size[0]}x{size[1]}, not {expected[0]}x{expected[1]}"
    return "complete"


def restore_jobs(
    cfg: Namespace, batch: list[Job], inputs: list[Path], state: Any, single: bool = False
) -> list[Any]:
    """Restore one batch as ``dip restore`` does, skipping the inputs whose output is complete
    and those another process holds (with ``state``, the output folder's claims and records;
    see :mod:`dip_lightning.restore_parallel`); the :class:`Outcome` of each input. An input
    error gives a ``failed`` outcome with its one line; with ``single`` it is raised instead,
    as are errors that are not the user's."""
    import time

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dip_lightning.cli import user_error
    from dip_lightning.restore_parallel import Outcome

    outcomes: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    todo: list[Job] = []

    def fail(job: Job, error: str, line: str | None) -> None:
        if single:
            raise ConfigError(error)
        outcomes[str(job.output)] = Outcome(
            str(job.input), str(job.output), "failed", error, error=line
        )

    try:
        for job in batch:
            try:
                check_output(job, inputs, overwrite=True)
            except ConfigError as exc:
                fail(job, str(exc), str(exc))
                continue
            if state is not None:
                claim = state.claim(job.output)
                if claim is None:
                    outcomes[str(job.output)] = Outcome(str(job.input), str(job.output), "busy")
                    continue
                claims[str(job.output)] = claim
            verdict = existing_output(job, cfg, state)
            if verdict == "complete":
                log.info("%s: %s exists; skipped (--overwrite redoes it)", job.input, job.output)
                outcomes[str(job.output)] = Outcome(str(job.input), str(job.output), "skipped")
            elif verdict is not None:
                why = (
                    f"{job.output} exists and is not a restored image of {job.input} "
                    f"({verdict}); pass --overwrite to replace it"
                )
                fail(job, why, why)
            else:
                todo.append(job)
        if todo:
            run_dir = None if cfg.logdir else Path(tempfile.mkdtemp(prefix="dip-restore-"))
            for job in todo:
                if str(job.output) in claims:
                    claims[str(job.output)].note(run=str(run_dir) if run_dir else None)
            start = time.perf_counter()
            try:
                results = restore_batch(cfg, todo, inputs, run_dir=run_dir, replace=True)
            except (KeyboardInterrupt, SIGTERMException):
                for job in todo:  # the best image so far, written: the next run redoes it
                    if job.output.is_file():
                        outcomes[str(job.output)] = Outcome(
                            str(job.input), str(job.output), "interrupted"
                        )
                raise
            except SystemExit as exc:  # a parser error of the fit, already printed
                if single or exc.code in (0, None):
                    raise
                for job in todo:
                    fail(job, "invalid options (see above)", None)
            except Exception as exc:
                error = user_error(exc)
                if error is None or single:
                    raise
                for job in todo:
                    fail(job, str(error), str(error))
            else:
                seconds = round(time.perf_counter() - start, 3)
                threads = None if _gpu_count(cfg.device) else _torch_threads()
                for job, metrics in zip(todo, results, strict=True):
                    metrics.setdefault("seconds", seconds)
                    if threads is not None:
                        metrics.setdefault("threads", threads)
                    outcomes[str(job.output)] = Outcome(
                        str(job.input), str(job.output), "restored", metrics=metrics
                    )
        return [outcomes[str(job.output)] for job in batch if str(job.output) in outcomes]
    finally:
        if state is not None:
            for key, outcome in outcomes.items():
                if outcome.status != "busy" and key in claims:
                    state.write_record(outcome)
            for claim in claims.values():
                claim.release()
            if outcomes:
                state.write_manifest()


@dataclass
class Restored:
    """What :func:`restore_image` returns."""

    #: the restored image, ``(C, H, W)`` float32 in [0, 1] (as written, so quantised to the
    #: input's bit depth)
    image: Any
    #: what ``dip restore --metrics`` writes: ``selected_step``, ``steps``, ``stopping``, ...
    metrics: dict[str, Any]
    #: the file written, ``None`` when no ``output`` was given
    output: Path | None


def restore_image(
    image: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    task: str = "denoise",
    mask: str | os.PathLike[str] | None = None,
    scale: int | None = None,
    flash: str | os.PathLike[str] | None = None,
    preset: str = "fast",
    criterion: str = "auto",
    patience: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    ensemble: int = 1,
    device: str = "auto",
    precision: str | None = None,
    clean: str | os.PathLike[str] | None = None,
    logdir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> Restored:
    """Restore one image as ``dip restore`` does: the same preset (``fast``: a network sized
    for a CPU), the same stopping criterion without ground truth, the same defaults.

    ``output`` (optional) receives the image, atomically, with the input's mode and bit depth.
    With ``logdir`` the fit's run is kept in ``<logdir>/<image name>/version_<n>/``
    (TensorBoard events, ``metrics.json`` and ``checkpoints/last.ckpt``, which ``resume``
    continues); without it the fit runs in a temporary folder that is removed. Lightning's own
    output (devices, model summary, its warnings) only with ``verbose``; ``progress=False``
    hides the progress bar. The keyword arguments are ``dip restore``'s options (see
    ``dip restore --help``); a mistake raises :class:`~dip_lightning.errors.DIPError` with a
    one-line message.
    """
    from dip_lightning.data.io import load_image

    values: dict[str, Any] = {
        "task": task,
        "mask": mask,
        "scale": scale,
        "flash": flash,
        "preset": preset,
        "criterion": criterion,
        "patience": patience,
        "max_steps": max_steps,
        "seed": seed,
        "ensemble": ensemble,
        "device": device,
        "precision": precision,
        "clean": clean,
        "logdir": logdir,
        "resume": resume,
    }
    source = os.fspath(image)
    if source.startswith("-"):  # not an option
        source = os.path.join(".", source)
    with contextlib.ExitStack() as stack:
        if output is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="dip-restore-"))
            target = Path(folder) / f"{Path(source).stem}.png"
        else:
            target = Path(output)
        argv = [source, f"--output={target}"]
        argv += [f"--{key}={_text(v)}" for key, v in values.items() if v is not None]
        flags = {"overwrite": overwrite, "quiet": not progress, "verbose": verbose}
        argv += [f"--{key}" if on else f"--no_{key}" for key, on in flags.items()]
        cfg = parse(argv)
        check_ensemble(cfg)
        jobs = plan(cfg.inputs, cfg.output)
        with quiet_output(verbose=cfg.verbose, quiet=False):
            (metrics,) = restore_batch(cfg, jobs, [job.input for job in jobs])
        restored = load_image(jobs[0].output, what="restored image").tensor
        return Restored(restored, metrics, None if output is None else jobs[0].output)


def _text(value: Any) -> str:
    """A keyword argument of :func:`restore_image` as a command-line value."""
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
