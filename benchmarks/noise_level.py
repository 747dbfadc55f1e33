"""How well ``estimate_sigma`` finds the noise level, over the shared images.

For each image of ``--data`` folders (default: the CBM3D set and the Table-1 images of
``../shared/data``), a ``--crop`` centre crop gets Gaussian noise of each ``--sigmas`` value (on
0-255, clipped to [0, 1] and rounded to 8 bits, as a noisy PNG holds it; seeded per image and
sigma), and the table gives the relative error of :func:`dip_lightning.metrics.estimate_sigma`
and, as the usual alternative, of scikit-image's ``estimate_sigma`` (the median absolute
deviation of the finest diagonal wavelet band; with the ``dev`` extra).

    python benchmarks/noise_level.py --crop 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dip_lightning.metrics import estimate_sigma  # noqa: E402

SHARED = Path(os.environ.get("DIP_SHARED", REPO.parent / "shared")) / "data"


def noisy_crop(path: Path, crop: int, sigma: float, seed: int) -> torch.Tensor:
    """A ``crop`` centre crop of ``path`` (RGB) with 8-bit clipped Gaussian noise of ``sigma``."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    side = min(crop, width, height)
    left, top = (width - side) // 2, (height - side) // 2
    clean = np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0.0, sigma, clean.shape)
    noisy = np.clip(np.round(clean + noise), 0, 255) / 255.0
    return torch.from_numpy(noisy).permute(2, 0, 1)


def skimage_sigma(image: torch.Tensor) -> float | None:
    try:
        from skimage.restoration import estimate_sigma as mad_sigma
    except ImportError:
        return None
    return float(mad_sigma(image.permute(1, 2, 0).numpy(), channel_axis=-1, average_sigmas=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[SHARED / "denoising-cbm3d", SHARED / "inpainting-table1" / "img"],
    )
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[5.0, 15.0, 25.0, 50.0])
    parser.add_argument("--within", type=float, default=0.10, help="relative error counted as good")
    args = parser.parse_args(argv)
    files = [p for folder in args.data for p in sorted(folder.glob("*.png"))]
    if not files:
        print(f"error: no PNG images in {args.data}; set DIP_SHARED or --data", file=sys.stderr)
        return 2
    columns = " | ".join(f"sigma {s:g}" for s in args.sigmas)
    print(f"relative error of the estimate, ours (scikit-image's MAD); {args.crop}x{args.crop}\n")
    print(f"| image | {columns} |\n|---|" + "---|" * len(args.sigmas))
    good = dict.fromkeys(args.sigmas, 0)
    good_mad = dict.fromkeys(args.sigmas, 0)
    worst = dict.fromkeys(args.sigmas, 0.0)
    seconds = []
    for index, path in enumerate(files):
        cells = []
        for k, sigma in enumerate(args.sigmas):
            noisy = noisy_crop(path, args.crop, sigma, seed=1000 * index + k)
            start = time.perf_counter()
            ours = estimate_sigma(noisy) * 255 / sigma - 1
            seconds.append(time.perf_counter() - start)
            mad = skimage_sigma(noisy)
            other = "" if mad is None else f" ({mad * 255 / sigma - 1:+.0%})"
            good_mad[sigma] += mad is not None and abs(mad * 255 / sigma - 1) <= args.within
            cells.append(f"{ours:+.0%}{other}")
            good[sigma] += abs(ours) <= args.within
            worst[sigma] = max(worst[sigma], abs(ours))
        print(f"| {path.stem} | " + " | ".join(cells) + " |")
    print(
        f"\nwithin {args.within:.0%}: "
        + ", ".join(f"sigma {s:g}: {good[s]} of {len(files)} ({good_mad[s]})" for s in args.sigmas)
        + "; worst: "
        + ", ".join(f"{worst[s]:.0%}" for s in args.sigmas)
        + f"; median {np.median(seconds) * 1000:.0f} ms an estimate"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
