"""Where a step of ``dip fit`` spends its time: ``torch.profiler`` over a few steps, by operator
group.

Runs the paper's denoising network (``configs/paper/denoise.yaml``, as ``benchmarks/speed.py``
does; ``--config`` for another) on the sample image resized to each ``--sizes``, with ``dip fit``'s
defaults or a variant of ``benchmarks/speed.py`` (``--variant fit-fast``), profiles ``--steps``
steps after ``--warmup`` and prints one markdown table: the CPU time of each operator group per
step (self time, so nothing is counted twice) and its share of the step.

    python benchmarks/step_profile.py --sizes 128 256
    python benchmarks/step_profile.py --sizes 128 --variant fit-bf16 --top 15  # and operators

Groups: the convolutions (forward and backward), batch norm, the activations, up-sampling,
padding, concatenation (the skip connections), dtype casts and copies, the random numbers of the
perturbation, the optimizer (every operator under ``Optimizer.step``), and the rest (the loss, the
output average and the other element-wise bookkeeping of the step).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import CONFIGS, FIT_VARIANTS, _test_image, fit_cli_args

#: operator group -> pattern on the operator's name (the first match wins; the optimizer is
#: found by its ``Optimizer.step`` ancestor before these)
GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("convolution", re.compile(r"conv|mkldnn_convolution")),
    ("batch norm", re.compile(r"batch_norm")),
    ("activation", re.compile(r"leaky_relu|relu|sigmoid|hardtanh")),
    ("up-sampling", re.compile(r"upsample|interpolate")),
    ("padding", re.compile(r"pad")),
    ("concatenation", re.compile(r"aten::cat\b|aten::narrow|aten::slice")),
    ("casts and copies", re.compile(r"aten::to\b|_to_copy|aten::copy_|contiguous|clone")),
    ("random numbers", re.compile(r"randn|normal|uniform|random_|aten::rand\b")),
]
ORDER = [name for name, _ in GROUPS] + ["optimizer", "other"]


def group_of(name: str, ancestors: list[str]) -> str:
    """The group of operator ``name`` run under the labels and operators ``ancestors``."""
    in_step = any(a.startswith(("Optimizer.step", "Optimizer.zero_grad")) for a in ancestors)
    in_fit = any(a == "dip.training_step" or a.startswith("autograd::") for a in ancestors)
    if in_step and not in_fit:  # Lightning runs the step's closure inside Optimizer.step
        return "optimizer"
    for group, pattern in GROUPS:
        if pattern.search(name):
            return group
    return "other"


def profile_fit(
    config: str, size: int, variant: str, steps: int, warmup: int, top: int
) -> dict[str, Any]:
    """Self CPU time per step of each group (milliseconds) over ``steps`` profiled steps."""
    import torch
    from lightning.pytorch import Callback
    from torch.profiler import ProfilerActivity, profile

    from dip_lightning.cli import DIPCLI

    spec = {**CONFIGS["denoise"], "config": config}

    class Profiled(Callback):
        def __init__(self) -> None:
            self.prof: Any = None

        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == warmup:
                self.prof = profile(activities=[ProfilerActivity.CPU])
                self.prof.__enter__()

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == warmup + steps and self.prof is not None:
                self.prof.__exit__(None, None, None)

    with tempfile.TemporaryDirectory() as work:
        image = _test_image(size, Path(work))
        args = fit_cli_args(spec, image, warmup + steps, work, FIT_VARIANTS.get(variant, []))
        cli = DIPCLI(args=args, run=False)
        training_step = cli.model.training_step

        def labelled_step(*step_args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function("dip.training_step"):
                return training_step(*step_args, **kwargs)

        cli.model.training_step = labelled_step  # type: ignore[method-assign]
        profiled = Profiled()
        cli.trainer.callbacks.insert(0, profiled)  # type: ignore[attr-defined]
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    events = profiled.prof.events()
    by_group: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        ancestors = []
        parent = event.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        if not event.name.startswith("aten::"):
            continue  # labels (Optimizer.step, autograd nodes) have no time of their own here
        group = group_of(event.name, ancestors)
        by_group[group] += event.self_cpu_time_total / 1e3 / steps
        by_op[event.name] += event.self_cpu_time_total / 1e3 / steps
    total = sum(by_group.values())
    ops = sorted(by_op.items(), key=lambda item: -item[1])[:top]
    return {
        "size": size,
        "variant": variant,
        "total_ms": total,
        "groups": dict(by_group),
        "ops": ops,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=CONFIGS["denoise"]["config"],
        help="the fit's config (the paper's denoising network by default)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument(
        "--variant", default="fit", help="fit (dip fit's defaults) or a variant of speed.py"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest operators")
    args = parser.parse_args(argv)
    if args.variant != "fit" and args.variant not in FIT_VARIANTS:
        parser.error(f"unknown variant {args.variant!r}; one of fit, {', '.join(FIT_VARIANTS)}")
    import torch

    results = [
        profile_fit(args.config, s, args.variant, args.steps, args.warmup, args.top)
        for s in args.sizes
    ]
    print(
        f"<!-- {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} -->"
    )
    header = " | ".join(f"{r['size']}: ms/step | share" for r in results)
    print(f"| group ({args.variant}) | {header} |")
    print("|---|" + "---|---|" * len(results))
    for group in ORDER:
        cells = " | ".join(
            f"{r['groups'].get(group, 0.0):.1f} | {r['groups'].get(group, 0.0) / r['total_ms']:.0%}"
            for r in results
        )
        print(f"| {group} | {cells} |")
    totals = " | ".join(f"{r['total_ms']:.1f} | 100%" for r in results)
    print(f"| total (self CPU time) | {totals} |")
    for r in results:
        if r["ops"]:
            print(f"\nThe costliest operators at {r['size']} (ms per step):\n")
            for name, ms in r["ops"]:
                print(f"- `{name}`: {ms:.1f}")


if __name__ == "__main__":
    main()
