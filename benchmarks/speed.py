"""Seconds per step and peak memory: a plain PyTorch loop (the authors' way) against ``dip fit``.

Every measurement runs in its own process (peak memory is the process's), side by side in one
run, and reports the median step time after a warm-up; with ``--repeats N`` the variants take
turns N times and the table gives the median of their N medians (a shared machine's slow spells
then fall on every variant). Prints a markdown table and writes JSON.

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
        python benchmarks/speed.py --sizes 128 256 --configs denoise --out speed.json

Variants: ``plain`` (fp32 loop over the same network: z + sigma_p * randn -> net -> loss -> Adam),
``fit-fp32`` (``dip fit`` with every speed option off), ``dip fit`` with one option on at a time
(bf16 autocast, channels_last, the noise bank, fused Adam: the last is ``dip fit``'s default),
and with all of them together (``fit-fast``). On a CUDA machine the same runs use the GPU.

``--authors PATH`` adds the variant ``authors``: the network of the authors' code (a checkout of
DmitryUlyanov/deep-image-prior at PATH, imported from there: ``models.get_net`` with the paper's
arguments) in the step of their notebooks: a fresh ``normal_`` perturbation, the output average,
the MSE, backward, the three PSNRs they print computed on the host in NumPy, the roll-back
bookkeeping and Adam. Their network and ours are then timed side by side in one run, and the
table gives every variant as a ratio to it too.

    python benchmarks/speed.py --configs denoise --sizes 256 --authors ../deep-image-prior \
        --variants authors plain fit-fp32 fit-fast
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: The paper settings measured: network arguments, task and data options.
CONFIGS: dict[str, dict[str, Any]] = {
    "denoise": {
        "config": "configs/paper/denoise.yaml",
        "net": {"channels_skip": 4, "upsample_mode": "bilinear"},
        "data": ["--data.noise_sigma", "25"],
    },
    "inpaint_text": {
        "config": "configs/paper/inpaint_kate.yaml",
        "net": {"channels_skip": 128, "upsample_mode": "nearest"},
        "data": ["--data.mask", "null", "--data.missing_ratio", "0.5"],
    },
    "sr_x4": {
        "config": "configs/paper/sr_zebra_x4.yaml",
        "net": {"channels_skip": 4, "upsample_mode": "bilinear"},
        "data": ["--data.scale", "4", "--data.simulate", "true"],
    },
}

#: Adam without its fused implementation (on by default): with it, every speed option is off.
UNFUSED = [
    "--model.init_args.optimizer",
    "torch.optim.Adam",
    "--model.init_args.optimizer.init_args.fused",
    "false",
]
FAST = [
    "--trainer.precision",
    "bf16-mixed",
    "--model.init_args.channels_last",
    "true",
    "--model.init_args.perturbation",
    "bank",
]

#: ``dip fit`` variants: extra command-line options. ``fit-fp32`` has every speed option off,
#: the next four one option each, ``fit-fast`` all of them together.
FIT_VARIANTS: dict[str, list[str]] = {
    "fit-fp32": UNFUSED,
    "fit-bf16": [*UNFUSED, "--trainer.precision", "bf16-mixed"],
    "fit-channels-last": [*UNFUSED, "--model.init_args.channels_last", "true"],
    "fit-bank": [*UNFUSED, "--model.init_args.perturbation", "bank"],
    "fit-fused-adam": [],  # dip fit's default
    "fit-fast": FAST,
    # opt-in (--variants): the first step compiles the network, a minute or two on a CPU
    "fit-compile": [*UNFUSED, "--model.init_args.compile", "true"],
    "fit-fast-compile": [*FAST, "--model.init_args.compile", "true"],
}
#: The variants run when ``--variants`` is not given (besides ``authors`` with ``--authors``).
DEFAULT_VARIANTS = ["plain", *(v for v in FIT_VARIANTS if "compile" not in v)]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _peak_memory_gib(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _test_image(size: int, directory: Path) -> Path:
    import numpy as np
    from PIL import Image

    from dip_lightning.data import sample_image_path

    image = Image.open(sample_image_path()).convert("RGB").resize((size, size), Image.BICUBIC)
    path = directory / f"image_{size}.png"
    Image.fromarray(np.asarray(image)).save(path)
    return path


def run_plain(config: str, size: int, steps: int, warmup: int) -> dict[str, Any]:
    """The authors' loop in fp32: no Lightning, no metrics, the same network and optimiser."""
    import torch
    import torch.nn.functional as F

    from dip_lightning.networks import SkipNet

    device = _device()
    torch.manual_seed(0)
    net = SkipNet(32, 3, **CONFIGS[config]["net"]).to(device)
    z = (torch.rand(1, 32, size, size) * 0.1).to(device)
    target = torch.rand(1, 3, size, size, device=device)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        out = net(z + torch.randn_like(z) / 30)
        loss = F.mse_loss(out, target)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times[warmup:]), "device": device}


#: The authors' ``get_net`` arguments for each config (their notebooks' settings).
AUTHORS_NET: dict[str, dict[str, Any]] = {
    "denoise": {"skip_n11": 4, "upsample_mode": "bilinear"},
    "inpaint_text": {"skip_n11": 128, "upsample_mode": "nearest"},
}


def run_authors(config: str, size: int, steps: int, warmup: int, checkout: str) -> dict[str, Any]:
    """The authors' network and the step of their denoising notebook (``closure`` + Adam)."""
    import numpy as np
    import torch

    sys.path.insert(0, checkout)
    from models import get_net  # the authors' code, from their checkout

    device = _device()
    torch.manual_seed(0)
    net = get_net(
        32,
        "skip",
        "reflection",
        skip_n33d=128,
        skip_n33u=128,
        num_scales=5,
        **AUTHORS_NET[config],
    ).to(device)
    net_input_saved = (torch.rand(1, 32, size, size) * 0.1).to(device)  # get_noise(.., 'u') / 10
    noise = net_input_saved.clone()
    img_noisy_np = np.random.default_rng(0).random((3, size, size), dtype=np.float32)
    img_np = img_noisy_np.copy()
    img_noisy_torch = torch.from_numpy(img_noisy_np)[None].to(device)
    mse = torch.nn.MSELoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)

    def compare_psnr(a: Any, b: Any) -> float:  # skimage's compare_psnr on [0, 1] floats
        return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))

    out_avg = None
    psnr_noisy_last = 0.0
    last_net = None
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        net_input = net_input_saved + (noise.normal_() * (1.0 / 30))
        out = net(net_input)
        out_avg = out.detach() if out_avg is None else out_avg * 0.99 + out.detach() * (1 - 0.99)
        total_loss = mse(out, img_noisy_torch)
        total_loss.backward()
        psnr_noisy = compare_psnr(img_noisy_np, out.detach().cpu().numpy()[0])
        compare_psnr(img_np, out.detach().cpu().numpy()[0])
        compare_psnr(img_np, out_avg.detach().cpu().numpy()[0])
        if i % 100:
            if psnr_noisy - psnr_noisy_last < -5 and last_net is not None:
                for new_param, net_param in zip(last_net, net.parameters(), strict=True):
                    net_param.data.copy_(new_param)
            else:
                last_net = [x.detach().cpu() for x in net.parameters()]
                psnr_noisy_last = psnr_noisy
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times[warmup:]), "device": device}


def run_fit(config: str, variant: str, size: int, steps: int, warmup: int) -> dict[str, Any]:
    """``dip fit`` with the variant's switches."""
    seconds = fit_seconds_per_step(
        CONFIGS[config], size, steps, warmup, lambda image: FIT_VARIANTS[variant]
    )
    return {"seconds_per_step": seconds, "device": _device()}


def _gpu_waiter() -> Any:
    """A callback that ends every step by waiting for the GPU (as each step of the plain loop
    does), so that the fit's step times are the GPU's; it runs before RunArtifacts' timer."""
    import torch
    from lightning.pytorch import Callback

    class WaitForTheGPU(Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize()

    return WaitForTheGPU()


def fit_cli_args(
    spec: dict[str, Any], image: Path, max_steps: int, work: str, extra: list[str]
) -> list[str]:
    """``dip fit``'s arguments for ``spec`` (an entry of :data:`CONFIGS`) on ``image``: no
    clean image, logger, bar or summary, ``max_steps`` steps in ``work``, then ``extra``."""
    return [
        "--config", str(REPO / spec["config"]),
        "--data.image", str(image),
        "--data.clean", "null",
        *spec["data"],
        "--trainer.max_steps", str(max_steps),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false",
        "--trainer.default_root_dir", work,
        *extra,
    ]  # fmt: skip


def fit_seconds_per_step(
    spec: dict[str, Any],
    size: int,
    steps: int,
    warmup: int,
    extra: Callable[[Path], list[str]],
) -> float | None:
    """``dip fit`` of ``spec`` (an entry of :data:`CONFIGS`) on the sample image resized to
    ``size``, through the CLI parser, with the arguments ``extra(image)``; the median seconds
    per step after ``warmup`` steps, timed by its own RunArtifacts callback (the first image's
    in a batched fit)."""
    from dip_lightning.callbacks import RunArtifacts
    from dip_lightning.cli import DIPCLI
    from dip_lightning.tasks.batched import BatchedCallbacks

    with tempfile.TemporaryDirectory() as work:
        image = _test_image(size, Path(work))
        args = fit_cli_args(spec, image, warmup + steps + 1, work, extra(image))
        cli = DIPCLI(args=args, run=False)
        if _device() == "cuda":
            # the fit makes no host sync between log steps, so without this the step times
            # would be those of queueing the GPU's work, not of doing it
            cli.trainer.callbacks.insert(0, _gpu_waiter())  # type: ignore[attr-defined]
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        callbacks = cli.trainer.callbacks  # type: ignore[attr-defined]
        timer = next((c for c in callbacks if isinstance(c, RunArtifacts)), None)
        if timer is None:
            driver = next(c for c in callbacks if isinstance(c, BatchedCallbacks))
            timer = driver.trainers[0].callbacks[0]
        assert isinstance(timer, RunArtifacts)
        timer.warmup = warmup
        return timer.seconds_per_step()


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["variant"] == "plain":
        result = run_plain(spec["config"], spec["size"], spec["steps"], spec["warmup"])
    elif spec["variant"] == "authors":
        result = run_authors(
            spec["config"], spec["size"], spec["steps"], spec["warmup"], spec["authors"]
        )
    else:
        result = run_fit(
            spec["config"], spec["variant"], spec["size"], spec["steps"], spec["warmup"]
        )
    result["peak_gib"] = round(_peak_memory_gib(result["device"]), 3)
    return {**spec, **result}


def measure_in_subprocess(spec: dict[str, Any], script: str = __file__) -> dict[str, Any] | None:
    """One measurement in a fresh process (its peak memory is the process's own): ``script
    --one SPEC`` prints it as the last JSON line."""
    done = subprocess.run(
        [sys.executable, script, "--one", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        print(
            f"{spec['config']} {spec['size']} {spec['variant']}: failed\n{done.stderr[-2000:]}",
            flush=True,
        )
        return None
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=["authors", "plain", *FIT_VARIANTS],
        help="default: plain and every fit variant but the compiled ones (authors with --authors)",
    )
    parser.add_argument(
        "--authors",
        type=Path,
        default=None,
        help="a checkout of DmitryUlyanov/deep-image-prior: time their network and step too",
    )
    parser.add_argument("--steps", type=int, default=7, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every variant this many times, in turns; the table gives the median",
    )
    parser.add_argument("--out", type=Path, default=Path("speed.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))), flush=True)
        return
    if args.variants is None:
        args.variants = [*(["authors"] if args.authors else []), *DEFAULT_VARIANTS]
    if "authors" in args.variants:
        if args.authors is None:
            parser.error("the authors variant needs --authors PATH (their checkout)")
        if not (args.authors / "models" / "__init__.py").is_file():
            parser.error(
                f"no models/__init__.py under {args.authors}: not a checkout of their code"
            )

    rows = []
    for config in args.configs:
        for size in args.sizes:
            runs: dict[str, list[dict[str, Any]]] = {}
            # the variants take turns, --repeats times, so that a slow spell of a shared
            # machine falls on all of them
            for _ in range(args.repeats):
                for variant in args.variants:
                    if variant == "authors" and config not in AUTHORS_NET:
                        continue
                    spec = {
                        "config": config,
                        "size": size,
                        "variant": variant,
                        "steps": args.steps,
                        "warmup": args.warmup,
                    }
                    if variant == "authors":
                        spec["authors"] = str(args.authors.resolve())
                    row = measure_in_subprocess(spec)
                    if row is None:
                        continue
                    runs.setdefault(variant, []).append(row)
                    print(
                        f"{config:>12} {size:>4} {variant:>17} {row['seconds_per_step']:.3f} "
                        f"s/step {row['peak_gib']:.2f} GiB",
                        flush=True,
                    )
            for measured in runs.values():
                row = dict(measured[0])
                times = [r["seconds_per_step"] for r in measured]
                row["seconds_per_step"] = statistics.median(times)
                row["repeats"] = times
                row["peak_gib"] = max(r["peak_gib"] for r in measured)
                rows.append(row)
    print_table(rows)
    machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    def times(variant: str) -> dict[tuple[str, int], float]:
        return {
            (r["config"], r["size"]): r["seconds_per_step"] for r in rows if r["variant"] == variant
        }

    plain, authors = times("plain"), times("authors")
    columns = ["config", "size", "variant", "s/step", "x plain fp32"]
    columns += ["x authors"] if authors else []
    print("\n| " + " | ".join([*columns, "peak GiB"]) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for r in rows:
        key = (r["config"], r["size"])
        cells = [r["config"], str(r["size"]), r["variant"], f"{r['seconds_per_step']:.3f}"]
        for base in (plain, authors) if authors else (plain,):
            cells.append(f"{r['seconds_per_step'] / base[key]:.2f}" if key in base else "-")
        print("| " + " | ".join([*cells, f"{r['peak_gib']:.2f}"]) + " |")


if __name__ == "__main__":
    main()
