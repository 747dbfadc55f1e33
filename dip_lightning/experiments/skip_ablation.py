"""``skip_ablation``: skips at every level, only at levels 3 and 4 (counted from the top, full
resolution being level 1), none, and a U-Net; on inpainting and denoising (the configs
``skip_ablation_inpaint`` and ``skip_ablation_denoise``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dip_lightning.experiments.runner import (
    Context,
    Experiment,
    RunResult,
    Size,
    prepared_image,
    pyplot,
    run_fit,
    save_figure,
    skip_net_args,
    summary_row,
    write_csv,
)


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
    plt = pyplot()
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


EXPERIMENT = Experiment(
    name="skip_ablation",
    description="skips everywhere / levels 3-4 / none / UNet",
    run=skip_ablation,
    steps={"tiny": 4, "cpu": 1200, "gpu": 6000},
    order=4,
)
