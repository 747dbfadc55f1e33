"""One check of the CUDA path, for when a GPU is at hand: tests, speed, host syncs, memory.

    python benchmarks/gpu_check.py            # at most 8 minutes on one GPU

prints one table (markdown) with a row for each of:

* every test marked ``cuda`` (``pytest -m cuda tests``, in a subprocess: fits on the GPU in
  fp32 and bf16-mixed, resume bit-exactness, batched fits, the host syncs of a fit): passed,
  failed or skipped;
* the seconds per step of the three paper configs of ``benchmarks/speed.py`` (denoise,
  inpaint_text, sr_x4) at 256 and 512: the plain PyTorch loop (fp32), and ``dip fit`` with its
  defaults in ``32-true`` and in ``bf16-mixed``, each as a ratio to the plain loop. Every step
  of either waits for the GPU (``torch.cuda.synchronize``), so the times are the GPU's; fp32
  convolutions use TF32 where torch does by default (``torch.backends.cudnn.allow_tf32``);
* the peak GPU memory of each of these runs (``torch.cuda.max_memory_allocated``) against the
  estimate the memory guard (``dip_lightning.memory``) made for that fit: ``LOW`` where the
  peak is above it;
* the host syncs (``torch.cuda.set_sync_debug_mode("warn")``) of 100 steps of ``dip fit`` (the
  paper denoising network at 256, a log every 10 steps) and of ``dip restore`` (a 128x128
  image, the fast preset), each counted as the difference between a fit 100 steps longer and
  a short one, against a bound of one per log step plus 5.

The status column says ``ok``, ``FAIL``, ``LOW`` or ``skipped``; the exit status is 1 when a
row failed (``FAIL`` or ``LOW``), else 0. Rows that would start after ``--budget`` seconds are
skipped. Without a CUDA device it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("32-true", "bf16-mixed")
SYNC_WARNING = "synchronizing CUDA operation"
#: host syncs allowed in 100 steps beyond one per log step
SYNC_SLACK = 5


@dataclass
class Row:
    check: str
    case: str
    result: str
    x_plain: str = "-"
    peak: str = "-"
    estimate: str = "-"
    status: str = "-"


COLUMNS = ("check", "case", "result", "x plain", "peak GiB", "guard estimate GiB", "status")


def print_table(rows: list[Row]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        cells = (r.check, r.case, r.result, r.x_plain, r.peak, r.estimate, r.status)
        print("| " + " | ".join(cells) + " |")


def progress(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


# --- the tests marked cuda ---------------------------------------------------------------


def cuda_test_rows(timeout: float) -> list[Row]:
    """``pytest -m cuda tests`` in a subprocess, one row per test (from its JUnit XML)."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "cuda.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", f"--junitxml={report}"]
        try:
            done = subprocess.run(
                [*command, "tests"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=max(timeout, 1),
            )
        except subprocess.TimeoutExpired:
            result = f"timed out after {timeout:.0f} s"
            return [Row("tests", "pytest -m cuda", result, status="FAIL")]
        rows = junit_rows(report) if report.is_file() else []
    if not rows:
        last = (done.stdout.strip().splitlines() or ["no output"])[-1]
        rows.append(
            Row("tests", "pytest -m cuda", f"exit {done.returncode}: {last}", status="FAIL")
        )
    return rows


def junit_rows(report: Path) -> list[Row]:
    """One row per test case of a JUnit XML report."""
    rows = []
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = f"{module}.py::{case.get('name')}" if module else str(case.get("name"))
        seconds = float(case.get("time") or 0)
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            rows.append(Row("test", name, f"passed in {seconds:.1f} s", status="ok"))
            continue
        message = " ".join((outcome.get("message") or "").split())[:120]
        if outcome.tag == "skipped":
            rows.append(Row("test", name, f"skipped: {message}", status="skipped"))
        else:
            word = "failed" if outcome.tag == "failure" else "error"
            rows.append(Row("test", name, f"{word}: {message}", status="FAIL"))
    return rows


# --- speed and memory --------------------------------------------------------------------


@contextlib.contextmanager
def fits_timed_on_the_gpu(estimates: list[Any]) -> Iterator[None]:
    """While it lasts, the memory guard's estimates are appended to ``estimates`` (the step
    times of ``speed.fit_seconds_per_step`` are the GPU's: each of its steps ends waiting for
    the GPU)."""
    from dip_lightning import memory

    check = memory.check_fit_memory

    def recorded_check(*args: Any, **kwargs: Any) -> Any:
        estimate = check(*args, **kwargs)
        estimates.append(estimate)
        return estimate

    memory.check_fit_memory = recorded_check
    try:
        yield
    finally:
        memory.check_fit_memory = check


def measured(run: Callable[[], float | None]) -> tuple[float | None, float]:
    """``run()`` (seconds per step) and the peak GPU memory it added, in bytes."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    seconds = run()
    torch.cuda.synchronize()
    return seconds, torch.cuda.max_memory_allocated() - before


def speed_rows(
    configs: list[str], sizes: list[int], steps: int, warmup: int, deadline: float
) -> list[Row]:
    """The plain loop and ``dip fit`` in each precision, per config and size."""
    import speed  # benchmarks/speed.py

    rows = []
    for config in configs:
        for size in sizes:
            case = f"{config} {size}"
            if time.monotonic() > deadline:
                rows.append(Row("speed", case, "not run: out of time", status="skipped"))
                continue
            progress(f"speed {case}")
            try:
                plain, plain_peak = measured(
                    lambda c=config, s=size: speed.run_plain(c, s, steps, warmup)[
                        "seconds_per_step"
                    ]
                )
            except Exception as exc:  # one failed measurement is a row, not the end
                rows.append(Row("speed", f"{case} plain", f"error: {exc}"[:160], status="FAIL"))
                continue
            assert plain is not None
            rows.append(
                Row(
                    "speed",
                    f"{case} plain loop fp32",
                    f"{plain:.4f} s/step",
                    "1.00",
                    gib(plain_peak),
                )
            )
            for precision in PRECISIONS:
                rows.append(fit_row(config, size, precision, steps, warmup, plain))
    return rows


def fit_row(config: str, size: int, precision: str, steps: int, warmup: int, plain: float) -> Row:
    import speed

    case = f"{config} {size} dip fit {precision}"
    estimates: list[Any] = []
    try:
        with fits_timed_on_the_gpu(estimates):
            seconds, peak = measured(
                lambda: speed.fit_seconds_per_step(
                    speed.CONFIGS[config],
                    size,
                    steps,
                    warmup,
                    lambda image: ["--trainer.precision", precision],
                )
            )
    except Exception as exc:
        return Row("speed", case, f"error: {exc}"[:160], status="FAIL")
    if seconds is None:
        return Row("speed", case, "no step time", status="FAIL")
    row = Row("speed", case, f"{seconds:.4f} s/step", f"{seconds / plain:.2f}", gib(peak))
    if estimates:
        estimate = estimates[-1].total
        row.estimate = gib(estimate)
        row.status = "ok" if peak <= estimate else "LOW"
    return row


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


# --- host syncs ---------------------------------------------------------------------------


def count_host_syncs(args: list[str]) -> int:
    """The synchronizing CUDA operations of ``dip args`` (run in this process), as
    ``torch.cuda.set_sync_debug_mode("warn")`` reports them; its output is dropped."""
    import torch

    from dip_lightning.cli import main

    torch.cuda.synchronize()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            main(args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(SYNC_WARNING in str(w.message) for w in caught)


def sync_row(case: str, every: int, args: Callable[[Path, int], list[str]]) -> Row:
    """The host syncs of 100 steps: ``args(run directory, steps)`` at 110 steps less at 10."""
    progress(f"host syncs, {case}")
    bound = 100 // every + SYNC_SLACK
    try:
        with tempfile.TemporaryDirectory() as work:
            short = count_host_syncs(args(Path(work) / "short", 10))
            long = count_host_syncs(args(Path(work) / "long", 110))
    except (Exception, SystemExit) as exc:
        return Row("host syncs", case, f"error: {exc!r}"[:160], status="FAIL")
    syncs = long - short
    result = f"{syncs} in 100 steps (bound {bound}; {short} in a 10-step run)"
    return Row("host syncs", case, result, status="ok" if syncs <= bound else "FAIL")


def sync_rows(work: Path) -> list[Row]:
    import speed

    image_256 = speed._test_image(256, work)
    image_128 = speed._test_image(128, work)
    every = 10

    def fit(run: Path, steps: int) -> list[str]:
        return [
            "fit",
            "--config",
            str(REPO / "configs" / "paper" / "denoise.yaml"),
            "--data.image",
            str(image_256),
            "--data.clean",
            "null",
            "--trainer.max_steps",
            str(steps),
            "--trainer.log_every_n_steps",
            str(every),
            "--trainer.default_root_dir",
            str(run),
            "--trainer.logger.class_path",
            "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.init_args.save_dir",
            str(run),
        ]

    def restore(run: Path, steps: int) -> list[str]:
        return [
            "restore",
            str(image_128),
            "-o",
            str(run / "restored.png"),
            "--max-steps",
            str(steps),
        ]

    return [
        sync_row(f"dip fit paper denoise 256, a log every {every} steps", every, fit),
        # dip restore's presets log every 25 steps
        sync_row("dip restore 128x128, fast preset, a log every 25 steps", 25, restore),
    ]


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import speed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=list(speed.CONFIGS), choices=list(speed.CONFIGS)
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per speed row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--budget", type=float, default=450, help="seconds; rows that would start later are skipped"
    )
    args = parser.parse_args(argv)

    import torch

    from dip_lightning.precision import no_cuda_reason

    reason = no_cuda_reason()
    if reason is not None:
        print(f"gpu_check: {reason}; nothing to check")
        return 0

    start = time.monotonic()
    deadline = start + args.budget
    progress("pytest -m cuda")
    rows = cuda_test_rows(timeout=args.budget * 0.4)
    # the sync rows take about a minute: the speed rows leave it to them
    rows += speed_rows(args.configs, args.sizes, args.steps, args.warmup, deadline - 60)
    if time.monotonic() < deadline:
        with tempfile.TemporaryDirectory() as work:
            rows += sync_rows(Path(work))
    else:
        rows.append(
            Row("host syncs", "dip fit, dip restore", "not run: out of time", status="skipped")
        )

    name = torch.cuda.get_device_name()
    print(
        f"gpu_check: {name}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}), {args.steps} steps after {args.warmup} warm-up, "
        f"{time.monotonic() - start:.0f} s\n"
    )
    print_table(rows)
    return 1 if any(r.status in ("FAIL", "LOW") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
