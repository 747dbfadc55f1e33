"""Seconds per step and peak memory: a plain PyTorch loop (the authors' way) against ``dip fit``.

Every measurement runs in its own process (peak memory is the process's), side by side in one
run, and reports the median step time after a warm-up. Prints a markdown table and writes JSON.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
        python benchmarks/speed.py --sizes 128 256 --configs denoise --out speed.json

Variants: ``plain`` (fp32 loop over the same network: z + sigma_p * randn -> net -> loss -> Adam),
``fit-fp32`` (``dip fit`` with every speed option off), and ``dip fit`` with one option on at a
time and with all defaults-on together (``fit-fast``). On a CUDA machine the same runs use the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: The paper settings measured: network arguments, task and data options.
CONFIGS: dict[str, dict[str, Any]] = {
    "denoise": {
        "config": "configs/paper/denoise.yaml",
        "net": {"channels_skip": 4, "upsample_mode": "bilinear"},
        "data": ["--data.noise_sigma", "25"],
    },
    "inpaint_text": {
        "config": "configs/paper/inpaint_kate.yaml",
        "net": {"channels_skip": 128, "upsample_mode": "nearest"},
        "data": ["--data.mask", "null", "--data.missing_ratio", "0.5"],
    },
    "sr_x4": {
        "config": "configs/paper/sr_zebra_x4.yaml",
        "net": {"channels_skip": 4, "upsample_mode": "bilinear"},
        "data": ["--data.scale", "4", "--data.simulate", "true"],
    },
}

#: ``dip fit`` variants: extra command-line options.
FIT_VARIANTS: dict[str, list[str]] = {
    "fit-fp32": [],
    "fit-bf16": ["--trainer.precision", "bf16-mixed"],
    "fit-channels-last": ["--model.init_args.channels_last", "true"],
    "fit-bank": ["--model.init_args.perturbation", "bank"],
    "fit-fused-adam": [
        "--model.init_args.optimizer",
        "torch.optim.Adam",
        "--model.init_args.optimizer.init_args.fused",
        "true",
    ],
    "fit-fast": [
        "--trainer.precision",
        "bf16-mixed",
        "--model.init_args.channels_last",
        "true",
        "--model.init_args.perturbation",
        "bank",
    ],
}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _peak_memory_gib(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _test_image(size: int, directory: Path) -> Path:
    import numpy as np
    from PIL import Image

    from dip_lightning.data import sample_image_path

    image = Image.open(sample_image_path()).convert("RGB").resize((size, size), Image.BICUBIC)
    path = directory / f"image_{size}.png"
    Image.fromarray(np.asarray(image)).save(path)
    return path


def run_plain(config: str, size: int, steps: int, warmup: int) -> dict[str, Any]:
    """The authors' loop in fp32: no Lightning, no metrics, the same network and optimiser."""
    import torch
    import torch.nn.functional as F

    from dip_lightning.networks import SkipNet

    device = _device()
    torch.manual_seed(0)
    net = SkipNet(32, 3, **CONFIGS[config]["net"]).to(device)
    z = (torch.rand(1, 32, size, size) * 0.1).to(device)
    target = torch.rand(1, 3, size, size, device=device)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        out = net(z + torch.randn_like(z) / 30)
        loss = F.mse_loss(out, target)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times[warmup:]), "device": device}


def run_fit(config: str, variant: str, size: int, steps: int, warmup: int) -> dict[str, Any]:
    """``dip fit`` through the CLI parser, timed by its own RunArtifacts callback."""
    from dip_lightning.callbacks import RunArtifacts
    from dip_lightning.cli import DIPCLI

    spec = CONFIGS[config]
    with tempfile.TemporaryDirectory() as work:
        image = _test_image(size, Path(work))
        args = [
            "--config",
            str(REPO / spec["config"]),
            "--data.image",
            str(image),
            "--data.clean",
            "null",
            *spec["data"],
            "--trainer.max_steps",
            str(warmup + steps + 1),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            work,
            *FIT_VARIANTS[variant],
        ]
        cli = DIPCLI(args=args, run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        timer = next(c for c in cli.trainer.callbacks if isinstance(c, RunArtifacts))
        timer.warmup = warmup
        return {"seconds_per_step": timer.seconds_per_step(), "device": _device()}


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["variant"] == "plain":
        result = run_plain(spec["config"], spec["size"], spec["steps"], spec["warmup"])
    else:
        result = run_fit(
            spec["config"], spec["variant"], spec["size"], spec["steps"], spec["warmup"]
        )
    result["peak_gib"] = round(_peak_memory_gib(result["device"]), 3)
    return {**spec, **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument(
        "--variants", nargs="+", default=["plain", *FIT_VARIANTS], choices=["plain", *FIT_VARIANTS]
    )
    parser.add_argument("--steps", type=int, default=7, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("speed.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))), flush=True)
        return

    rows = []
    for config in args.configs:
        for size in args.sizes:
            for variant in args.variants:
                spec = {
                    "config": config,
                    "size": size,
                    "variant": variant,
                    "steps": args.steps,
                    "warmup": args.warmup,
                }
                done = subprocess.run(
                    [sys.executable, __file__, "--one", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if done.returncode or not lines:
                    print(f"{config} {size} {variant}: failed\n{done.stderr[-2000:]}", flush=True)
                    continue
                row = json.loads(lines[-1])
                rows.append(row)
                print(
                    f"{config:>12} {size:>4} {variant:>17} {row['seconds_per_step']:.3f} s/step "
                    f"{row['peak_gib']:.2f} GiB",
                    flush=True,
                )
    print_table(rows)
    machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    plain = {
        (r["config"], r["size"]): r["seconds_per_step"] for r in rows if r["variant"] == "plain"
    }
    print("\n| config | size | variant | s/step | x plain fp32 | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = plain.get((r["config"], r["size"]))
        ratio = f"{r['seconds_per_step'] / base:.2f}" if base else "-"
        print(
            f"| {r['config']} | {r['size']} | {r['variant']} | {r['seconds_per_step']:.3f} | "
            f"{ratio} | {r['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
