"""The honest table: ``dip restore`` against what a user would pick instead, side by side.

On centre crops of a split of the shared images, for each task:

* ``denoise``: Gaussian noise of std ``--sigma`` (25, 8-bit, clipped; seeded per image).
  ``dip restore`` (its default preset, no sigma, no clean image), ``dip restore --preset paper``,
  and BM3D (the ``bm3d`` package) given the true sigma;
* ``inpaint``: 50% of the pixels missing at random (seeded per image, the same pixels in every
  channel). ``dip restore --task inpaint`` (default and ``--preset paper``) and scikit-image's
  ``inpaint_biharmonic``;
* ``super-resolution``: x4 downsampling with the paper's Lanczos kernel to a quarter of the
  crop. ``dip restore --task super-resolution --scale 4`` (default and ``--preset paper``) and
  bicubic upsampling (Pillow's, the paper's baseline); PSNR on the luma with a border of 4
  cropped, as super-resolution papers score it.

``--methods dip-ensemble2`` (or ``dip-ensemble4``) adds ``dip restore --ensemble K``: the default
preset fitted with K seeds one after another and the mean of their images (its first fit is
``dip-default``'s, so the two columns pair up).

PSNR, SSIM and the seconds each method took for each image, in one process, one method after
the other (``--threads`` torch threads; 1 by default). The peers are an optional extra
(``pip install -e ".[peers]"``: ``bm3d`` and ``scikit-image``); a peer that is not installed is
skipped with a reason. Splits: ``test`` (the 9 CBM3D images) is never used to choose a setting;
``tune`` (the colour images of the paper's notebooks) is where settings may be chosen.

    python benchmarks/peers.py --task denoise --split test --out peers

Results are kept per (task, image, method) in ``--out/peers.json``, so an interrupted run goes
on where it stopped; the tables are printed at the end (and with ``--report`` alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dip_lightning.degradations.downsample import Downsample, bicubic_upsample  # noqa: E402
from dip_lightning.io_utils import atomic_write_json  # noqa: E402
from dip_lightning.metrics import psnr, psnr_y, ssim  # noqa: E402

SHARED = Path(os.environ.get("DIP_SHARED", REPO.parent / "shared")) / "data"
SPLITS = {
    "test": ["denoising-cbm3d/*.png"],
    "tune": [
        "dip-paper/kate.png",
        "dip-paper/vase.png",
        "dip-paper/library.png",
        "dip-paper/zebra_GT.png",
        "dip-paper/cave01_01_noflash.jpg",
    ],
}
TASKS = ("denoise", "inpaint", "super-resolution")
PEER = {"denoise": "bm3d", "inpaint": "biharmonic", "super-resolution": "bicubic"}


def split_files(split: str, data: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in SPLITS[split]:
        files.extend(sorted(data.glob(pattern)))
    return files


def centre_crop(path: Path, side: int) -> np.ndarray:
    """A ``side`` x ``side`` RGB centre crop, uint8 ``(H, W, 3)``."""
    image = Image.open(path).convert("RGB")
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)))


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def make_inputs(task: str, clean: np.ndarray, seed: int, folder: Path, sigma: float) -> dict:
    """The observation (and mask) files of ``task`` for ``clean``; paths as strings."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {"clean": str(folder / "clean.png")}
    Image.fromarray(clean).save(paths["clean"])
    if task == "denoise":
        noisy = np.clip(np.round(clean + rng.normal(0.0, sigma, clean.shape)), 0, 255)
        paths["observation"] = str(folder / "noisy.png")
        Image.fromarray(noisy.astype(np.uint8)).save(paths["observation"])
    elif task == "inpaint":
        known = rng.random(clean.shape[:2]) >= 0.5
        paths["mask"] = str(folder / "mask.png")
        Image.fromarray((known * 255).astype(np.uint8)).save(paths["mask"])
        paths["observation"] = str(folder / "masked.png")
        Image.fromarray((clean * known[..., None]).astype(np.uint8)).save(paths["observation"])
    else:
        low = Downsample(4, channels=3)(to_tensor(clean)[None])[0]
        paths["observation"] = str(folder / "low.png")
        Image.fromarray(to_uint8(low)).save(paths["observation"])
    return paths


def score(task: str, restored: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    if task == "super-resolution":
        value = float(psnr_y(restored[None], clean[None], border=4))
    else:
        value = float(psnr(restored[None], clean[None]))
    return {"psnr": value, "ssim": float(ssim(restored[None], clean[None]))}


def run_dip(
    task: str,
    paths: dict,
    preset: str,
    out: Path,
    max_steps: int | None = None,
    ensemble: int = 1,
) -> torch.Tensor:
    from dip_lightning.restore import restore_image

    result = restore_image(
        paths["observation"],
        out,
        task=task,
        mask=paths.get("mask"),
        scale=4 if task == "super-resolution" else None,
        preset=preset,
        max_steps=max_steps,
        ensemble=ensemble,
        progress=False,
    )
    return torch.as_tensor(result.image).float()


def run_peer(task: str, paths: dict, sigma: float) -> torch.Tensor:
    observation = np.asarray(Image.open(paths["observation"]).convert("RGB"), dtype=np.float64)
    if task == "denoise":
        import bm3d

        restored = bm3d.bm3d_rgb(observation / 255.0, sigma_psd=sigma / 255.0)
        return torch.from_numpy(np.clip(restored, 0, 1)).permute(2, 0, 1).float()
    if task == "inpaint":
        from skimage.restoration import inpaint_biharmonic

        missing = np.asarray(Image.open(paths["mask"])) < 128
        filled = inpaint_biharmonic(observation / 255.0, missing, channel_axis=-1)
        return torch.from_numpy(np.clip(filled, 0, 1)).permute(2, 0, 1).float()
    return bicubic_upsample(to_tensor(observation.astype(np.uint8)), 4)


def run_method(
    method: str, task: str, paths: dict, folder: Path, sigma: float, max_steps: int | None
) -> torch.Tensor:
    if method == "peer":
        return run_peer(task, paths, sigma)
    preset = "paper" if method == "dip-paper" else "fast"
    # dip-ensembleK: dip restore --ensemble K with the default preset
    count = int(method.removeprefix("dip-ensemble")) if "ensemble" in method else 1
    return run_dip(task, paths, preset, folder / f"{method}.png", max_steps, count)


def peer_missing(task: str) -> str | None:
    """Why the peer of ``task`` cannot run here, or ``None``."""
    module = {"denoise": "bm3d", "inpaint": "skimage"}.get(task)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{PEER[task]} skipped: {module} is not installed (pip install -e '.[peers]')"
    return None


def report(results: dict[str, Any], task: str, methods: list[str]) -> str:
    rows = [r for r in results.values() if r["task"] == task]
    images = sorted({r["image"] for r in rows})
    if not images:
        return f"no results for {task}"
    head = " | ".join(f"{m} PSNR | SSIM | s" for m in methods)
    lines = [f"| image | {head} |", "|---|" + "---|---|---|" * len(methods)]
    sums: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    for image in images:
        cells = []
        for method in methods:
            record = results.get(f"{task}/{image}/{method}")
            if record is None:
                cells.append(" - | - | - ")
                continue
            cells.append(f"{record['psnr']:.2f} | {record['ssim']:.3f} | {record['seconds']:.0f}")
            sums[method].append((record["psnr"], record["ssim"], record["seconds"]))
        lines.append(f"| {image} | " + " | ".join(cells) + " |")
    means = []
    for method in methods:
        values = sums[method]
        if values:
            psnrs, ssims, secs = zip(*values, strict=True)
            means.append(
                f"{statistics.mean(psnrs):.2f} | {statistics.mean(ssims):.3f} | "
                f"{statistics.mean(secs):.0f}"
            )
        else:
            means.append(" - | - | - ")
    lines.append("| mean | " + " | ".join(means) + " |")
    base = methods[0]
    for other in methods[1:]:
        pairs = [
            (results[f"{task}/{i}/{base}"]["psnr"], results[f"{task}/{i}/{other}"]["psnr"])
            for i in images
            if f"{task}/{i}/{base}" in results and f"{task}/{i}/{other}" in results
        ]
        if pairs:
            gap = statistics.mean(a - b for a, b in pairs)
            lines.append(f"\n{base} - {other}: {gap:+.2f} dB over {len(pairs)} images")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*TASKS, "all"], default="denoise")
    parser.add_argument("--split", choices=list(SPLITS), default="test")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--images", type=int, default=None, help="the first N of the split")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["dip-default", "dip-paper", "peer"],
        choices=["dip-default", "dip-paper", "dip-ensemble2", "dip-ensemble4", "peer"],
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="bound every fit (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("peers"))
    parser.add_argument("--report", action="store_true", help="print the tables of --out only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = args.out / "peers.json"
    results: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    tasks = list(TASKS) if args.task == "all" else [args.task]
    files = split_files(args.split, args.data)[: args.images]
    if not files and not args.report:
        print(f"error: no images of the {args.split} split under {args.data}", file=sys.stderr)
        return 2
    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    for task in tasks if not args.report else []:
        why = peer_missing(task)
        if why and "peer" in args.methods:
            print(why)
        for index, path in enumerate(files):
            clean = centre_crop(path, args.crop)
            folder = args.out / task / path.stem
            paths = make_inputs(task, clean, seed=index, folder=folder, sigma=args.sigma)
            reference = to_tensor(clean)
            for method in args.methods:
                key = f"{task}/{path.stem}/{method}"
                if key in results or (method == "peer" and why):
                    continue
                start = time.perf_counter()
                restored = run_method(method, task, paths, folder, args.sigma, args.max_steps)
                seconds = time.perf_counter() - start
                results[key] = {
                    "task": task,
                    "image": path.stem,
                    "method": method,
                    "seconds": seconds,
                    **score(task, restored, reference),
                }
                atomic_write_json(store, results)
                print(f"{key}: {results[key]['psnr']:.2f} dB in {seconds:.0f} s", flush=True)
    for task in tasks:
        print(f"\n{task} ({args.split} split, {args.crop}x{args.crop} crops; peer: {PEER[task]})\n")
        print(report(results, task, args.methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
