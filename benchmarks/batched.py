"""Throughput of K Deep Image Prior fits: one after another against one grouped fit.

The network is the CPU-size denoising skip network of ``configs/denoise.yaml`` (its network
arguments, input depth, input type, ``sigma_p`` and learning rate). Each fit is the plain loop
``z + sigma_p * randn -> net -> MSE to a target -> Adam``; the grouped fit runs the K networks
as one module (:func:`dip_lightning.networks.group_networks`) with the sum of the K per-image
losses. Times are medians over the measured steps, after a warm-up.

    python benchmarks/batched.py --sizes 64 128 --ks 1 2 4 8 --steps 20 --json batched.json

"Seconds per step" is the time to advance all K images by one step: the sum of the K separate
fits' median step times, or the grouped fit's median step time. "Images per second" is K
divided by it. The K separate fits are the first K of ``max(--ks)`` fits run once per size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from dip_lightning.networks import SkipNet, group_networks, split_output
from dip_lightning.networks.inputs import make_input

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "denoise.yaml"


def denoise_settings(path: Path = CONFIG) -> dict[str, Any]:
    """Network arguments, input depth and type, ``sigma_p`` and learning rate of the config."""
    model = yaml.safe_load(path.read_text())["model"]["init_args"]
    return {
        "net": dict(model["net"]["init_args"]),
        "input_depth": int(model.get("input_depth", 32)),
        "input_type": str(model.get("input_type", "uniform")),
        "sigma_p": float(model.get("sigma_p", 1 / 30)),
        "lr": float(model.get("lr", 0.01)),
    }


def _network(settings: dict[str, Any], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return SkipNet(settings["input_depth"], 3, **settings["net"])


def _data(settings: dict[str, Any], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed input ``z`` and a random target image of one fit."""
    generator = torch.Generator().manual_seed(1000 + seed)
    z = make_input(settings["input_type"], settings["input_depth"], size, size, generator=generator)
    target = torch.rand(1, 3, size, size, generator=generator)
    return z, target


def _median_step(
    net: nn.Module,
    z: torch.Tensor,
    loss_fn: Any,
    settings: dict[str, Any],
    steps: int,
    warmup: int,
) -> float:
    """Median seconds per Adam step of ``net`` on ``z`` (after ``warmup`` steps)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=settings["lr"])
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(z + settings["sigma_p"] * torch.randn_like(z)))
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def time_separate(
    settings: dict[str, Any], size: int, k: int, steps: int, warmup: int
) -> list[float]:
    """Median step time of each of ``k`` separate fits, run one after another."""
    medians = []
    for seed in range(k):
        net = _network(settings, seed)
        z, target = _data(settings, size, seed)
        medians.append(
            _median_step(net, z, lambda y, t=target: F.mse_loss(y, t), settings, steps, warmup)
        )
    return medians


def time_grouped(settings: dict[str, Any], size: int, k: int, steps: int, warmup: int) -> float:
    """Median step time of one grouped fit of ``k`` networks."""
    grouped = group_networks([_network(settings, seed) for seed in range(k)])
    data = [_data(settings, size, seed) for seed in range(k)]
    z = torch.cat([d[0] for d in data], 1)
    targets = [d[1] for d in data]

    def loss_fn(y: torch.Tensor) -> torch.Tensor:
        outs = split_output(y, k)
        return torch.stack([F.mse_loss(o, t) for o, t in zip(outs, targets, strict=True)]).sum()

    return _median_step(grouped, z, loss_fn, settings, steps, warmup)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| size | K | separate s/step | separate img/s | grouped s/step | grouped img/s "
        "| speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['k']} | {r['separate_seconds_per_step']:.4f} | "
            f"{r['separate_images_per_second']:.2f} | {r['grouped_seconds_per_step']:.4f} | "
            f"{r['grouped_images_per_second']:.2f} | {r['speedup']:.2f} |"
        )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per fit")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps per fit first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if min(args.ks) < 1 or min(args.sizes) < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--ks, --sizes and --steps must be positive and --warmup non-negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = denoise_settings()
    multiple = 2 ** int(settings["net"].get("levels", 5))
    if any(size % multiple for size in args.sizes):
        parser.error(f"--sizes must be multiples of {multiple} (the network's levels)")

    rows = []
    for size in args.sizes:
        separate = time_separate(settings, size, max(args.ks), args.steps, args.warmup)
        for k in sorted(args.ks):
            grouped = time_grouped(settings, size, k, args.steps, args.warmup)
            separate_step = sum(separate[:k])
            row = {
                "size": size,
                "k": k,
                "separate_seconds_per_step": separate_step,
                "separate_images_per_second": k / separate_step,
                "grouped_seconds_per_step": grouped,
                "grouped_images_per_second": k / grouped,
                "speedup": separate_step / grouped,
            }
            rows.append(row)
            print(
                f"{size:>4} K={k:<2} separate {separate_step:.4f} s/step, grouped {grouped:.4f} "
                f"s/step ({row['speedup']:.2f}x)",
                flush=True,
            )
    print_table(rows)
    if args.json is not None:
        machine = {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        setup = {"steps": args.steps, "warmup": args.warmup, **settings}
        payload = {"machine": machine, "setup": setup, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
