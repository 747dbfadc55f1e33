"""``structural_feedback``: denoising (sigma 25) of the 9 CBM3D images (``--images``) without
and with the structural-feedback loss for each ``s_t`` (``lambda`` = ``--feedback-weight``,
0.01, warmed up over the first 10% of the steps): peak PSNR and PSNR at the last step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dip_lightning.errors import ConfigError
from dip_lightning.experiments.runner import (
    SHARED,
    Context,
    Experiment,
    RunResult,
    center_crop,
    load_rgb,
    pyplot,
    run_fit,
    save_figure,
    save_rgb,
    summary_row,
    write_csv,
)

#: The default images: the CBM3D set of the shared reference data.
CBM3D = SHARED / "data" / "denoising-cbm3d"

#: Without feedback, then each similarity ``s_t`` of the feedback loss.
FEEDBACK_VARIANTS: tuple[str, ...] = ("none", "observed_ssim", "temporal_ssim", "edge")


def feedback_images(ctx: Context) -> list[Path]:
    """The images of the feedback experiment: ``--images`` (a folder or one file), else the
    CBM3D set of the shared data; the first ``feedback_images`` of the size, sorted by name."""
    source = ctx.images or CBM3D
    if source.is_file():
        paths = [source]
    elif source.is_dir():
        suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes)
    else:
        raise ConfigError(
            f"no images at {source}; give --images DIR (the CBM3D set, e.g. "
            "../shared/data/denoising-cbm3d) or set DIP_SHARED"
        )
    if not paths:
        raise ConfigError(f"no images in {source}")
    return paths[: ctx.size.feedback_images]


def structural_feedback(ctx: Context) -> list[Path]:
    steps = ctx.steps_for()
    weight = ctx.feedback_weight
    prefix = "--model.init_args.net.init_args"
    levels = min(ctx.size.levels, 4)
    net = [
        f"{prefix}.channels_down={ctx.size.channels}",
        f"{prefix}.channels_up={ctx.size.channels}",
        f"{prefix}.levels={levels}",
        f"--model.init_args.input_depth={ctx.size.input_depth}",
    ]
    rows = []
    results: dict[str, list[RunResult]] = {}
    for path in feedback_images(ctx):
        crop = center_crop(load_rgb(path), ctx.size.feedback_image)
        image = save_rgb(crop, ctx.inputs_dir / f"{path.stem}.png")
        for variant in FEEDBACK_VARIANTS:
            if variant == "none":
                feedback = "--model.init_args.feedback=null"
            else:
                spec = {
                    "class_path": "dip_lightning.losses.StructuralFeedback",
                    "init_args": {
                        "similarity": variant,
                        "weight": weight,
                        "warmup_steps": max(1, steps // 10),
                    },
                }
                feedback = f"--model.init_args.feedback={json.dumps(spec)}"
            args = ["--data.image", str(image), "--data.simulate=true", *net, feedback]
            result = run_fit(ctx, "structural_feedback", f"{path.stem}_{variant}", args)
            results.setdefault(variant, []).append(result)
            rows.append(
                {"image": path.stem, "feedback": variant, "weight": weight, **summary_row(result)}
            )
    csv_path = write_csv(ctx.out / "structural_feedback.csv", rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    keys = [("peak_psnr", "peak PSNR"), ("psnr", f"PSNR at step {steps} (output average)")]
    images = list(dict.fromkeys(r["image"] for r in rows))
    width = 0.8 / len(FEEDBACK_VARIANTS)
    for axis, (key, title) in zip(axes[:2], keys, strict=True):
        for j, variant in enumerate(FEEDBACK_VARIANTS):
            mine = {r["image"]: r[key] for r in rows if r["feedback"] == variant}
            x = np.arange(len(images) + 1) + (j - (len(FEEDBACK_VARIANTS) - 1) / 2) * width
            values = [mine[i] for i in images]
            axis.bar(x, [*values, float(np.mean(values))], width, label=variant)
        axis.set_xticks(np.arange(len(images) + 1), [*images, "mean"], rotation=45, ha="right")
        low = min(r[key] for r in rows)
        axis.set_ylim(low - 1, None)
        axis.set_ylabel("PSNR (dB)")
        axis.set_title(title)
        axis.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    axis = axes[2]
    means = {v: np.mean([r.curves["psnr"] for r in results[v]], axis=0) for v in FEEDBACK_VARIANTS}
    for variant, mean in means.items():
        axis.plot(np.arange(1, len(mean) + 1), mean, label=variant)
    top = max(float(m.max()) for m in means.values())
    axis.set_ylim(max(min(float(m.min()) for m in means.values()), top - 6), top + 0.5)
    axis.set_xlabel("step")
    axis.set_ylabel("mean PSNR (dB)")
    axis.set_title(f"mean over {len(images)} images, lambda {weight}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return [csv_path, save_figure(figure, ctx.out / "structural_feedback.png")]


EXPERIMENT = Experiment(
    name="structural_feedback",
    description="denoising with and without each s_t",
    run=structural_feedback,
    steps={"tiny": 4, "cpu": 600, "gpu": 3000},
    order=6,
)
