"""Throughput of batched fitting: ``K`` fits at once (``dip fit --batch.seeds K``) against one fit
at a time, for K = 1, 2, 4, 8 at 64 and 128 pixels.

Every measurement runs in its own process, side by side in one run (with ``--repeats N`` the
rows take turns N times and the table gives medians). ``separate`` is one ordinary fit: K images
fitted one after another take K times its step time. ``batched`` is one grouped network for the
K fits. The table gives image-steps per second for both and the peak memory of the process.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
        python benchmarks/batched.py --sizes 64 128 --batches 1 2 4 8 --out batched.json
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


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One row: ``dip fit`` with ``batch`` seeds as one grouped network, or one ordinary fit."""

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
        for batch, variant in [(1, "separate")] + [(k, "batched") for k in args.batches]
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


if __name__ == "__main__":
    main()
