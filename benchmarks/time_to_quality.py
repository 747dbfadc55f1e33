"""Time to quality: ``dip restore`` against a long fp32 fit with the paper's settings.

For each of the first ``--images`` CBM3D images: a ``--crop`` centre crop with Gaussian noise of
std 25 (8-bit, seeded per image, as in ``benchmarks/stopping.py``), then

1. the reference: ``dip fit`` with the paper's denoising settings (``configs/paper/denoise.yaml``,
   fp32, 128-channel skip network, output EMA) for ``--reference-steps`` steps on the noisy
   image, with the clean one known: its best PSNR and its wall time;
2. ``dip restore noisy.png -o restored.png`` with its defaults (no clean image, it stops by
   itself): its wall time, the whole command, and the PSNR of what it wrote.

The target: ``dip restore`` within ``--within`` dB (0.5) of the reference's best PSNR in at most
a third of the reference's wall time. Both run in this process, one after the other.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
        python benchmarks/time_to_quality.py --images 3 --crop 128 --out ttq

Prints a markdown table and writes ``time_to_quality.json`` under ``--out``; finished images
found there are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stopping import SHARED, denoising_inputs, reference_fit  # the same inputs and fit


def psnr(path: Path, clean: Path) -> float:
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(clean).convert("RGB"), dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def restore(item: dict[str, Any], directory: Path, extra: list[str]) -> dict[str, Any]:
    from dip_lightning.cli import main

    directory.mkdir(parents=True, exist_ok=True)
    output, metrics = directory / "restored.png", directory / "metrics.json"
    started = time.perf_counter()
    main(
        [
            "restore",
            str(item["input"]),
            "-o",
            str(output),
            "--metrics",
            str(metrics),
            "--quiet",
            "--overwrite",
            *extra,
        ]
    )
    seconds = time.perf_counter() - started
    return {
        "psnr": psnr(output, item["clean"]),
        "wall_seconds": round(seconds, 1),
        "steps": json.loads(metrics.read_text()).get("steps"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "denoising-cbm3d")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--reference-steps", type=int, default=1500)
    parser.add_argument("--within", type=float, default=0.5, help="dB")
    parser.add_argument(
        "--restore-args", nargs=argparse.REMAINDER, default=[], help="extra dip restore options"
    )
    parser.add_argument("--out", type=Path, default=Path("time_to_quality"))
    args = parser.parse_args(argv)
    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "time_to_quality.json"
    done: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {}
    rows = []
    for item in denoising_inputs(args.data, args.images, args.crop, args.out):
        key = f"{item['name']}:{args.reference_steps}:{' '.join(args.restore_args)}"
        if key not in done:
            ref = reference_fit(item, args.reference_steps, args.out / f"paper_{item['name']}")
            ours = restore(item, args.out / f"restore_{item['name']}", args.restore_args)
            done[key] = {
                "image": item["name"],
                "reference_peak_psnr": ref["peak_psnr"],
                "reference_peak_step": ref["peak_step"],
                "reference_seconds": ref["wall_seconds"],
                "restore_psnr": ours["psnr"],
                "restore_seconds": ours["wall_seconds"],
                "restore_steps": ours["steps"],
            }
            store.write_text(json.dumps(done, indent=1) + "\n")
        rows.append(done[key])
        r = rows[-1]
        print(
            f"{r['image']}: reference {r['reference_peak_psnr']:.2f} dB, "
            f"{r['reference_seconds']:.0f} s; restore {r['restore_psnr']:.2f} dB, "
            f"{r['restore_seconds']:.0f} s",
            flush=True,
        )
    print(
        f"\nDenoising, sigma 25, {args.crop}x{args.crop} crops; reference: paper settings, fp32, "
        f"{args.reference_steps} steps (best PSNR it passes through)\n"
    )
    print(
        "| image | reference best PSNR (step) | reference wall | dip restore PSNR | "
        "dip restore wall (steps) | PSNR gap | time ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gap = r["restore_psnr"] - r["reference_peak_psnr"]
        ratio = r["restore_seconds"] / r["reference_seconds"]
        print(
            f"| {r['image']} | {r['reference_peak_psnr']:.2f} ({r['reference_peak_step']}) | "
            f"{r['reference_seconds']:.0f} s | {r['restore_psnr']:.2f} | "
            f"{r['restore_seconds']:.0f} s ({r['restore_steps']}) | {gap:+.2f} dB | {ratio:.2f} |"
        )
    gaps = [r["restore_psnr"] - r["reference_peak_psnr"] for r in rows]
    ratios = [r["restore_seconds"] / r["reference_seconds"] for r in rows]
    met = all(g >= -args.within for g in gaps) and all(q <= 1 / 3 for q in ratios)
    print(
        f"\nmean gap {statistics.mean(gaps):+.2f} dB (worst {min(gaps):+.2f}), mean time ratio "
        f"{statistics.mean(ratios):.2f} (worst {max(ratios):.2f}); target "
        f"(within {args.within} dB in at most 1/3 of the time on every image): "
        f"{'met' if met else 'not met'}"
    )


if __name__ == "__main__":
    main()
