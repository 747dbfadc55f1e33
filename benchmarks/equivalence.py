"""Do the speed options change the result? PSNR curves of each option against the fp32 fit.

Denoising (sigma 25) of centre crops of the first ``--images`` CBM3D images with the paper's
settings (``configs/paper/denoise.yaml``), the same seeds for every run: the fp32 fit with every
speed option off, then ``dip fit`` with each option of ``benchmarks/speed.py`` (bf16 autocast,
channels_last, the noise bank, fused Adam, and all the fast ones together). For each run: the
largest PSNR difference to the fp32 curve at every ``--every``-th step up to the fp32 run's
peak, the peak PSNR and step, and seconds per step. An option is equivalent when that
difference stays within ``--tolerance`` (0.2 dB) on every image.

    python benchmarks/equivalence.py --images 3 --crop 96 --steps 1200 --out equivalence

With the variant ``fit-fp64`` (the fp32 fit in float64) a second table gives every run's largest
difference to the float64 curve, the fp32 baseline's included: how far from exact arithmetic
each one is.

Every fit's curve is kept in ``--out`` (``<image>/<variant>.json``); a run found there with the
same arguments is reused, so an interrupted benchmark continues where it stopped. Prints a
markdown table and writes ``equivalence.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import FIT_VARIANTS  # the same switches as the speed table
from stopping import centre_crop

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
#: ``fit-fp64``: the fp32 fit in float64, the same seeds and perturbations (drawn in float32):
#: how far the fp32 curve itself is from exact arithmetic.
VARIANT_ARGS = {
    **FIT_VARIANTS,
    "fit-fp64": [*FIT_VARIANTS["fit-fp32"], "--trainer.precision=64-true"],
}
VARIANTS = [v for v in VARIANT_ARGS if v != "fit-fp32" and "compile" not in v]


def prepare(data: Path, count: int, crop: int, out: Path, skip: int = 0) -> list[Path]:
    """Centre crops of ``count`` images of ``data`` (sorted by name, after the first ``skip``),
    as PNGs."""
    sources = sorted(p for p in data.iterdir() if p.suffix.lower() in {".png", ".jpg", ".tif"})
    if len(sources) < skip + count:
        raise SystemExit(f"{data} holds {len(sources)} images, fewer than {skip + count}")
    paths = []
    for source in sources[skip : skip + count]:
        with Image.open(source) as image:
            crop_image = centre_crop(image.convert("RGB"), crop)
        path = out / "inputs" / f"{source.stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop_image.save(path)
        paths.append(path)
    return paths


def fit_args(image: Path, variant: str, steps: int) -> list[str]:
    """The ``dip fit`` arguments of one run."""
    return [
        "--config",
        str(REPO / "configs" / "paper" / "denoise.yaml"),
        f"--data.image={image}",
        "--data.noise_sigma=25",
        f"--trainer.max_steps={steps}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *VARIANT_ARGS[variant],
    ]


def run(image: Path, variant: str, steps: int, out: Path) -> dict[str, Any]:
    """One fit (or its stored result): the PSNR of the restored image at every step."""
    from dip_lightning.cli import DIPCLI
    from dip_lightning.experiments import Recorder

    args = fit_args(image, variant, steps)
    record = out / image.stem / f"{variant}.json"
    if record.is_file():
        stored = json.loads(record.read_text())
        if stored["args"] == args:
            return stored
    with tempfile.TemporaryDirectory(dir=out, ignore_cleanup_errors=True) as work:
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = DIPCLI(
                args=[*args, f"--trainer.default_root_dir={work}"],
                run=False,
                parser_kwargs={"exit_on_error": False},
            )
            recorder = Recorder()
            cli.trainer.callbacks.append(recorder)  # type: ignore[attr-defined]
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        seconds = time.perf_counter() - started
    psnr = recorder.curves()["psnr"]
    result = {
        "args": args,
        "psnr": [round(float(v), 4) for v in psnr],
        "recoveries": int(cli.model.recoveries),
        "seconds_per_step": seconds / steps,
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result) + "\n")
    return result


def compare(base: list[float], other: list[float], every: int) -> dict[str, Any]:
    """Largest |difference| at every ``every``-th step up to the base curve's peak."""
    base_curve, curve = np.asarray(base), np.asarray(other)
    peak_step = int(np.argmax(base_curve)) + 1
    steps = np.arange(every, peak_step + 1, every)
    if steps.size == 0 or steps[-1] != peak_step:
        steps = np.append(steps, peak_step)
    differences = np.abs(curve[steps - 1] - base_curve[steps - 1])
    worst = int(np.argmax(differences))
    return {
        "max_difference_db": float(differences[worst]),
        "at_step": int(steps[worst]),
        "compared_steps": int(steps.size),
        "peak_psnr": float(curve.max()),
        "peak_step": int(np.argmax(curve)) + 1,
        "base_peak_psnr": float(base_curve.max()),
        "base_peak_step": peak_step,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "denoising-cbm3d")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--skip", type=int, default=0, help="start after this many images")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--every", type=int, default=25, help="compare at every N-th step")
    parser.add_argument("--tolerance", type=float, default=0.2, help="dB")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=Path("equivalence"))
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    images = prepare(args.data, args.images, args.crop, args.out, args.skip)
    rows = []
    for image in images:
        base = run(image, "fit-fp32", args.steps, args.out)
        print(f"{image.stem} fit-fp32: {base['seconds_per_step']:.3f} s/step", flush=True)
        for variant in args.variants:
            result = run(image, variant, args.steps, args.out)
            row = {
                "image": image.stem,
                "variant": variant,
                "seconds_per_step": result["seconds_per_step"],
                "base_seconds_per_step": base["seconds_per_step"],
                **compare(base["psnr"], result["psnr"], args.every),
            }
            rows.append(row)
            print(
                f"{image.stem} {variant}: max |dPSNR| {row['max_difference_db']:.3f} dB "
                f"(step {row['at_step']}), {row['seconds_per_step']:.3f} s/step",
                flush=True,
            )
    print(
        f"\n{args.images} CBM3D crops {args.crop}x{args.crop}, sigma 25, paper denoising settings,"
        f" {args.steps} steps; largest PSNR difference to fp32 at every {args.every}th step up "
        "to the fp32 peak\n"
    )
    print("| option | " + " | ".join(image.stem for image in images) + " | equivalent |")
    print("|---|" + "---|" * (len(images) + 1))
    verdicts = {}
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        verdicts[variant] = all(r["max_difference_db"] <= args.tolerance for r in mine)
        cells = [
            f"{r['max_difference_db']:.2f} dB (peak {r['peak_psnr']:.2f} vs "
            f"{r['base_peak_psnr']:.2f})"
            for r in mine
        ]
        yes = "yes" if verdicts[variant] else "no"
        print(f"| {variant} | " + " | ".join(cells) + f" | {yes} |")
    exact_rows = against_float64(images, args) if "fit-fp64" in args.variants else []
    (args.out / "equivalence.json").write_text(
        json.dumps(
            {
                "tolerance_db": args.tolerance,
                "rows": rows,
                "equivalent": verdicts,
                "against_float64": exact_rows,
            },
            indent=2,
        )
        + "\n"
    )


def against_float64(images: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Print and return each run's largest difference to the float64 curve (exact arithmetic,
    as far as a fit goes), at every ``--every``-th step up to the float64 run's peak: how far
    the fp32 baseline itself is from it, beside the options."""
    rows = []
    variants = ["fit-fp32", *(v for v in args.variants if v != "fit-fp64")]
    for image in images:
        exact = run(image, "fit-fp64", args.steps, args.out)
        for variant in variants:
            other = run(image, variant, args.steps, args.out)
            rows.append({"image": image.stem, "variant": variant,
                         **compare(exact["psnr"], other["psnr"], args.every)})  # fmt: skip
    print("\nlargest PSNR difference to the float64 fit, up to its peak\n")
    print("| run | " + " | ".join(image.stem for image in images) + " |")
    print("|---|" + "---|" * len(images))
    for variant in variants:
        cells = [f"{r['max_difference_db']:.2f} dB" for r in rows if r["variant"] == variant]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main()
