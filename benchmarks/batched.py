"""Throughput of batched fitting: ``K`` fits at once (``dip fit --batch.seeds K``) against one fit
at a time, for K = 1, 2, 4, 8 at 64 and 128 pixels.

Every measurement runs in its own process, side by side in one run (with ``--repeats N`` the
rows take turns N times and the table gives medians). ``separate`` is one ordinary fit: K images
fitted one after another take K times its step time. ``batched`` is one grouped network for the
K fits. The table gives image-steps per second for both and the peak memory of the process.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
        python benchmarks/batched.py --sizes 64 128 --batches 1 2 4 8 --out batched.json

``--mechanisms`` compares, for the same ``K`` networks, the two ways PyTorch can fit them at once,
at the level of the network's step (perturbed input, forward, MSE, backward, fused Adam; no
metrics or bookkeeping): ``grouped`` (:func:`~dip_lightning.networks.grouped.group_networks`, one
network with grouped convolutions, what ``dip fit --batch.*`` uses) and ``vmap``
(``torch.func.stack_module_state`` + ``functional_call`` under ``torch.func.vmap``, whose batching
rule for convolutions makes grouped convolutions itself; batch norm without running statistics,
``torch.func.replace_all_batch_norm_modules_``). Both start from the same weights and are checked
to give the same first output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from speed import CONFIGS as PAPER_CONFIGS
from speed import _device, _peak_memory_gib, fit_seconds_per_step, measure_in_subprocess

#: ``cpu``: the CPU-size denoising network of ``configs/denoise.yaml`` (64 channels); the others
#: are the paper's networks of ``benchmarks/speed.py``.
CONFIGS: dict[str, dict[str, Any]] = {
    "cpu": {"config": "configs/denoise.yaml", "data": ["--data.noise_sigma", "25"]},
    **PAPER_CONFIGS,
}


def network_step_seconds(spec: dict[str, Any]) -> float:
    """Median seconds of the network-level step of ``spec['batch']`` networks of the config,
    merged by ``spec['variant']`` (``grouped`` or ``vmap``)."""
    import copy
    import tempfile
    import time

    import torch
    import torch.nn.functional as F
    from torch.func import (
        functional_call,
        replace_all_batch_norm_modules_,
        stack_module_state,
        vmap,
    )

    from dip_lightning.cli import DIPCLI
    from dip_lightning.data import sample_image_path
    from dip_lightning.networks.grouped import group_networks, split_output

    config = CONFIGS[spec["config"]]["config"]
    with tempfile.TemporaryDirectory() as work:
        args = ["--config", config, "--data.image", str(sample_image_path()),
                "--trainer.logger", "false", "--trainer.default_root_dir", work]  # fmt: skip
        model = DIPCLI(args=args, run=False).model
    k, size = spec["batch"], spec["size"]
    depth = model.input_depth
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(model.net_factory(depth, 3))
    generator = torch.Generator().manual_seed(0)
    z = torch.rand(k, 1, depth, size, size, generator=generator) * 0.1
    target = torch.rand(k, 1, 3, size, size, generator=generator)
    if spec["variant"] == "grouped":
        net = group_networks(nets)
        params = list(net.parameters())
        flat_z, flat_target = torch.cat(list(z), 1), torch.cat(list(target), 1)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.stack(split_output(net(torch.cat(list(x), 1)), k))

        first = forward(z)
        del flat_z, flat_target
    else:
        base = copy.deepcopy(nets[0]).to("meta")
        replace_all_batch_norm_modules_(base)
        stacked, _ = stack_module_state(nets)
        params = list(stacked.values())

        def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(base, p, (x,))

        def forward(x: torch.Tensor) -> torch.Tensor:
            return vmap(one)(stacked, x)

        first = forward(z)
    with torch.no_grad():
        separate = torch.stack([net(x) for net, x in zip(nets, z, strict=True)])
    assert torch.allclose(first, separate, atol=1e-4), "the merged networks disagree"
    optimizer = torch.optim.Adam(params, lr=0.01, fused=True)
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        noise = torch.randn(z.shape, generator=generator)
        loss = F.mse_loss(forward(z + noise / 30), target) * k
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[spec["warmup"] :])


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One row: ``dip fit`` with ``batch`` seeds as one grouped network, or one ordinary fit;
    with ``--mechanisms``, the network-level step of ``grouped`` or ``vmap``."""
    if spec["variant"] in ("grouped", "vmap"):
        seconds = network_step_seconds(spec)
        device = _device()
        return {**spec, "seconds_per_step": seconds, "device": device,
                "peak_gib": round(_peak_memory_gib(device), 3)}  # fmt: skip

    def batched(image: Path) -> list[str]:
        return [f"--batch.images={json.dumps([str(image)])}", f"--batch.seeds={spec['batch']}"]

    extra = batched if spec["variant"] == "batched" else (lambda image: [])
    seconds = fit_seconds_per_step(
        CONFIGS[spec["config"]], spec["size"], spec["steps"], spec["warmup"], extra
    )
    assert seconds is not None
    device = _device()
    return {**spec, "seconds_per_step": seconds, "device": device,
            "peak_gib": round(_peak_memory_gib(device), 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu", choices=list(CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=7, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="turns of every row")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--mechanisms", action="store_true", help="grouped network against torch.func.vmap"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))), flush=True)
        return
    specs = [
        {
            "config": args.config,
            "size": size,
            "batch": batch,
            "variant": variant,
            "steps": args.steps,
            "warmup": args.warmup,
        }
        for size in args.sizes
        for batch, variant in (
            [(k, v) for k in args.batches for v in ("grouped", "vmap")]
            if args.mechanisms
            else [(1, "separate")] + [(k, "batched") for k in args.batches]
        )
    ]
    turns: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(specs))}
    for turn in range(args.repeats):
        for index, spec in enumerate(specs):
            result = measure_in_subprocess(spec, script=__file__)
            if result is not None:
                turns[index].append(result)
                print(
                    f"turn {turn + 1}: {spec['size']} px {spec['variant']} K={spec['batch']}: "
                    f"{result['seconds_per_step']:.3f} s/step",
                    flush=True,
                )
    rows = []
    for results in turns.values():
        if results:
            row = dict(results[-1])
            row["seconds_per_step"] = statistics.median(r["seconds_per_step"] for r in results)
            row["peak_gib"] = max(r["peak_gib"] for r in results)
            rows.append(row)
    if args.mechanisms:
        print_mechanisms(rows)
    else:
        print_table(rows)
    if args.out:
        machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    """Image-steps per second of each row, and against one fit at a time."""
    single = {r["size"]: r["seconds_per_step"] for r in rows if r["variant"] == "separate"}
    print("\n| size | K | batched s/step | image-steps/s | one at a time | speed-up | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["variant"] != "batched":
            continue
        rate = r["batch"] / r["seconds_per_step"]
        alone = 1 / single[r["size"]] if r["size"] in single else float("nan")
        print(
            f"| {r['size']} | {r['batch']} | {r['seconds_per_step']:.3f} | {rate:.1f} | "
            f"{alone:.1f} | {rate / alone:.2f} | {r['peak_gib']:.2f} |"
        )


def print_mechanisms(rows: list[dict[str, Any]]) -> None:
    """Seconds per network step of the two mechanisms side by side, and their ratio."""
    by_key = {(r["size"], r["batch"], r["variant"]): r for r in rows}
    print(
        "\n| size | K | grouped s/step | vmap s/step | vmap / grouped | peak GiB (grouped, vmap) |"
    )
    print("|---|---|---|---|---|---|")
    for size, batch in sorted({(r["size"], r["batch"]) for r in rows}):
        grouped, vmapped = by_key.get((size, batch, "grouped")), by_key.get((size, batch, "vmap"))
        if grouped is None or vmapped is None:
            continue
        ratio = vmapped["seconds_per_step"] / grouped["seconds_per_step"]
        print(
            f"| {size} | {batch} | {grouped['seconds_per_step']:.3f} | "
            f"{vmapped['seconds_per_step']:.3f} | {ratio:.2f} | "
            f"{grouped['peak_gib']:.2f}, {vmapped['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
