"""``mask_ratio``: random-pixel inpainting at 10% .. 90% missing: final and peak PSNR."""

from __future__ import annotations

from pathlib import Path

from dip_lightning.experiments.runner import (
    Context,
    Experiment,
    prepared_image,
    pyplot,
    run_fit,
    save_figure,
    skip_net_args,
    summary_row,
    write_csv,
)


def mask_ratio(ctx: Context) -> list[Path]:
    image = prepared_image(ctx)
    ratios = [0.1, 0.9] if ctx.size.name == "tiny" else [r / 10 for r in range(1, 10)]
    rows = []
    for ratio in ratios:
        args = ["--data.image", str(image), f"--data.missing_ratio={ratio}"]
        result = run_fit(ctx, "mask_ratio", f"missing_{ratio:.1f}", args + skip_net_args(ctx.size))
        rows.append({"missing_ratio": ratio, **summary_row(result)})
    csv_path = write_csv(ctx.out / "mask_ratio.csv", rows)
    plt = pyplot()
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


EXPERIMENT = Experiment(
    name="mask_ratio",
    description="random-pixel inpainting from 10% to 90% missing",
    run=mask_ratio,
    steps={"tiny": 4, "cpu": 1200, "gpu": 6000},
    order=3,
)
