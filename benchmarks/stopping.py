"""Benchmark of stopping without ground truth: how close the image each criterion returns comes
to the best one, and how many steps it needs.

    python benchmarks/stopping.py                                   # 9 CBM3D crops, 128x128
    python benchmarks/stopping.py --images 3 --crop 96 --inpaint-images 2 --no-reference

Denoising (sigma 25) of centre crops of the CBM3D images (``--data``), and 50% random-pixel
inpainting of centre crops of the paper's Table-1 images with their fixed masks
(``--inpaint-data``). For each image:

1. one fit of ``dip restore``'s preset (the same settings, seeds and 5% held-out pixels) for
   ``--steps`` steps with the three criteria watching (none stops the fit): for each, the step
   it selects, the step at which it stops ``dip restore`` (its patience ran out), and the PSNR of
   its image; beside them the oracle: the best PSNR the run passes through and its step. ``dip
   restore``'s default criterion is the held-out one for denoising and the windowed variance for
   inpainting, so those rows are what ``dip restore`` returns.
2. (denoising, unless ``--no-reference``) the paper's denoising settings (``configs/paper/
   denoise.yaml``: 128-channel skip network, output EMA) for ``--reference-steps`` steps: the
   best PSNR it passes through and its wall time, the reference ``dip restore`` is held to.

Prints markdown tables (the README quotes them) and writes ``stopping.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CRITERIA = ("heldout", "variance", "ema_variance")
WATCHERS = {
    "heldout": "dip_lightning.callbacks.HeldoutStopping",
    "variance": "dip_lightning.callbacks.WindowedVariance",
    "ema_variance": "dip_lightning.callbacks.ExponentialVariance",
}


def centre_crop(image: Image.Image, side: int) -> Image.Image:
    width, height = image.size
    side = min(side, width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def denoising_inputs(
    data: Path, count: int, crop: int, out: Path, skip: int = 0
) -> list[dict[str, Any]]:
    """Noisy/clean pairs: centre crops of the first ``count`` images of ``data`` with Gaussian
    noise of std 25 (seeded per image)."""
    if count == 0:
        return []
    files = sorted(data.glob("*.png"))[: skip + count] if data.is_dir() else []
    if not files:
        raise SystemExit(f"error: no PNG images in {data}; point --data at the CBM3D folder")
    pairs = []
    for index, path in enumerate(files):
        if index < skip:
            continue
        clean = np.asarray(centre_crop(Image.open(path).convert("RGB"), crop), dtype=np.float64)
        rng = np.random.default_rng(index)
        noisy = np.clip(np.round(clean + rng.normal(0, 25, clean.shape)), 0, 255)
        clean_path, noisy_path = out / f"{path.stem}_clean.png", out / f"{path.stem}_noisy.png"
        Image.fromarray(clean.astype(np.uint8)).save(clean_path)
        Image.fromarray(noisy.astype(np.uint8)).save(noisy_path)
        pairs.append({"name": path.stem, "input": noisy_path, "clean": clean_path})
    return pairs


def inpainting_inputs(data: Path, count: int, crop: int, out: Path) -> list[dict[str, Any]]:
    """Centre crops of the Table-1 images and of their fixed 50% masks."""
    images = sorted((data / "img").glob("*.png"))[:count] if data.is_dir() else []
    inputs = []
    for path in images:
        masks = list((data / "mask").glob(f"{path.stem}*"))
        if not masks:
            continue
        clean = centre_crop(Image.open(path).convert("L"), crop)
        mask = centre_crop(Image.open(masks[0]).convert("L"), crop)
        known = np.asarray(mask) > 127
        observed = np.where(known, np.asarray(clean), 0).astype(np.uint8)
        paths = {k: out / f"{path.stem}_{k}.png" for k in ("clean", "mask", "input")}
        clean.save(paths["clean"])
        Image.fromarray((known * 255).astype(np.uint8)).save(paths["mask"])
        Image.fromarray(observed).save(paths["input"])
        inputs.append({"name": path.stem, **paths})
    return inputs


def fit(args: list[str], directory: Path) -> dict[str, Any]:
    """One ``dip fit`` in this process; its ``metrics.json`` and wall time."""
    from dip_lightning.cli import main

    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(
            [
                "fit",
                *args,
                f"--trainer.default_root_dir={directory}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
            ]
        )
    metrics = json.loads((directory / "metrics.json").read_text())
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    return metrics


def watched_fit(item: dict[str, Any], task: str, steps: int, directory: Path) -> dict[str, Any]:
    """``dip restore``'s fit of ``item`` for ``steps`` steps with every criterion watching."""
    from dip_lightning.presets import list_presets
    from dip_lightning.restore import default_patience

    args = [
        "--config",
        str(list_presets()[f"restore/{task}"]),
        f"--data.image={item['input']}",
        f"--data.clean={item['clean']}",
        "--model.init_args.holdout_fraction=0.05",
        f"--trainer.max_steps={steps}",
    ]
    if "mask" in item:
        args.append(f"--data.mask={item['mask']}")
    for name in CRITERIA:
        args += [f"--trainer.callbacks+={WATCHERS[name]}", "--trainer.callbacks.stop=false"]
        patience = default_patience(task.replace("_", "-"), name)  # as dip restore sets it
        if patience is not None:
            args.append(f"--trainer.callbacks.patience={patience}")
    return fit(args, directory)


def reference_fit(item: dict[str, Any], steps: int, directory: Path) -> dict[str, Any]:
    """The paper's denoising settings on ``item`` for ``steps`` steps."""
    from dip_lightning.presets import list_presets

    args = [
        "--config",
        str(list_presets()["paper/denoise"]),
        f"--data.image={item['input']}",
        f"--data.clean={item['clean']}",
        f"--trainer.max_steps={steps}",
    ]
    return fit(args, directory)


def row(item: dict[str, Any], run: dict[str, Any], steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image": item["name"],
        "input_psnr": run.get("input_psnr"),
        "peak_psnr": run["peak_psnr"],
        "peak_step": run["peak_step"],
        "seconds_per_step": run["seconds_per_step"],
    }
    for name in CRITERIA:
        chosen = run["criteria"][name]
        out[name] = {
            "psnr": chosen.get("psnr"),
            "selected_step": chosen.get("selected_step"),
            "steps": chosen.get("would_stop_step") or steps,
        }
    return out


def table(rows: list[dict[str, Any]], reference: bool) -> str:
    head = ["image", "input", "oracle peak (step)"]
    head += [f"{name} (selected / stopped)" for name in CRITERIA]
    if reference:
        head += ["paper-setting peak (step)", "restore - paper peak"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["image"], f"{r['input_psnr']:.2f}", f"{r['peak_psnr']:.2f} ({r['peak_step']})"]
        for name in CRITERIA:
            c = r[name]
            psnr = "-" if c["psnr"] is None else f"{c['psnr']:.2f}"
            cells.append(f"{psnr} ({c['selected_step']} / {c['steps']})")
        if reference:
            ref = r.get("reference")
            if ref:
                cells.append(f"{ref['peak_psnr']:.2f} ({ref['peak_step']})")
                cells.append(f"{r['heldout']['psnr'] - ref['peak_psnr']:+.2f}")
            else:
                cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    mean = ["mean", f"{statistics.mean(r['input_psnr'] for r in rows):.2f}"]
    mean.append(f"{statistics.mean(r['peak_psnr'] for r in rows):.2f}")
    for name in CRITERIA:
        values = [r[name]["psnr"] for r in rows if r[name]["psnr"] is not None]
        used = statistics.mean(r[name]["steps"] for r in rows)
        gap = statistics.mean(r[name]["psnr"] - r["peak_psnr"] for r in rows if r[name]["psnr"])
        mean.append(
            f"{statistics.mean(values):.2f} ({gap:+.2f} dB vs oracle, {used:.0f} steps)"
            if values
            else "-"
        )
    if reference:
        refs = [r for r in rows if r.get("reference")]
        if refs:
            mean.append(f"{statistics.mean(r['reference']['peak_psnr'] for r in refs):.2f}")
            gaps = [r["heldout"]["psnr"] - r["reference"]["peak_psnr"] for r in refs]
            mean.append(f"{statistics.mean(gaps):+.2f} (worst {min(gaps):+.2f})")
        else:
            mean += ["-", "-"]
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "denoising-cbm3d")
    parser.add_argument("--inpaint-data", type=Path, default=SHARED / "inpainting-table1")
    parser.add_argument("--images", type=int, default=9, help="denoising images")
    parser.add_argument("--skip", type=int, default=0, help="start after this many images")
    parser.add_argument("--inpaint-images", type=int, default=3, help="Table-1 images (0: none)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1800, help="steps of the watched fit")
    parser.add_argument("--reference-steps", type=int, default=1500)
    parser.add_argument("--no-reference", action="store_true", help="skip the paper-setting fit")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out = args.out or Path(tempfile.mkdtemp(prefix="dip-stopping-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}

    def save() -> None:
        (out / "stopping.json").write_text(json.dumps(results, indent=1, default=str))

    denoising = []
    for item in denoising_inputs(args.data, args.images, args.crop, out, args.skip):
        run = watched_fit(item, "denoise", args.steps, out / f"denoise_{item['name']}")
        entry = row(item, run, args.steps)
        if not args.no_reference:
            ref = reference_fit(item, args.reference_steps, out / f"paper_{item['name']}")
            entry["reference"] = {
                key: ref[key] for key in ("peak_psnr", "peak_step", "psnr", "wall_seconds")
            }
            entry["reference"]["seconds_per_step"] = ref["seconds_per_step"]
        denoising.append(entry)
        results["denoising"] = denoising
        save()
        print(json.dumps(entry), file=sys.stderr, flush=True)
    inpainting = []
    if args.inpaint_images > 0:
        for item in inpainting_inputs(args.inpaint_data, args.inpaint_images, args.crop, out):
            run = watched_fit(item, "inpaint", args.steps, out / f"inpaint_{item['name']}")
            inpainting.append(row(item, run, args.steps))
            results["inpainting"] = inpainting
            save()
            print(json.dumps(inpainting[-1]), file=sys.stderr, flush=True)
    if denoising:
        print(f"## Denoising, sigma 25, {args.crop}x{args.crop} centre crops, PSNR in dB\n")
        print(table(denoising, reference=not args.no_reference))
    if inpainting:
        print(f"\n## Inpainting, 50% missing, {args.crop}x{args.crop} crops of Table 1\n")
        print(table(inpainting, reference=False))
    print(f"\nwritten to {out / 'stopping.json'}")


if __name__ == "__main__":
    main()
