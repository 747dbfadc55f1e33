"""Do the speed options change what a user gets? Each option against the fp32 fit, over images
and seeds.

    python benchmarks/equivalence.py --jobs 2 --out equivalence      # 9 images x 3 seeds
    python benchmarks/equivalence.py --images 1 --seeds 2 --crop 64 --steps 30 --variants fp32 bank

Denoising (sigma 25, the noise drawn once per image with a seeded generator, as
``benchmarks/stopping.py`` does) of centre crops (``--crop``) of the first ``--images`` CBM3D
images. For every image, model seed (``--seeds``: 0, 1, ...; as ``dip restore --seed``, the
network, its input and the held-out pixels) and variant: one fit of ``dip restore``'s fast
preset for ``--steps`` steps, its stopping criterion for denoising (the held-out error, with
its patience) watching without stopping, and the variant's switches on top. Each fit gives

(a) the peak PSNR: the best the run passes through (an oracle that knows the clean image);
(b) the PSNR of the image ``dip restore`` selects: the criterion's best step when its patience
    runs out (or at ``--steps``, when it has not run out by then);

and its median seconds per step. The variants (``benchmarks/speed.py``'s switches): ``fp32``
(every speed option off: float32, fresh perturbation, contiguous layout, unfused Adam: the
baseline), ``bf16`` (autocast), ``channels-last``, ``bank`` (the noise bank), ``fused-adam``,
``fast`` (all of them), ``compile``, and ``default``: ``dip restore``'s preset as it is, run
only when its settings differ from every other variant's.

Per option, the paired differences option - fp32 over the (image, seed) pairs, for (a) and (b):
their mean and 95% t-interval. An option is equivalent when, on both, the mean is at least
-0.1 dB (better is fine) and the interval's lower end at least -0.2 dB. Beside them, fp32's own
seed-to-seed spread: per image the standard deviation of fp32's value over the seeds, averaged
over the images, and the mean absolute difference between two seeds. Prints a markdown table
and writes ``equivalence.json`` (every fit's numbers) to ``--out``.

Every fit runs in its own process with ``--threads`` threads (default 1), ``--jobs`` of them at a
time. Its result is kept in ``--out`` (``fits/<image>/seed<k>/<variant>.json``) with the
arguments that make it (the fit's options, the preset's and the input images' contents, the
threads); a fit found there with the same ones is reused, so an interrupted run continues where
it stopped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import FIT_VARIANTS  # the same switches as the speed table
from stopping import denoising_inputs

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIP_SHARED", REPO.parent / "shared")) / "data"
PRESET = "restore/denoise"  # dip restore --task denoise --preset fast
#: the held-out criterion's callback (dip restore's default for denoising)
CRITERION = "dip_lightning.callbacks.HeldoutStopping"

#: Every speed option off, the optimizer aside (``FIT_VARIANTS`` sets it): the preset's own
#: choices (the noise bank) are undone before each variant's switches.
ALL_OFF = [
    "--trainer.precision=32-true",
    "--model.init_args.channels_last=false",
    "--model.init_args.perturbation=fresh",
    "--model.init_args.compile=false",
]
#: Each variant's switches on top of the preset: ``fp32`` every option off, then one option
#: each, all of them (``fast``), ``compile`` (a minute or two to compile on a CPU), and
#: ``default``, the preset as ``dip restore`` runs it.
VARIANTS: dict[str, list[str]] = {
    name.removeprefix("fit-"): [*ALL_OFF, *switches] for name, switches in FIT_VARIANTS.items()
}
VARIANTS["default"] = []
DEFAULT_VARIANTS = ["fp32", "bf16", "channels-last", "bank", "fused-adam", "default"]
BASELINE = "fp32"
#: The rule: the mean difference to fp32 at least this (dB) ...
MIN_MEAN_DB = -0.1
#: ... and the lower end of its 95% interval at least this, on both measures.
MIN_LOWER_DB = -0.2
MEASURES = {"peak": "peak_psnr", "selected": "selected_psnr"}


# --- statistics ---------------------------------------------------------------------------


def t_two_sided_probability(t: float, df: int) -> float:
    """``P(|T| < t)`` for Student's t with ``df`` (a positive integer) degrees of freedom:
    the finite series of Abramowitz & Stegun 26.7.3 (odd ``df``) and 26.7.4 (even)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for k in range(2, df, 2):  # (1*3*...*(k-1)) / (2*4*...*k) cos^k
            term *= cos2 * (k - 1) / k
            total += term
        return sin * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for k in range(3, df, 2):  # (2*4*...*(k-1)) / (1*3*...*k) cos^k
        term *= cos2 * (k - 1) / k
        total += term
    return 2 / math.pi * (theta + sin * total)


def t_quantile(probability: float, df: int) -> float:
    """The two-sided critical value: ``t`` with ``P(|T| < t) = probability`` (0.95 gives the
    97.5% quantile), by bisection."""
    low, high = 0.0, 1.0
    while t_two_sided_probability(high, df) < probability:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_two_sided_probability(middle, df) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def paired_summary(differences: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of the paired differences and its ``level`` t-interval (``None`` below 2 pairs)."""
    values = np.asarray(differences, dtype=np.float64)
    n = int(values.size)
    mean = float(values.mean()) if n else None
    out: dict[str, Any] = {"n": n, "mean": mean, "low": None, "high": None, "sd": None}
    if n >= 2:
        sd = float(values.std(ddof=1))
        half = t_quantile(level, n - 1) * sd / math.sqrt(n)
        out.update(sd=sd, low=mean - half, high=mean + half)  # type: ignore[operator]
    return out


def verdict(summary: dict[str, Any]) -> bool | None:
    """Whether one measure passes the rule (``None``: too few pairs for an interval)."""
    if summary["low"] is None:
        return None
    return summary["mean"] >= MIN_MEAN_DB and summary["low"] >= MIN_LOWER_DB


def equivalent(summaries: dict[str, dict[str, Any]]) -> bool | None:
    """The rule on every measure: ``False`` if one fails, ``None`` if one cannot be judged."""
    verdicts = [verdict(s) for s in summaries.values()]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def seed_spread(values: dict[str, dict[int, float]]) -> dict[str, float | None]:
    """fp32's own spread over seeds, from ``{image: {seed: value}}``: the standard deviation
    over the seeds of each image, averaged over the images, and the mean absolute difference
    between two seeds of one image (over every pair of seeds of every image)."""
    sds, gaps = [], []
    for by_seed in values.values():
        seeds = list(by_seed.values())
        if len(seeds) >= 2:
            sds.append(float(np.std(seeds, ddof=1)))
            gaps += [abs(a - b) for a, b in combinations(seeds, 2)]
    return {
        "sd_over_seeds": float(np.mean(sds)) if sds else None,
        "mean_abs_seed_difference": float(np.mean(gaps)) if gaps else None,
    }


# --- the fits -----------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fit_args(item: dict[str, Any], seed: int, variant: str, steps: int, device: str) -> list[str]:
    """The ``dip fit`` arguments of one run: ``dip restore``'s (``fit_arguments`` of
    ``dip_lightning/restore.py``) for denoising, its criterion watching without stopping."""
    from dip_lightning.restore import default_criterion, default_patience

    assert default_criterion("denoise") == "heldout", "dip restore's criterion has changed"
    args = [
        f"--config={PRESET}",
        f"--data.image={item['input']}",
        f"--data.clean={item['clean']}",
        "--data.simulate=false",
        "--data.noise_sigma=0",
        f"--data.seed={seed}",
        f"--model.seed={seed}",
        "--model.init_args.holdout_fraction=0.05",
        f"--trainer.callbacks+={CRITERION}",
        "--trainer.callbacks.stop=false",
    ]
    patience = default_patience("denoise", "heldout")
    if patience is not None:
        args.append(f"--trainer.callbacks.patience={patience}")
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[device]
    args += [f"--trainer.accelerator={accelerator}", "--trainer.devices=1"]
    return [*args, f"--trainer.max_steps={steps}", *VARIANTS[variant]]


def fit_key(item: dict[str, Any], seed: int, variant: str, args: argparse.Namespace) -> dict:
    """Everything that makes one fit: its record is reused only when all of it matches."""
    from dip_lightning.presets import list_presets  # light: no torch

    return {
        "image": item["name"],
        "input_sha": sha(Path(item["input"])),
        "clean_sha": sha(Path(item["clean"])),
        "preset_sha": sha(list_presets()[PRESET]),
        "seed": seed,
        "variant": variant,
        "switches": VARIANTS[variant],
        "steps": args.steps,
        "device": args.device,
        "threads": args.threads,
    }


def one_fit(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one fit in this process (the worker's job) and return its record."""
    import torch

    from dip_lightning.cli import main

    torch.set_num_threads(spec["threads"])
    item, seed, variant = spec["item"], spec["seed"], spec["variant"]
    argv = fit_args(item, seed, variant, spec["steps"], spec["device"])
    with tempfile.TemporaryDirectory(prefix="dip-equivalence-") as work:
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main(
                [
                    "fit",
                    *argv,
                    f"--trainer.default_root_dir={work}",
                    "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false",
                    "--trainer.enable_model_summary=false",
                ]
            )
        wall = time.perf_counter() - started
        metrics = json.loads((Path(work) / "metrics.json").read_text())
    chosen = metrics["criteria"]["heldout"]
    if chosen.get("selected_step") is None:
        # no step selectable yet (fewer steps than the criterion's min_steps): dip restore
        # writes the last image
        chosen = {**chosen, "psnr": metrics["psnr"], "selected_step": metrics["steps"]}
    return {
        "key": spec["key"],
        "args": argv,
        "peak_psnr": metrics["peak_psnr"],
        "peak_step": metrics["peak_step"],
        "selected_psnr": chosen["psnr"],
        "selected_step": chosen["selected_step"],
        "would_stop_step": chosen["would_stop_step"],
        "input_psnr": metrics.get("input_psnr"),
        "final_psnr": metrics.get("psnr"),
        "steps": metrics["steps"],
        "recoveries": metrics.get("recoveries"),
        "seconds_per_step": metrics["seconds_per_step"],
        "wall_seconds": round(wall, 2),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def resolved_configs(spec: dict[str, Any]) -> dict[str, str]:
    """``dip fit --print_config`` of each variant's fit of the first image with seed 0 (the
    worker's job)."""
    from dip_lightning.cli import main

    out = {}
    for name in spec["variants"]:
        argv = fit_args(spec["item"], 0, name, spec["steps"], spec["device"])
        text = io.StringIO()
        with (
            contextlib.redirect_stdout(text),
            contextlib.redirect_stderr(io.StringIO()),
            contextlib.suppress(SystemExit),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            main(["fit", *argv, "--print_config"])
        out[name] = text.getvalue()
    return out


def worker(job: Path) -> None:
    """The child process: run the job in ``job`` (JSON) and write its result next to it."""
    spec = json.loads(job.read_text())
    import logging

    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    if spec["kind"] == "fit":
        result: Any = one_fit(spec)
    else:
        result = resolved_configs(spec)
    target = Path(spec["result"])
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.replace(target)


def in_child(spec: dict[str, Any], threads: int, directory: Path) -> tuple[Any, str]:
    """Run ``spec`` in a fresh Python process with ``threads`` threads: (its result or
    ``None``, the tail of its error output)."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".job.json", dir=directory, delete=False) as f:
        job = Path(f.name)
    result = job.with_suffix(".result")
    job.write_text(json.dumps({**spec, "result": str(result)}))
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(job)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and result.is_file():
            return json.loads(result.read_text()), ""
        return None, "\n".join(done.stderr.strip().splitlines()[-15:])
    finally:
        job.unlink(missing_ok=True)
        result.unlink(missing_ok=True)


def choose_variants(requested: list[str], items: list[dict], args: argparse.Namespace) -> list:
    """``requested`` with ``fp32`` first, and ``default`` only where the preset's settings
    differ from every other variant's (compared by the resolved ``dip fit`` config)."""
    chosen = [BASELINE, *(v for v in dict.fromkeys(requested) if v != BASELINE)]
    if "default" not in chosen:
        return chosen
    spec = {"kind": "configs", "variants": chosen, "item": items[0]}
    spec.update(steps=args.steps, device=args.device)
    configs, error = in_child(spec, args.threads, args.out / "jobs")
    if configs is None:
        raise SystemExit(f"error: dip fit --print_config failed:\n{error}")
    for variant in chosen:
        if variant != "default" and configs[variant] == configs["default"]:
            print(f"default: dip restore's settings are {variant}'s; not run again")
            return [v for v in chosen if v != "default"]
    return chosen


def read_record(path: Path) -> dict[str, Any]:
    """A stored fit, or ``{}`` where the file is no record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def run_all(items: list[dict], variants: list[str], args: argparse.Namespace) -> list[dict]:
    """Every fit, from its stored record where one matches, else in a child process,
    ``--jobs`` at a time; the records (a fit that failed is missing)."""
    todo, records = [], []
    for item in items:
        for seed in range(args.seeds):
            for variant in variants:
                key = fit_key(item, seed, variant, args)
                path = args.out / "fits" / item["name"] / f"seed{seed}" / f"{variant}.json"
                if path.is_file():
                    stored = read_record(path)
                    if stored.get("key") == key:
                        records.append(stored)
                        continue
                spec = {"kind": "fit", "key": key, "item": item, "seed": seed}
                spec.update(variant=variant, steps=args.steps, device=args.device)
                todo.append((path, {**spec, "threads": args.threads}))
    if records:
        print(f"{len(records)} fits found in {args.out}, {len(todo)} to run", flush=True)

    def run(path: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
        record, error = in_child(spec, args.threads, args.out / "jobs")
        name = f"{spec['key']['image']} seed {spec['seed']} {spec['variant']}"
        if record is None:
            print(f"{name}: failed\n{error}", file=sys.stderr, flush=True)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(record, indent=1) + "\n")
        partial.replace(path)
        print(
            f"{name}: peak {record['peak_psnr']:.2f} dB (step {record['peak_step']}), "
            f"selected {record['selected_psnr']:.2f} dB (step {record['selected_step']}), "
            f"{record['seconds_per_step']:.4f} s/step",
            flush=True,
        )
        return record

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for record in pool.map(lambda job: run(*job), todo):
            if record is not None:
                records.append(record)
    return records


# --- the report ---------------------------------------------------------------------------


def machine(device: str) -> dict[str, Any]:
    """The CPU's model name, whether it multiplies bf16 natively, and the torch version."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": bool({"amx_bf16", "amx_tile"} & flags),
        "torch": metadata.version("torch"),
        "python": platform.python_version(),
        "device": device,
    }


def summarise(records: list[dict], variants: list[str]) -> dict[str, Any]:
    """Per option: the paired differences to fp32 on each measure, their summaries, the
    verdict and the time per step relative to fp32; and fp32's seed-to-seed spread."""
    table = {(r["key"]["image"], r["key"]["seed"], r["key"]["variant"]): r for r in records}
    pairs = sorted({(image, seed) for image, seed, _ in table})
    options: dict[str, Any] = {}
    for variant in variants[1:]:
        matched = [
            (table[(i, s, BASELINE)], table[(i, s, variant)])
            for i, s in pairs
            if (i, s, BASELINE) in table and (i, s, variant) in table
        ]
        summaries = {
            measure: paired_summary([o[key] - b[key] for b, o in matched])
            for measure, key in MEASURES.items()
        }
        timed = [(b, o) for b, o in matched if b["seconds_per_step"] and o["seconds_per_step"]]
        ratios = [o["seconds_per_step"] / b["seconds_per_step"] for b, o in timed]
        options[variant] = {
            **summaries,
            "equivalent": equivalent(summaries),
            "seconds_per_step": float(np.mean([o["seconds_per_step"] for _, o in timed]))
            if timed
            else None,
            "time_ratio": float(np.exp(np.mean(np.log(ratios)))) if ratios else None,
        }
    spread = {}
    for measure, key in MEASURES.items():
        by_image: dict[str, dict[int, float]] = {}
        for (image, seed, variant), r in table.items():
            if variant == BASELINE:
                by_image.setdefault(image, {})[seed] = r[key]
        spread[measure] = seed_spread(by_image)
    base = [
        r["seconds_per_step"]
        for (_, _, v), r in table.items()
        if v == BASELINE and r["seconds_per_step"]
    ]
    return {
        "options": options,
        "fp32_spread": spread,
        "fp32_seconds_per_step": float(np.mean(base)) if base else None,
    }


def _interval(summary: dict[str, Any]) -> str:
    if summary["mean"] is None:
        return "-"
    if summary["low"] is None:
        return f"{summary['mean']:+.2f}"
    return f"{summary['mean']:+.2f} [{summary['low']:+.2f}, {summary['high']:+.2f}]"


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} dB"


def report(summary: dict[str, Any]) -> str:
    """The markdown table and the fp32 spread line."""
    lines = [
        "| option | pairs | peak: mean [95% CI] | selected: mean [95% CI] | equivalent "
        "| seconds per step vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    words = {True: "yes", False: "no", None: "too few pairs"}
    for variant, o in summary["options"].items():
        time_cell = "-"
        if o["time_ratio"] is not None:
            time_cell = f"{o['seconds_per_step']:.4f} s ({o['time_ratio']:.2f}x)"
        lines.append(
            f"| {variant} | {o['peak']['n']} | {_interval(o['peak'])} | "
            f"{_interval(o['selected'])} | {words[o['equivalent']]} | {time_cell} |"
        )
    spread = summary["fp32_spread"]
    base = summary["fp32_seconds_per_step"]
    parts = [
        f"{measure}: sd over seeds {_db(s['sd_over_seeds'])}, mean |difference| between two "
        f"seeds {_db(s['mean_abs_seed_difference'])}"
        for measure, s in spread.items()
    ]
    lines.append("")
    lines.append(
        "fp32's own seed-to-seed spread (per image, averaged over the images): " + "; ".join(parts)
    )
    if base is not None:
        lines.append(f"fp32: {base:.4f} s per step")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "denoising-cbm3d")
    parser.add_argument("--images", type=int, default=9)
    parser.add_argument("--skip", type=int, default=0, help="start after this many images")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--seeds", type=int, default=3, help="model seeds 0, 1, ..., N-1")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="V"
    )
    parser.add_argument("--jobs", type=int, default=1, help="fits at once, one process each")
    parser.add_argument("--threads", type=int, default=1, help="threads of each fit")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("equivalence"))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return
    started = time.perf_counter()
    info = machine(args.device)
    print(
        f"machine: {info['cpu']} ({info['cores']} cores; avx512_bf16 "
        f"{'yes' if info['avx512_bf16'] else 'no'}, amx {'yes' if info['amx'] else 'no'}), "
        f"torch {info['torch']}, device {args.device}, {args.jobs} fits at a time with "
        f"{args.threads} thread(s) each",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = args.out / "inputs"
    inputs.mkdir(exist_ok=True)
    items = denoising_inputs(args.data, args.images, args.crop, inputs, args.skip)
    items = [{**item, "input": str(item["input"]), "clean": str(item["clean"])} for item in items]
    variants = choose_variants(args.variants, items, args)
    records = run_all(items, variants, args)
    summary = summarise(records, variants)
    not_stopped = sum(r["would_stop_step"] is None for r in records)
    print(
        f"\n{len(items)} CBM3D crops {args.crop}x{args.crop}, sigma 25, x {args.seeds} model "
        f"seeds; dip restore's fast preset, {args.steps} steps; difference to fp32 in dB of "
        "(a) the peak PSNR and (b) the PSNR of the image dip restore selects (held-out "
        f"criterion); equivalent: mean >= {MIN_MEAN_DB} and 95% lower end >= {MIN_LOWER_DB} "
        "on both\n"
    )
    print(report(summary))
    if not_stopped:
        print(
            f"{not_stopped} of {len(records)} fits ran {args.steps} steps before the criterion's "
            "patience ran out: theirs is the criterion's best image up to then (the last image "
            "before its min_steps)"
        )
    result = {
        "machine": info,
        "settings": {k: str(v) for k, v in vars(args).items() if k != "worker"},
        "rule": {"min_mean_db": MIN_MEAN_DB, "min_lower_db": MIN_LOWER_DB, "level": 0.95},
        "variants": {v: VARIANTS[v] for v in variants},
        **summary,
        "fits": records,
    }
    (args.out / "equivalence.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten to {args.out / 'equivalence.json'} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
