"""Benchmark of ``dip search`` on denoising (sigma 25): what pruning saves, and how well the
held-out objective picks the stopping step without a reference.

    python benchmarks/search.py                       # 3 crops of 64x64, 16 trials, ~20 min CPU
    python benchmarks/search.py --data ../shared/data/denoising-cbm3d --crop 96 --trials 32

For each image (a centre crop of the first ``--images`` files of ``--data``; the embedded
sample with different noise seeds when the folder is missing):

1. the same 16-trial TPE study (same seed and space: lr, sigma_p, max_steps) with the median
   pruner and without pruning: best PSNR and the total optimisation steps all trials ran;
2. one fit of the base config for ``--heldout-steps`` steps with 5% of the pixels held out:
   the step where the held-out MSE is lowest (its choice, no reference needed) against the
   oracle step where the PSNR against the clean image peaks, and the PSNR at each.

Prints a markdown table per part (the README quotes them). Everything is written under
``--out`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
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
    space = {
        "model.init_args.lr": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
        "model.init_args.sigma_p": {"type": "float", "low": 0.0, "high": 0.1},
        "trainer.max_steps": {"type": "int", "low": 100, "high": args.max_steps, "step": 50},
    }
    return [
        "--base_config", str(REPO / "configs" / "denoise.yaml"),
        "--overrides", json.dumps(overrides),
        "--space", json.dumps(space),
        "--n_trials", str(args.trials),
        "--seed", "0",
        "--log_dir", str(out),
        "--threads", str(args.threads),
    ]  # fmt: skip


def run_study(arguments: list[str]) -> dict[str, Any]:
    """Run one study quietly; its best PSNR, total steps, pruned trials and seconds."""
    import optuna

    from dip_lightning.search.cli import parse_spec
    from dip_lightning.search.runner import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        study = run_search(parse_spec(arguments))
    trials = study.get_trials(deepcopy=False)
    return {
        "best": study.best_value,
        "steps": sum(int(t.user_attrs.get("steps", 0)) for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "seconds": time.perf_counter() - start,
    }


class _PsnrPerStep(Callback):
    """The PSNR of the restored image against the clean one after every step."""

    def __init__(self) -> None:
        self.psnr: list[float] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        from dip_lightning.tasks.base import psnr

        module: Any = pl_module
        self.psnr.append(float(psnr(module.restored_batch(), module.clean)))


def heldout_fit(args: argparse.Namespace, image: Path, seed: int) -> dict[str, Any]:
    """One fit with 5% held-out pixels: the held-out choice of step against the oracle's."""
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
            "--trainer.logger=false",
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
    parser.add_argument("--max-steps", type=int, default=600, help="top of the max_steps range")
    parser.add_argument("--heldout-steps", type=int, default=1200)
    parser.add_argument("--channels", type=int, default=32, help="SkipNet channels per level")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
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
        for pruner in ("median", "none"):
            arguments = [
                *spec_args(args, image, seed, out),
                "--pruner", pruner,
                "--pruner_options", '{"n_startup_trials": 4, "n_warmup_steps": 100}'
                if pruner == "median" else "{}",
                "--study_name", f"{name}-{pruner}",
            ]  # fmt: skip
            results[pruner] = run_study(arguments)
            print(f"{name} {pruner}: {results[pruner]}", file=sys.stderr)
        search_rows.append((name, results))
        heldout = heldout_fit(args, image, seed)
        print(f"{name} heldout: {heldout}", file=sys.stderr)
        heldout_rows.append((name, heldout))

    print(
        f"\n### {args.trials}-trial TPE study, median pruner vs none "
        f"(denoising sigma 25, {args.crop}x{args.crop} crops, SkipNet {args.channels} channels)\n"
    )
    print("| image | best PSNR, median | best PSNR, none | steps, median | steps, none "
          "| pruned | seconds, median | seconds, none |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, r in search_rows:
        m, n = r["median"], r["none"]
        print(
            f"| {name} | {m['best']:.2f} | {n['best']:.2f} | {m['steps']} | {n['steps']} "
            f"| {m['pruned']} | {m['seconds']:.0f} | {n['seconds']:.0f} |"
        )
    saved = [1 - r["median"]["steps"] / r["none"]["steps"] for _, r in search_rows]
    print(f"\nsteps saved by pruning: {100 * statistics.mean(saved):.0f}% on average")

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
