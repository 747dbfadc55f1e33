"""``fitting_curves``: MSE against the fitting target per step (log step axis) for a natural
image, the same with Gaussian noise (sigma 25), its pixels shuffled, and uniform noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dip_lightning.experiments.runner import (
    Context,
    Experiment,
    load_rgb,
    prepared_image,
    pyplot,
    run_fit,
    save_figure,
    save_rgb,
    skip_net_args,
    write_csv,
)
from dip_lightning.seeding import stream_generator


def fitting_targets(image: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The four targets of the fitting curves, from a natural ``(C, H, W)`` image in [0, 1]:
    the image, the image plus Gaussian noise of std 25/255 (clipped), its pixels shuffled
    (one permutation of the positions for all channels), and uniform noise.

    >>> targets = fitting_targets(torch.rand(3, 4, 5))
    >>> sorted(targets), targets["shuffled"].shape
    (['natural', 'noise', 'noisy', 'shuffled'], torch.Size([3, 4, 5]))
    """
    generator = stream_generator(seed, "observation")
    channels, height, width = image.shape
    noisy = (image + torch.randn(image.shape, generator=generator) * 25 / 255).clamp(0, 1)
    order = torch.randperm(height * width, generator=generator)
    shuffled = image.reshape(channels, -1)[:, order].reshape(image.shape)
    noise = torch.rand(image.shape, generator=generator)
    return {"natural": image, "noisy": noisy, "shuffled": shuffled, "noise": noise}


def fitting_curves(ctx: Context) -> list[Path]:
    image = load_rgb(prepared_image(ctx))
    curves: dict[str, np.ndarray] = {}
    for name, target in fitting_targets(image).items():
        path = save_rgb(target, ctx.inputs_dir / f"target_{name}.png")
        args = ["--data.image", str(path), *skip_net_args(ctx.size)]
        result = run_fit(ctx, "fitting_curves", name, args, {"target": name})
        curves[name] = result.curves["mse_target"]
    steps = np.arange(1, len(next(iter(curves.values()))) + 1)
    rows = [
        {"step": int(s), **{k: float(v[i]) for k, v in curves.items()}} for i, s in enumerate(steps)
    ]
    csv_path = write_csv(ctx.out / "fitting_curves.csv", rows)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = {
        "natural": "natural image",
        "noisy": "natural + noise",
        "shuffled": "shuffled pixels",
        "noise": "uniform noise",
    }
    for name, values in curves.items():
        axis.plot(steps, values, label=labels[name])
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("MSE against the fitting target")
    axis.set_title(f"Fitting curves ({image.shape[-1]}x{image.shape[-2]})")
    axis.grid(alpha=0.3)
    axis.legend()
    return [csv_path, save_figure(figure, ctx.out / "fitting_curves.png")]


EXPERIMENT = Experiment(
    name="fitting_curves",
    description="MSE vs steps: natural, noisy, shuffled, noise",
    run=fitting_curves,
    steps={"tiny": 4, "cpu": 2000, "gpu": 8000},
    order=1,
)
