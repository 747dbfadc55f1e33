"""Reproduce the paper's tables: inpainting (Table 1), CBM3D denoising and zebra super-resolution.

Every run is an ordinary ``dip fit`` (:func:`dip_lightning.cli.main`) of a preset in
``configs/paper/`` with the image swapped in; its ``metrics.json`` gives the numbers. The result
is a markdown table with the published numbers beside ours (``--json`` and ``--csv`` also write
one row per run)::

    python benchmarks/reproduce.py --scale cpu --threads 1 --out reproduce.md  # 30-50 minutes
    python benchmarks/reproduce.py --scale paper --out reproduce_paper.md      # a GPU's work
    python benchmarks/reproduce.py --scale cpu --only table1 --limit 1         # Barbara only

``--scale paper`` runs each preset as it is (full images, the notebooks' steps). ``--scale cpu``
runs the same presets, with the paper's networks, on centre crops with fewer steps (see
:data:`CPU_PLAN`): Table 1 on 96x96 crops for 300 steps at lr 0.01 (the paper: full 512x512 or
256x256 images, 11000 steps at lr 0.001), the denoising set on 64x64 crops for 400 steps (the
paper: full images, 3000 steps), zebra on a 128x128 crop of the high-resolution image for 500
steps (the paper: the full image, 2000 steps at x4 and 4000 at x8). The 22 runs took 49 minutes
(32 minutes of CPU time) on a 2-core CPU shared with other jobs; their numbers show the method
working, not the published values, which need the full images and the full schedules. On a
machine shared with other work, ``--threads 1`` is faster than PyTorch's default of one thread
per core (2.7 times per step in one measurement).

The reference images are read from ``--data-root`` (``<repo>/../shared/data`` by default; the
layout is described in its README). Cropped inputs and run directories go to ``--work-dir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = REPO / "configs" / "paper"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
SETS = ("table1", "denoise", "sr")

#: Table 1 of Ulyanov et al. (CVPR 2018), 50% of the pixels missing: (column name, file stem,
#: DIP PSNR, convolutional sparse coding PSNR), in the paper's order.
TABLE1: tuple[tuple[str, str, float, float], ...] = (
    ("Barbara", "barbara", 32.22, 28.14),
    ("Boat", "boat", 33.06, 31.44),
    ("House", "house", 39.16, 34.58),
    ("Lena", "Lena512", 36.16, 35.04),
    ("Peppers", "peppers256", 33.05, 31.11),
    ("C.man", "Cameraman256", 29.8, 27.90),
    ("Couple", "couple", 32.52, 31.18),
    ("Finger", "fingerprint", 32.84, 31.34),
    ("Hill", "hill", 32.77, 32.35),
    ("Man", "man", 32.20, 31.92),
    ("Montage", "montage", 34.54, 28.05),
)
TABLE1_MEAN = 33.48
#: The CBM3D colour images of the denoising table (sigma 25), in ``denoising-cbm3d/``.
CBM3D: tuple[tuple[str, str], ...] = (
    ("Baboon", "image_Baboon512rgb.png"),
    ("F16", "image_F16_512rgb.png"),
    ("House", "image_House256rgb.png"),
    ("Lena", "image_Lena512rgb.png"),
    ("Peppers", "image_Peppers512rgb.png"),
    ("kodim01", "kodim01.png"),
    ("kodim02", "kodim02.png"),
    ("kodim03", "kodim03.png"),
    ("kodim12", "kodim12.png"),
)
#: Published means of the denoising table (sigma 25, 9 images): DIP with the output EMA, CBM3D.
DENOISE_MEAN = {"DIP (EMA 0.99)": 30.43, "CBM3D": 31.42}
#: Published x4 super-resolution means (Y channel, 4-pixel border): zebra is one of Set14.
SR_SET14_X4 = {"DIP": 27.00, "bicubic": 26.05}


@dataclass(frozen=True)
class CpuSetting:
    """How ``--scale cpu`` shrinks a set: centre crop (pixels per side; of the high-resolution
    image for super-resolution), steps, and other options of the preset."""

    crop: int
    steps: int
    overrides: tuple[tuple[str, str], ...] = ()


#: ``--scale cpu`` per set; everything else is the preset's (the paper's 128-channel networks).
#: Measured on a 2-core CPU shared with other jobs, with ``--threads 1``, a step took 0.2-0.3 s at
#: 64x64, 0.3-0.6 s at 96x96 and 0.44-0.62 s at 128x128: 49 minutes for the 22 runs (32 minutes
#: of CPU time).
CPU_PLAN: dict[str, CpuSetting] = {
    # lr 0.01 instead of 0.001: 11000 steps do not fit; at the larger rate the PSNR is within
    # about 0.5 dB of its 600-step value after 300 steps
    "table1": CpuSetting(crop=96, steps=300, overrides=(("model.init_args.lr", "0.01"),)),
    "denoise": CpuSetting(crop=64, steps=400),
    "sr": CpuSetting(crop=128, steps=500),
}

#: The columns of ``--csv`` (and the keys of each run in ``--json``).
RESULT_FIELDS = (
    "set",
    "image",
    "config",
    "crop",
    "steps",
    "input_psnr",
    "psnr",
    "psnr_y",
    "bicubic_psnr",
    "bicubic_psnr_y",
    "ssim",
    "peak_psnr",
    "peak_step",
    "published_dip",
    "published_csc",
    "seconds",
    "seconds_per_step",
)


@dataclass
class Job:
    """One fit: a preset, the files it reads and the overrides that make it this run."""

    set: str
    name: str
    config: Path
    args: list[str]
    published: dict[str, float | None] = field(default_factory=dict)
    factor: int = 1


@dataclass
class Plan:
    """How one ``--scale`` runs: crops, steps and overrides per set."""

    scale: str
    crop: int | None
    steps: int | None
    overrides: list[str]

    def crop_for(self, set_name: str) -> int | None:
        if self.crop is not None:
            return self.crop
        return CPU_PLAN[set_name].crop if self.scale == "cpu" else None

    def steps_for(self, set_name: str) -> int | None:
        if self.steps is not None:
            return self.steps
        return CPU_PLAN[set_name].steps if self.scale == "cpu" else None

    def set_for(self, set_name: str) -> list[str]:
        pairs = CPU_PLAN[set_name].overrides if self.scale == "cpu" else ()
        args: list[str] = []
        for key, value in pairs:
            args += [f"--{key}", value]
        return args + self.overrides


def center_crop(source: Path, target: Path, size: int, multiple: int = 1) -> Path:
    """Write the centred ``size`` x ``size`` region of ``source`` (smaller images stay whole;
    each side is cut down to a multiple of ``multiple``) as a PNG at ``target``."""
    with Image.open(source) as image:
        width, height = image.size
        w = min(size, width) // multiple * multiple
        h = min(size, height) // multiple * multiple
        left, top = (width - w) // 2, (height - h) // 2
        target.parent.mkdir(parents=True, exist_ok=True)
        image.crop((left, top, left + w, top + h)).save(target)
    return target


def need(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: {path} not found; point --data-root at the reference images")
    return path


def build_jobs(
    sets: Sequence[str], root: Path, work: Path, plan: Plan, limit: int | None
) -> list[Job]:
    """The runs of the selected sets, with their inputs cropped into ``work`` when asked."""
    jobs: list[Job] = []
    inputs = work / "inputs"
    if "table1" in sets:
        crop = plan.crop_for("table1")
        for column, stem, dip, csc in TABLE1[:limit]:
            image = need(root / "inpainting-table1" / "img" / f"{stem}.png")
            mask = need(root / "inpainting-table1" / "mask" / f"{stem}.png")
            if crop:
                image = center_crop(image, inputs / "table1" / f"{stem}.png", crop)
                mask = center_crop(mask, inputs / "table1" / f"{stem}_mask.png", crop)
            args = ["--data.image", str(image), "--data.mask", str(mask)]
            args += ["--data.missing_ratio", "0", "--data.simulate", "true"]
            jobs.append(
                Job(
                    "table1",
                    column,
                    PAPER_CONFIGS / "restore_barbara.yaml",
                    args,
                    {"dip": dip, "csc": csc},
                )
            )
    if "denoise" in sets:
        crop = plan.crop_for("denoise")
        for name, file in CBM3D[:limit]:
            image = need(root / "denoising-cbm3d" / file)
            if crop:
                image = center_crop(image, inputs / "denoise" / file, crop)
            args = ["--data.image", str(image), "--data.noise_sigma", "25"]
            jobs.append(Job("denoise", name, PAPER_CONFIGS / "denoise.yaml", args))
    if "sr" in sets:
        crop = plan.crop_for("sr")
        for factor in (4, 8)[:limit]:
            image = need(root / "dip-paper" / "zebra_GT.png")
            if crop:
                image = center_crop(image, inputs / "sr" / f"zebra_x{factor}.png", crop, factor)
            args = ["--data.image", str(image), "--data.scale", str(factor)]
            args += ["--data.simulate", "true"]
            jobs.append(
                Job(
                    "sr",
                    f"zebra x{factor}",
                    PAPER_CONFIGS / f"sr_zebra_x{factor}.yaml",
                    args,
                    factor=factor,
                )
            )
    return jobs


def run(job: Job, plan: Plan, runs: Path) -> dict[str, float]:
    """``dip fit`` of one job; returns its ``metrics.json``."""
    from dip_lightning.cli import main

    version = job.name.replace(" ", "_").replace(".", "")
    args = ["fit", "--config", str(job.config), *job.args]
    steps = plan.steps_for(job.set)
    if steps is not None:
        args += ["--trainer.max_steps", str(steps)]
    args += plan.set_for(job.set)
    args += [
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.class_path", "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.logger.init_args.name", job.set,
        "--trainer.logger.init_args.version", version,
    ]  # fmt: skip
    main(args)
    metrics: dict[str, float] = json.loads((runs / job.set / version / "metrics.json").read_text())
    return metrics


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def mean(values: Sequence[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.fmean(numbers) if numbers else None


def report(results: list[tuple[Job, dict[str, float]]], plan: Plan) -> str:
    """The markdown tables of ``results``."""
    lines: list[str] = []
    by_set: dict[str, list[tuple[Job, dict[str, float]]]] = {}
    for job, metrics in results:
        by_set.setdefault(job.set, []).append((job, metrics))

    def setting(set_name: str, paper: str) -> str:
        crop, steps = plan.crop_for(set_name), plan.steps_for(set_name)
        if plan.scale == "paper" and crop is None and steps is None and not plan.overrides:
            return f"Settings: {paper} (the paper's)."
        extra = " ".join(plan.set_for(set_name))
        parts = [f"centre crop {crop}x{crop}" if crop else "full images"]
        parts.append(f"{steps} steps" if steps else "the preset's steps")
        if extra:
            parts.append(f"overrides `{extra}`")
        return f"Settings: {paper}, with {', '.join(parts)} (`--scale {plan.scale}`)."

    if "table1" in by_set:
        rows = by_set["table1"]
        lines += [
            "### Inpainting, 50% of the pixels missing (Table 1; PSNR, dB)",
            "",
            setting("table1", "`configs/paper/restore_barbara.yaml` with the fixed masks"),
            "",
            "| image | masked input | ours | published DIP | published CSC | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for job, m in rows:
            lines.append(
                f"| {job.name} | {fmt(m.get('input_psnr'))} | {fmt(m.get('psnr'))} | "
                f"{fmt(job.published.get('dip'))} | {fmt(job.published.get('csc'))} | "
                f"{m.get('seconds', 0):.0f} |"
            )
        dip_mean = (
            TABLE1_MEAN
            if len(rows) == len(TABLE1)
            else mean([j.published.get("dip") for j, _ in rows])
        )
        lines.append(
            f"| mean | {fmt(mean([m.get('input_psnr') for _, m in rows]))} | "
            f"{fmt(mean([m.get('psnr') for _, m in rows]))} | {fmt(dip_mean)} | "
            f"{fmt(mean([j.published.get('csc') for j, _ in rows]))} | |"
        )
        lines.append("")
    if "denoise" in by_set:
        rows = by_set["denoise"]
        lines += [
            "### Denoising, sigma 25 (CBM3D images; PSNR, dB)",
            "",
            setting("denoise", "`configs/paper/denoise.yaml` (output EMA 0.99, 3000 steps)"),
            "",
            "| image | noisy input | ours | seconds |",
            "|---|---|---|---|",
        ]
        for job, m in rows:
            lines.append(
                f"| {job.name} | {fmt(m.get('input_psnr'))} | {fmt(m.get('psnr'))} | "
                f"{m.get('seconds', 0):.0f} |"
            )
        lines.append(
            f"| mean | {fmt(mean([m.get('input_psnr') for _, m in rows]))} | "
            f"{fmt(mean([m.get('psnr') for _, m in rows]))} | |"
        )
        published = ", ".join(f"{k} {v:.2f}" for k, v in DENOISE_MEAN.items())
        lines += [
            "",
            f"Published means over the 9 images (per-image values not given): {published}.",
        ]
        lines.append("")
    if "sr" in by_set:
        rows = by_set["sr"]
        lines += [
            "### Super-resolution of zebra (PSNR, dB; Y: luma with a border of the factor)",
            "",
            setting("sr", "`configs/paper/sr_zebra_x4.yaml` / `sr_zebra_x8.yaml`"),
            "",
            "| image | bicubic Y | ours Y | bicubic RGB | ours RGB | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for job, m in rows:
            lines.append(
                f"| {job.name} | {fmt(m.get('bicubic_psnr_y'))} | {fmt(m.get('psnr_y'))} | "
                f"{fmt(m.get('bicubic_psnr'))} | {fmt(m.get('psnr'))} | {m.get('seconds', 0):.0f} |"
            )
        published = ", ".join(f"{k} {v:.2f}" for k, v in SR_SET14_X4.items())
        lines += [
            "",
            f"Published x4 means over Set14, which holds zebra (no per-image values): {published}.",
            "",
        ]
    return "\n".join(lines)


def result_rows(results: list[tuple[Job, dict[str, float]]], plan: Plan) -> list[dict[str, object]]:
    """One flat record per run (the fields of :data:`RESULT_FIELDS`; ``None`` when not known)."""
    rows: list[dict[str, object]] = []
    for job, m in results:
        row: dict[str, object] = {
            "set": job.set,
            "image": job.name,
            "config": job.config.relative_to(REPO).as_posix()
            if job.config.is_relative_to(REPO)
            else str(job.config),
            "crop": plan.crop_for(job.set),
            "steps": m.get("steps"),
            "published_dip": job.published.get("dip"),
            "published_csc": job.published.get("csc"),
        }
        for key in RESULT_FIELDS:
            if key not in row:
                value = m.get(key)
                row[key] = value if value is None or math.isfinite(value) else None
        rows.append({key: row[key] for key in RESULT_FIELDS})
    return rows


def write_json(
    path: Path,
    rows: list[dict[str, object]],
    plan: Plan,
    minutes: float,
    argv: list[str],
    threads: int,
) -> None:
    """The runs and what made them: arguments, scale, plan, machine, published means."""
    import torch

    document = {
        "scale": plan.scale,
        "arguments": argv,
        "minutes": round(minutes, 2),
        "plan": {
            name: {
                "crop": plan.crop_for(name),
                "steps": plan.steps_for(name),
                "overrides": plan.set_for(name),
            }
            for name in SETS
        },
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": threads,
        },
        "published": {
            "table1_dip_mean": TABLE1_MEAN,
            "denoise_means": DENOISE_MEAN,
            "sr_set14_x4_means": SR_SET14_X4,
        },
        "runs": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reproduce.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scale",
        choices=("cpu", "paper"),
        default="cpu",
        help="cpu: centre crops and fewer steps (Table 1: 96x96, 300 steps at lr 0.01; "
        "denoising: 64x64, 400 steps; zebra: 128x128, 500 steps; 30-50 minutes on 2 cores); "
        "paper: the presets as they are (default: cpu)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=DEFAULT_DATA_ROOT,
        help=f"the reference images (default: {DEFAULT_DATA_ROOT})",
    )
    parser.add_argument(
        "--only", choices=SETS, action="append", help="run only this set (repeatable; default: all)"
    )
    parser.add_argument("--limit", type=int, help="run only the first N images of each set")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument(
        "--json", type=Path, help="also write every run's numbers and the settings as JSON"
    )
    parser.add_argument("--csv", type=Path, help="also write every run's numbers as CSV")
    parser.add_argument(
        "--threads",
        type=int,
        help="PyTorch threads per run (default: PyTorch's, one per core; 1 is faster on a "
        "machine shared with other work)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="cropped inputs and run directories (default: a temporary directory)",
    )
    parser.add_argument("--crop", type=int, help="centre crop (pixels per side) for every set")
    parser.add_argument("--steps", type=int, help="steps of every run")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dip fit option for every run, e.g. "
        "model.init_args.net.init_args.channels_down=64 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    for option in ("crop", "steps", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the selected sets and print (and with ``--out`` write) the markdown table."""
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    overrides: list[str] = []
    for item in args.overrides:
        key, value = item.split("=", 1)
        overrides += [f"--{key.removeprefix('--')}", value]
    plan = Plan(args.scale, args.crop, args.steps, overrides)
    sets = tuple(args.only) if args.only else SETS
    root = args.data_root.resolve()
    need(root)
    default_threads = torch.get_num_threads()
    threads = args.threads or default_threads
    try:
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory(prefix="dip-reproduce-") as tmp:
            work = (args.work_dir or Path(tmp)).resolve()
            jobs = build_jobs(sets, root, work, plan, args.limit)
            results: list[tuple[Job, dict[str, float]]] = []
            start = time.perf_counter()
            for index, job in enumerate(jobs, 1):
                print(f"[{index}/{len(jobs)}] {job.set}: {job.name}", file=sys.stderr, flush=True)
                results.append((job, run(job, plan, work / "runs")))
            minutes = (time.perf_counter() - start) / 60
    finally:
        torch.set_num_threads(default_threads)
    header = (
        f"## Deep Image Prior: reproduction (`--scale {args.scale}`, {len(jobs)} runs, "
        f"{minutes:.1f} minutes)\n\n"
    )
    table = header + report(results, plan)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    if args.json is not None or args.csv is not None:
        rows = result_rows(results, plan)
        if args.json is not None:
            write_json(args.json, rows, plan, minutes, argv, threads)
        if args.csv is not None:
            write_csv(args.csv, rows)
    return table


if __name__ == "__main__":
    main()
