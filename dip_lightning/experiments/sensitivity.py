"""``sensitivity``: denoising: lr, input depth, input noise ``sigma_p``, input type and input
scale varied one at a time around the config, each with ``--seeds`` seeds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dip_lightning.experiments.runner import (
    Context,
    Experiment,
    Size,
    prepared_image,
    pyplot,
    run_fit,
    save_figure,
    skip_net_args,
    summary_row,
    write_csv,
)

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
    plt = pyplot()
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


EXPERIMENT = Experiment(
    name="sensitivity",
    description="lr, input depth, sigma_p, input type",
    run=sensitivity,
    steps={"tiny": 4, "cpu": 800, "gpu": 3000},
    order=5,
)
