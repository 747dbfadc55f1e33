"""The README's pictures, made again from the embedded sample image.

    pip install -e ".[plots]"        # matplotlib
    python benchmarks/figures.py     # 10-20 minutes on a 2-core CPU; writes benchmarks/figures/

Runs the CPU config of each task (``configs/denoise.yaml``, ``jpeg.yaml``, ``inpaint.yaml``,
``super_resolution.yaml``, ``flash.yaml``) on the sample and writes, into ``--out``:

* ``<task>.png``: the observation, the restored image and the clean image side by side, with
  their PSNR (the low-resolution input of super-resolution is shown enlarged by pixel repetition);
* ``psnr.png``: PSNR of the denoising fit over the steps (the output EMA and the raw output);
* ``fbc.png``: the FBC heatmap of the same fit (bands by steps, against the noisy target).

Only the sample image (CC0) is used, so the pictures can be committed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "denoise": "denoising, sigma 25",
    "jpeg": "JPEG quality 5",
    "inpaint": "inpainting, 50% of pixels missing",
    "super_resolution": "super-resolution x4",
    "flash": "flash/no-flash",
}


def run(task: str, directory: Path, steps: int | None) -> tuple[Any, Path]:
    """Fit the CPU config of ``task``; the module and the run directory."""
    from dip_lightning.cli import DIPCLI

    args = [
        "--config",
        str(REPO / "configs" / f"{task}.yaml"),
        f"--trainer.logger.save_dir={directory}",
        "--trainer.callbacks+=dip_lightning.callbacks.FBCLogger",  # fbc.csv, for the heatmap
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    if task == "flash":
        args.append(f"--data.guide={REPO / 'dip_lightning' / 'assets' / 'cat_flash.png'}")
    if steps is not None:
        args.append(f"--trainer.max_steps={steps}")
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = DIPCLI(args=args, run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
    return cli.model, Path(cli.trainer.log_dir or directory)


def scalars(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    values = events.Scalars(tag) if tag in events.Tags()["scalars"] else []
    return [v.step for v in values], [v.value for v in values]


def panel(task: str, module: Any, run_dir: Path, out: Path) -> None:
    import json

    import matplotlib.pyplot as plt

    from dip_lightning.metrics.psnr import psnr

    sample = module.sample
    restored = module.restored()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    observation = sample.observation
    clean = sample.clean
    if observation.shape[-1] != restored.shape[-1]:
        factor = restored.shape[-1] // observation.shape[-1]
        observation = observation.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
    titles = ["observation", f"restored, {metrics['psnr']:.2f} dB", "clean"]
    if observation.shape == clean.shape:
        titles[0] += f", {float(psnr(observation[None], clean[None])):.2f} dB"
    images = [observation, restored, clean]
    if sample.guide is not None:
        images.insert(0, sample.guide)
        titles.insert(0, "flash (network input)")
    figure, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3))
    for axis, image, title in zip(axes, images, titles, strict=True):
        array = image.clamp(0, 1).permute(1, 2, 0).numpy()
        axis.imshow(array.squeeze(), cmap="gray" if array.shape[-1] == 1 else None)
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.suptitle(f"{TASKS[task]} (configs/{task}.yaml, {metrics['steps']} steps)", fontsize=10)
    figure.tight_layout()
    figure.savefig(out / f"{task}.png", dpi=80)
    plt.close(figure)


def curves(run_dir: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for tag, label in (("psnr", "output EMA (restored)"), ("psnr_last", "raw output")):
        steps, values = scalars(run_dir, tag)
        axis.plot(steps, values, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("PSNR (dB)")
    axis.set_title("denoising the sample, sigma 25 (configs/denoise.yaml)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "psnr.png", dpi=80)
    plt.close(figure)


def heatmap(run_dir: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    with open(run_dir / "fbc.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    bands = sorted(k for k in rows[0] if k.startswith("fbc/band_"))
    values = torch.tensor([[float(r[b]) for r in rows] for b in bands])
    steps = [int(r["step"]) for r in rows]
    figure, axis = plt.subplots(figsize=(6, 2.8))
    shown = axis.imshow(
        values.numpy(),
        aspect="auto",
        origin="lower",
        vmin=0,
        vmax=1,
        extent=(steps[0], steps[-1], -0.5, len(bands) - 0.5),
    )
    axis.set_xlabel("step")
    axis.set_ylabel("band (0 = lowest frequencies)")
    axis.set_title("FBC of the output against the noisy target", fontsize=10)
    figure.colorbar(shown, ax=axis)
    figure.tight_layout()
    figure.savefig(out / "fbc.png", dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "figures")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=None, help="override every config's steps")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        raise SystemExit('error: matplotlib is missing; pip install -e ".[plots]"') from None
    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dip-figures-") as scratch:
        for task in args.tasks:
            module, run_dir = run(task, Path(scratch) / task, args.steps)
            panel(task, module, run_dir, args.out)
            if task == "denoise":
                curves(run_dir, args.out)
                heatmap(run_dir, args.out)
            print(f"{task}: {args.out / (task + '.png')}", flush=True)


if __name__ == "__main__":
    main()
