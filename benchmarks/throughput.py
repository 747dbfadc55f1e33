"""Throughput of ``dip restore`` over a folder: ``--workers 1`` against ``--workers 2`` (and
``--batch-size K`` when asked), side by side in one run, on the same noisy images.

The images are centre crops (``--size``, 96 by default) of the CBM3D denoising set with Gaussian
noise of ``--sigma`` 25 from a seeded generator, written to a temporary folder with their clean
crops. Each setting is one ``dip restore`` process over the folder (its own output folder, the
clean crops as ``--clean``), timed from start to exit; the table gives images per hour and the
ratio to the first setting. Each image's PSNR against its clean crop is read from the setting's
``manifest.json`` (``--clean``); a batched setting scores each fit without a reference, so its
PSNR is computed from the files written (8-bit, as the manifest's). The second table gives each
image's PSNR per setting and its difference from the first setting's.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
        python benchmarks/throughput.py --images 8 --workers 1 2 --out throughput.json

The processes run with that ``GLIBC_TUNABLES`` (glibc's allocator otherwise returns and
refaults memory between steps, which costs more with several processes) whatever the caller's,
and without ``OMP_NUM_THREADS``: each setting uses ``dip restore``'s own thread count (one worker:
all the cores; N workers: the cores divided among them) unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "denoising-cbm3d"
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def make_images(
    source: Path, folder: Path, count: int, size: int, sigma: float, seed: int
) -> list[str]:
    """Write ``count`` noisy centre crops to ``folder/noisy`` and their clean crops to
    ``folder/clean``; their file names."""
    paths = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif"))
    if len(paths) < count:
        raise SystemExit(f"error: {source} holds {len(paths)} images; need {count}")
    rng = np.random.default_rng(seed)
    (folder / "noisy").mkdir(parents=True)
    (folder / "clean").mkdir()
    names = []
    for path in paths[:count]:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
        top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
        if top < 0 or left < 0:
            raise SystemExit(f"error: {path} is smaller than {size}x{size}")
        crop = rgb[top : top + size, left : left + size]
        noisy = np.clip(np.round(crop + rng.normal(0, sigma, crop.shape)), 0, 255)
        name = f"{path.stem}.png"
        Image.fromarray(crop.astype(np.uint8)).save(folder / "clean" / name)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / "noisy" / name)
        names.append(name)
    return names


def file_psnr(path: Path, reference: Path) -> float:
    """PSNR in dB of two 8-bit image files."""
    with Image.open(path) as a, Image.open(reference) as b:
        error = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / max(float(np.mean(error**2)), 1e-12)))


def run_setting(
    folder: Path, setting: dict[str, Any], extra: list[str], names: list[str]
) -> dict[str, Any]:
    """One ``dip restore`` over ``folder/noisy``: its wall time, and each image's PSNR and
    seconds from its manifest (from the files for a batched setting)."""
    out = folder / f"out-{setting['label']}"
    command = [
        sys.executable,
        "-m",
        "dip_lightning",
        "restore",
        str(folder / "noisy"),
        "-o",
        str(out),
        "--workers",
        str(setting["workers"]),
        "--quiet",
        *extra,
    ]
    if setting["batch"] > 1:
        command += ["--batch-size", str(setting["batch"])]
    else:
        command += ["--clean", str(folder / "clean")]
    if setting.get("threads"):
        command += ["--threads", str(setting["threads"])]
    env = {**os.environ, "GLIBC_TUNABLES": TUNABLES}
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # each setting's own threads
        env.pop(key, None)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"error: {' '.join(command)} exited with {done.returncode}")
    entries = json.loads((out / "manifest.json").read_text())["inputs"]
    by_name = {Path(entry["output"]).name: entry for entry in entries}
    psnr, seconds, steps, end_threads = {}, {}, {}, {}
    for name in names:
        entry = by_name[name]
        if entry["status"] != "restored":
            raise SystemExit(f"error: {name}: {entry['status']} in {out / 'manifest.json'}")
        value = entry.get("psnr")
        psnr[name] = value if value is not None else file_psnr(out / name, folder / "clean" / name)
        seconds[name] = entry.get("seconds")
        steps[name] = entry.get("steps")
        end_threads[name] = entry.get("threads")  # the count the fit ended with
    return {
        **setting,
        "wall_seconds": wall,
        "images_per_hour": len(names) / wall * 3600,
        "psnr": psnr,
        "seconds": seconds,
        "steps": steps,
        "end_threads": end_threads,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of clean images")
    parser.add_argument("--images", type=int, default=8, help="how many images")
    parser.add_argument("--size", type=int, default=96, help="centre crop size in pixels")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise sigma (0-255)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="settings")
    parser.add_argument("--batch-size", type=int, default=None, help="also --batch-size K")
    parser.add_argument("--threads", type=int, default=None, help="--threads of each worker")
    parser.add_argument("--max-steps", type=int, default=None, help="dip restore --max-steps")
    parser.add_argument("--patience", type=int, default=None, help="dip restore --patience")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    extra: list[str] = []
    if args.max_steps is not None:
        extra += ["--max-steps", str(args.max_steps)]
    if args.patience is not None:
        extra += ["--patience", str(args.patience)]
    settings = [
        {"label": f"workers{w}", "workers": w, "batch": 1, "threads": args.threads}
        for w in args.workers
    ]
    if args.batch_size and args.batch_size > 1:
        settings.append(
            {
                "label": f"batch{args.batch_size}",
                "workers": 1,
                "batch": args.batch_size,
                "threads": args.threads,
            }
        )
    with tempfile.TemporaryDirectory(prefix="dip-throughput-") as work:
        folder = Path(work)
        names = make_images(args.data, folder, args.images, args.size, args.sigma, args.seed)
        results = [run_setting(folder, setting, extra, names) for setting in settings]
    base = results[0]
    print(
        f"{len(names)} images {args.size}x{args.size}, sigma {args.sigma:g}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})\n"
    )
    print(
        "| setting | threads each | wall s | images/hour | ratio | mean PSNR | max abs PSNR diff |"
    )
    print("|---|---|---|---|---|---|---|")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for result in results:
        diffs = [abs(result["psnr"][n] - base["psnr"][n]) for n in names]
        label = f"--workers {result['workers']}"
        if result["batch"] > 1:
            label += f" --batch-size {result['batch']}"
        threads = result["threads"] or max(1, (cores or 1) // result["workers"])
        print(
            f"| {label} | {threads} | {result['wall_seconds']:.1f} | "
            f"{result['images_per_hour']:.0f} | "
            f"{result['images_per_hour'] / base['images_per_hour']:.2f} | "
            f"{np.mean([result['psnr'][n] for n in names]):.2f} | {max(diffs):.3f} |"
        )
    print()
    # the steps each fit ran: a different stopping step is a different amount of work
    header = " | ".join(f"{r['label']} PSNR" for r in results)
    diffs_header = " | ".join(f"{r['label']} - {base['label']}" for r in results[1:])
    steps_header = " | ".join(f"{r['label']} steps" for r in results)
    # the threads each fit ended with: more than its own where a finished worker's cores
    # were handed to it
    threads_header = " | ".join(f"{r['label']} threads at end" for r in results)
    print(f"| image | {header} | {diffs_header} | {steps_header} | {threads_header} |")
    print("|---" * (1 + 4 * len(results) - 1) + "|")
    for name in names:
        values = " | ".join(f"{r['psnr'][name]:.3f}" for r in results)
        diffs = " | ".join(f"{r['psnr'][name] - base['psnr'][name]:+.3f}" for r in results[1:])
        steps = " | ".join(str(r["steps"].get(name, "-")) for r in results)
        ended = " | ".join(str(r["end_threads"].get(name) or "-") for r in results)
        print(f"| {name} | {values} | {diffs} | {steps} | {ended} |")
    print()
    print("| setting | steps in all | seconds per step, summed over images |")
    print("|---|---|---|")
    for result in results:
        total = sum(int(result["steps"].get(n) or 0) for n in names)
        busy = sum(float(result["seconds"].get(n) or 0) for n in names)
        rate = f"{busy / total:.3f}" if total else "-"
        print(f"| {result['label']} | {total} | {rate} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
