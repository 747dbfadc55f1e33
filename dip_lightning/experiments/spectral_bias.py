"""``spectral_bias``: inpainting (50% missing pixels): FBC per band (output vs clean image)
and PSNR per step, without and with each control of the spectral bias (Lipschitz-bounded
convolutions, lambda 1.6; Gaussian upsampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dip_lightning.experiments.runner import (
    Context,
    Experiment,
    prepared_image,
    pyplot,
    run_fit,
    save_figure,
    skip_net_args,
    write_csv,
)

#: The variants and their overrides of the config's network.
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
    plt = pyplot()
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


EXPERIMENT = Experiment(
    name="spectral_bias",
    description="inpainting: FBC per band and PSNR, with the controls",
    run=spectral_bias,
    steps={"tiny": 4, "cpu": 1500, "gpu": 6000},
    order=2,
)
