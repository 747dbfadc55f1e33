"""Benchmark of ``dip search`` on denoising (sigma 25): what pruning saves, and how well the
held-out objective picks the stopping step without a reference.

    python benchmarks/search.py                           # 3 crops of 64x64, 16 trials
    python benchmarks/search.py --pruners none --out /tmp/b   # the unpruned studies only,
    python benchmarks/search.py --out /tmp/b --reuse          # then the rest, reusing them
    python benchmarks/search.py --stopping end --max-steps 600   # max_steps searched instead

For each image (a centre crop of the first ``--images`` files of ``--data``; the embedded
sample with different noise seeds when the folder is missing):

1. the same 16-trial TPE study (same seed and space: lr, sigma_p, input depth) with the median
   pruner and without pruning: best PSNR and the total optimisation steps all trials ran. With
   ``--stopping best`` (the default, as in ``search/denoise.yaml``) every trial runs up to
   ``--max-steps`` and is worth the best PSNR it passes through, whose step is its stopping
   iteration; the pruner compares best-so-far values. With ``--stopping end``,
   ``trainer.max_steps`` is searched in [100, ``--max-steps``] and a trial is worth its final
   PSNR. The pruner's options follow the shipped specs: 4 startup trials, no decision before
   ``--warmup`` steps (an eighth of ``--max-steps`` with ``best``, half with ``end``), and none
   on the median of fewer than 3 trials at a step. The study without pruning is deterministic
   (seeded TPE, CPU), so ``--reference`` can take it from an earlier run's ``--out``; every
   trial the two studies share (same parameters, run to the end) must then have the same PSNR,
   or the benchmark stops;
2. one fit of the base config for ``--heldout-steps`` steps with 5% of the pixels held out:
   the step where the held-out MSE is lowest (its choice, no reference needed) against the
   oracle step where the PSNR against the clean image peaks, and the PSNR at each.

Prints a markdown table per part (the README quotes them), and for the unpruned studies the
rank correlation between a trial's value at a step and its final value (what a median pruner's
decision at that step rests on). Everything is written under ``--out`` (a temporary folder by
default).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "denoising-cbm3d"


def prepare_images(data: Path, count: int, crop: int, out: Path) -> list[tuple[Path, int]]:
    """``count`` centre crops (``crop`` x ``crop``) as PNGs, each with its noise seed; the
    embedded sample with seeds 0, 1, ... when ``data`` has no images."""
    files = sorted(p for p in data.glob("*.png")) if data.is_dir() else []
    if not files:
        from dip_lightning.data.datamodule import sample_image_path

        print(f"{data} not found: the embedded sample with {count} noise seeds", file=sys.stderr)
        files = [sample_image_path()] * count
    images = []
    for index, path in enumerate(files[:count]):
        image = Image.open(path).convert("RGB")
        width, height = image.size
        side = min(crop, width, height)
        left, top = (width - side) // 2, (height - side) // 2
        target = out / f"{index}_{path.stem}_{side}.png"
        image.crop((left, top, left + side, top + side)).save(target)
        images.append((target, index))
    return images


def spec_args(args: argparse.Namespace, image: Path, seed: int, out: Path) -> list[str]:
    """``dip search`` arguments of the benchmark's study on one image."""
    overrides = {
        "data.image": str(image),
        "data.noise_sigma": 25,
        "data.seed": seed,
        "model.init_args.seed": seed,  # Lightning refuses different seeds in the two hparams
        "model.init_args.net.init_args.channels_down": args.channels,
        "model.init_args.net.init_args.channels_up": args.channels,
        "model.init_args.image_every_n_steps": 10_000,
        "trainer.log_every_n_steps": 25,
    }
    space: dict[str, Any] = {
        "model.init_args.lr": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
        "model.init_args.sigma_p": {"type": "float", "low": 0.0, "high": 0.1},
        "model.init_args.input_depth": {"type": "categorical", "choices": [8, 16, 32]},
    }
    if args.stopping == "end":  # the stopping iteration is a parameter
        space["trainer.max_steps"] = {"type": "int", "low": 100, "high": args.max_steps, "step": 50}
    else:  # every trial runs up to --max-steps; its best step is its stopping iteration
        overrides["trainer.max_steps"] = args.max_steps
    return [
        "--base_config", str(REPO / "configs" / "denoise.yaml"),
        "--overrides", json.dumps(overrides),
        "--space", json.dumps(space),
        "--stopping", args.stopping,
        "--n_trials", str(args.trials),
        "--seed", "0",
        "--log_dir", str(out),
        "--threads", str(args.threads),
        "--quiet",
    ]  # fmt: skip


def summary(study: Any, seconds: float) -> dict[str, Any]:
    """A study's best PSNR, total steps, pruned trials, seconds and trials."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    return {
        "best": study.best_value,
        "steps": sum(int(t.user_attrs.get("steps", 0)) for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "seconds": seconds,
        "trials": trials,
    }


def run_study(arguments: list[str]) -> dict[str, Any]:
    """Run one study quietly (its wall time is kept as the study's ``benchmark_seconds``);
    see :func:`summary`."""
    import optuna

    from dip_lightning.search.cli import parse_spec
    from dip_lightning.search.runner import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        study = run_search(parse_spec(arguments))
    seconds = time.perf_counter() - start
    study.set_user_attr("benchmark_seconds", seconds)
    return summary(study, seconds)


def load_finished(folder: Path, study_name: str, trials: int) -> dict[str, Any] | None:
    """The study ``study_name`` that a run with ``--out folder`` left, when it holds ``trials``
    finished trials; see :func:`summary`."""
    import optuna

    path = folder / study_name / "study.db"
    if not path.is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{path}")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if len(done) != trials:
        return None
    return summary(study, float(study.user_attrs.get("benchmark_seconds", math.nan)))


def check_same_fits(pruned: dict[str, Any], reference: dict[str, Any], name: str) -> int:
    """Stop when a trial run to the end in both studies with the same parameters has another
    PSNR (the reference came from other code or settings); the number of such trials."""
    import optuna

    complete = optuna.trial.TrialState.COMPLETE
    known = {
        json.dumps(t.params, sort_keys=True): t.value
        for t in reference["trials"]
        if t.state == complete
    }
    shared = 0
    for trial in pruned["trials"]:
        value = known.get(json.dumps(trial.params, sort_keys=True))
        if trial.state != complete or value is None:
            continue
        if abs(float(trial.value) - float(value)) > 1e-3:
            sys.exit(
                f"--reference: {name} trial {trial.number} has PSNR {trial.value:.4f} here and "
                f"{value:.4f} in the reference with the same parameters; run without --reference"
            )
        shared += 1
    return shared


def clairvoyant_share(result: dict[str, Any], n_startup: int, warmup: int) -> float:
    """The share of the unpruned study's steps that a median rule knowing every trial's final
    PSNR would run on the same trials: after ``n_startup`` complete trials, a trial whose final
    PSNR is below the median of the complete ones before it stops at ``warmup``."""
    import optuna

    finals: list[float] = []
    run = total = 0
    for trial in result["trials"]:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        steps = int(trial.user_attrs.get("steps", 0))
        total += steps
        value = float(trial.value)
        if len(finals) >= n_startup and value < statistics.median(finals) and steps > warmup:
            run += warmup
        else:
            run += steps
            finals.append(value)
    return run / total if total else math.nan


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def rank_correlations(result: dict[str, Any], steps: list[int]) -> list[float | None]:
    """For each step, Spearman's correlation between the PSNR trials reported there and their
    final PSNR, over the complete trials that ran past it (``None`` under 4 such trials)."""
    import optuna

    out: list[float | None] = []
    for step in steps:
        pairs = [
            (t.intermediate_values[step], float(t.value))
            for t in result["trials"]
            if t.state == optuna.trial.TrialState.COMPLETE
            and step in t.intermediate_values
            and max(t.intermediate_values) > step
        ]
        if len(pairs) < 4:
            out.append(None)
            continue
        x, y = _ranks([a for a, _ in pairs]), _ranks([b for _, b in pairs])
        try:
            out.append(statistics.correlation(x, y))
        except statistics.StatisticsError:
            out.append(None)
    return out


class _PsnrPerStep(Callback):
    """The PSNR of the restored image against the clean one after every step."""

    def __init__(self) -> None:
        self.psnr: list[float] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        from dip_lightning.metrics.psnr import psnr

        module: Any = pl_module
        self.psnr.append(float(psnr(module.restored_batch(), module.clean)))


def heldout_fit(
    args: argparse.Namespace, image: Path, seed: int, directory: Path
) -> dict[str, Any]:
    """One fit with 5% held-out pixels (written into ``directory``): the held-out choice of step
    against the oracle's."""
    from dip_lightning.search.objective import build_cli

    cli = build_cli(
        [
            "--config", str(REPO / "configs" / "denoise.yaml"),
            f"--data.image={image}", "--data.noise_sigma=25", f"--data.seed={seed}",
            f"--model.init_args.seed={seed}",
            f"--model.init_args.net.init_args.channels_down={args.channels}",
            f"--model.init_args.net.init_args.channels_up={args.channels}",
            "--model.init_args.holdout_fraction=0.05",
            "--model.init_args.image_every_n_steps=10000",
            f"--trainer.max_steps={args.heldout_steps}",
            "--trainer.logger=false", f"--trainer.default_root_dir={directory}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        ]
    )  # fmt: skip
    trainer: Any = cli.trainer
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    recorder = _PsnrPerStep()
    trainer.callbacks.append(recorder)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    module: Any = cli.model
    heldout_step = int(module.heldout_best_step)
    oracle_step = int(module.peak_step)
    return {
        "heldout_step": heldout_step,
        "heldout_psnr": recorder.psnr[heldout_step - 1],
        "oracle_step": oracle_step,
        "oracle_psnr": recorder.psnr[oracle_step - 1],
        "final_psnr": recorder.psnr[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=1200,
        help="steps of every trial (--stopping best) or the top of the max_steps range (end)",
    )
    parser.add_argument("--heldout-steps", type=int, default=1200)
    parser.add_argument("--channels", type=int, default=32, help="SkipNet channels per level")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="the median pruner's n_warmup_steps (default: --max-steps / 8 with --stopping best, "
        "/ 2 with end)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="an earlier run's --out: take the unpruned studies from it instead of running them",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take the studies an earlier run left in --out instead of running them again",
    )
    parser.add_argument(
        "--stopping",
        choices=("best", "end"),
        default="best",
        help="best: every trial runs --max-steps steps and is worth its best PSNR (its step is "
        "the stopping iteration); end: trainer.max_steps is searched in [100, --max-steps] and "
        "a trial is worth its final PSNR",
    )
    parser.add_argument(
        "--pruners",
        type=lambda text: text.split(","),
        default=["none", "median"],
        help="studies to run, in order (none,median); with one, only its studies run (then "
        "--reuse them)",
    )
    args = parser.parse_args()
    warmup = args.warmup
    if warmup is None:
        warmup = args.max_steps // (8 if args.stopping == "best" else 2)
    pruner_options = {"n_startup_trials": 4, "n_warmup_steps": warmup, "n_min_trials": 3}
    warnings.filterwarnings("ignore")
    for logger in ("dip_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="dip-search-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    images = prepare_images(args.data, args.images, args.crop, out)

    search_rows, heldout_rows = [], []
    for image, seed in images:
        name = image.stem
        results = {}
        for pruner in args.pruners:
            study_name = f"{name}-{pruner}"
            if pruner == "none" and args.reference is not None:
                reference = load_finished(args.reference, study_name, args.trials)
                if reference is None:
                    sys.exit(f"--reference: no finished study {study_name} in {args.reference}")
                results[pruner] = reference
                shared = check_same_fits(results["median"], reference, name)
                print(f"{name} none: from {args.reference} ({shared} shared trials agree)",
                      file=sys.stderr)  # fmt: skip
                continue
            earlier = load_finished(out, study_name, args.trials) if args.reuse else None
            if earlier is not None:
                results[pruner] = earlier
                print(f"{name} {pruner}: from {out}", file=sys.stderr)
                continue
            arguments = [
                *spec_args(args, image, seed, out),
                "--pruner", pruner,
                "--pruner_options", json.dumps(pruner_options if pruner == "median" else {}),
                "--study_name", study_name,
            ]  # fmt: skip
            results[pruner] = run_study(arguments)
            brief = {k: v for k, v in results[pruner].items() if k != "trials"}
            print(f"{name} {pruner}: {brief}", file=sys.stderr)
        search_rows.append((name, results))
        if len(results) < 2:
            continue
        heldout = heldout_fit(args, image, seed, out / f"{name}-heldout")
        print(f"{name} heldout: {heldout}", file=sys.stderr)
        heldout_rows.append((name, heldout))

    if any(len(r) < 2 for _, r in search_rows):
        print(f"(only the {','.join(args.pruners)} studies ran; written under {out})")
        return
    print(
        f"\n### {args.trials}-trial TPE study, median pruner vs none "
        f"(denoising sigma 25, {args.crop}x{args.crop} crops, SkipNet {args.channels} channels)\n"
    )
    print(f"median pruner: {json.dumps(pruner_options)}\n")
    print(
        "| image | best PSNR, median | best PSNR, none | steps, median | steps, none | share "
        f"| clairvoyant share, warmup {warmup} / 0 | pruned | seconds, median | seconds, none |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    n_startup = int(pruner_options["n_startup_trials"])
    for name, r in search_rows:
        m, n = r["median"], r["none"]
        bounds = [clairvoyant_share(n, n_startup, w) for w in (warmup, 0)]
        print(
            f"| {name} | {m['best']:.2f} | {n['best']:.2f} | {m['steps']} | {n['steps']} "
            f"| {100 * m['steps'] / n['steps']:.0f}% "
            f"| {100 * bounds[0]:.0f}% / {100 * bounds[1]:.0f}% "
            f"| {m['pruned']} | {_seconds(m['seconds'])} | {_seconds(n['seconds'])} |"
        )
    saved = [1 - r["median"]["steps"] / r["none"]["steps"] for _, r in search_rows]
    print(f"\nsteps saved by pruning: {100 * statistics.mean(saved):.0f}% on average")
    print(
        "(clairvoyant share: the steps a median rule that knew each trial's final PSNR would run "
        "on the unpruned study's trials, stopping the below-median ones at the warmup)"
    )

    every = 100
    steps = list(range(every, args.max_steps, every))
    print(
        "\n### Rank correlation of a trial's PSNR at a step with its final PSNR "
        "(unpruned study, trials that ran past the step)\n"
    )
    print("| image | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, r in search_rows:
        cells = [" " if c is None else f"{c:.2f}" for c in rank_correlations(r["none"], steps)]
        print(f"| {name} | " + " | ".join(cells) + " |")

    print(
        f"\n### Held-out stopping (5% of pixels) vs the oracle step, one fit of "
        f"{args.heldout_steps} steps\n"
    )
    print("| image | held-out step | PSNR there | oracle step | oracle PSNR | final PSNR |")
    print("|---|---|---|---|---|---|")
    for name, h in heldout_rows:
        print(
            f"| {name} | {h['heldout_step']} | {h['heldout_psnr']:.2f} | {h['oracle_step']} "
            f"| {h['oracle_psnr']:.2f} | {h['final_psnr']:.2f} |"
        )
    print(f"\n(written under {out})")


if __name__ == "__main__":
    main()
