"""benchmarks/equivalence.py: its statistics against independent computations, the verdict
rule on constructed differences, and one tiny run end to end on the shared CBM3D images."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, load_benchmark

SCRIPT = REPO / "benchmarks" / "equivalence.py"
CBM3D = SHARED_DATA / "denoising-cbm3d"


bench = load_benchmark("equivalence")

#: Two-sided 95% critical values t_{0.975, df} of Student's t: NIST/SEMATECH e-Handbook of
#: Statistical Methods, section 1.3.6.7.2, "Critical values of the Student's t distribution"
#: (column 0.975), to the three decimals printed there.
T_TABLE = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    8: 2.306,
    10: 2.228,
    17: 2.110,
    20: 2.086,
    26: 2.056,
    30: 2.042,
    100: 1.984,
}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_table(df: int) -> None:
    assert bench.t_quantile(0.95, df) == pytest.approx(T_TABLE[df], abs=5e-4)


@pytest.mark.parametrize("df", [1, 2, 3, 6, 7, 40])
def test_t_probability_is_a_distribution(df: int) -> None:
    values = [bench.t_two_sided_probability(t, df) for t in (0.0, 0.5, 1.0, 2.0, 5.0, 500.0)]
    assert values[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(values))
    assert 0.99 < values[-1] <= 1.0
    # one degree of freedom is the Cauchy distribution: P(|T| < 1) = 1/2
    assert bench.t_two_sided_probability(1.0, 1) == pytest.approx(0.5)


def test_paired_summary_against_numpy() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(29.0, 1.5, 27)  # 9 images x 3 seeds
    option = base + rng.normal(-0.03, 0.12, 27)
    differences = option - base
    summary = bench.paired_summary(list(differences))
    mean = differences.mean()
    half = T_TABLE[26] * differences.std(ddof=1) / np.sqrt(27)
    assert summary["n"] == 27
    assert summary["mean"] == pytest.approx(mean, abs=1e-12)
    # the table's t is rounded to 3 decimals: allow that much in the half-width
    tolerance = 5e-4 * differences.std(ddof=1) / np.sqrt(27)
    assert summary["low"] == pytest.approx(mean - half, abs=tolerance)
    assert summary["high"] == pytest.approx(mean + half, abs=tolerance)


def test_paired_summary_of_too_few_pairs() -> None:
    assert bench.paired_summary([0.3]) == {
        "n": 1,
        "mean": pytest.approx(0.3),
        "low": None,
        "high": None,
        "sd": None,
    }
    assert bench.verdict(bench.paired_summary([0.3])) is None


def constructed(mean: float, spread: float, n: int = 27) -> dict:
    """The summary of ``n`` differences with exactly this mean and sample std."""
    z = np.random.default_rng(0).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    return bench.paired_summary(list(mean + spread * z))


@pytest.mark.parametrize(
    ("mean", "spread", "expected"),
    [
        (0.0, 0.05, True),  # the same, little scatter
        (-0.05, 0.1, True),  # slightly worse, well inside
        (0.6, 0.5, True),  # better, widely scattered: lower end above -0.2
        (-0.12, 0.01, False),  # mean below -0.1 however tight
        (-0.05, 0.5, False),  # mean fine, interval reaches below -0.2
        (0.0, 0.6, False),  # no mean shift, but too uncertain to tell
    ],
)
def test_verdict_rule(mean: float, spread: float, expected: bool) -> None:
    summary = constructed(mean, spread)
    assert bench.verdict(summary) is expected
    assert (summary["mean"] >= -0.1 and summary["low"] >= -0.2) is expected


def test_an_option_must_pass_on_both_measures() -> None:
    good, bad = constructed(0.0, 0.05), constructed(-0.3, 0.05)
    assert bench.equivalent({"peak": good, "selected": good}) is True
    assert bench.equivalent({"peak": good, "selected": bad}) is False
    assert bench.equivalent({"peak": bad, "selected": good}) is False
    one = bench.paired_summary([0.0])
    assert bench.equivalent({"peak": good, "selected": one}) is None
    assert bench.equivalent({"peak": bad, "selected": one}) is False


def test_seed_spread() -> None:
    spread = bench.seed_spread({"a": {0: 1.0, 1: 2.0, 2: 4.0}, "b": {0: 3.0, 1: 3.0, 2: 3.0}})
    assert spread["sd_over_seeds"] == pytest.approx(np.std([1, 2, 4], ddof=1) / 2)
    # |1-2|, |1-4|, |2-4| and three zeros
    assert spread["mean_abs_seed_difference"] == pytest.approx((1 + 3 + 2) / 6)
    assert bench.seed_spread({"a": {0: 1.0}}) == {
        "sd_over_seeds": None,
        "mean_abs_seed_difference": None,
    }


def test_summarise_pairs_by_image_and_seed() -> None:
    def record(image: str, seed: int, variant: str, peak: float, selected: float) -> dict:
        key = {"image": image, "seed": seed, "variant": variant}
        return {"key": key, "peak_psnr": peak, "selected_psnr": selected, "seconds_per_step": 1.0}

    records = [
        record("a", 0, "fp32", 28.0, 27.0),
        record("a", 1, "fp32", 28.4, 27.2),
        record("a", 0, "bank", 28.1, 26.9),
        record("a", 1, "bank", 28.3, 27.4),
        record("b", 0, "bank", 30.0, 30.0),  # no fp32 to pair with
    ]
    summary = bench.summarise(records, ["fp32", "bank"])
    bank = summary["options"]["bank"]
    assert bank["peak"]["n"] == 2
    assert bank["peak"]["mean"] == pytest.approx((0.1 - 0.1) / 2)
    assert bank["selected"]["mean"] == pytest.approx((-0.1 + 0.2) / 2)
    assert bank["time_ratio"] == pytest.approx(1.0)
    assert summary["fp32_spread"]["peak"]["mean_abs_seed_difference"] == pytest.approx(0.4)


@pytest.mark.skipif(
    not CBM3D.is_dir(), reason=f"no CBM3D images at {CBM3D} (set DIP_SHARED to the shared folder)"
)
def test_tiny_run_end_to_end_and_resumed(tmp_path: Path) -> None:
    out = tmp_path / "equivalence"
    command = [
        sys.executable,
        str(SCRIPT),
        *("--data", str(CBM3D), "--images", "1", "--seeds", "2", "--crop", "32"),
        *("--steps", "8", "--variants", "fp32", "bank", "--out", str(out)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| bank | 2 |" in first.stdout
    assert "avx512_bf16" in first.stdout and "torch" in first.stdout
    result = json.loads((out / "equivalence.json").read_text())
    assert len(result["fits"]) == 4
    assert {f["key"]["variant"] for f in result["fits"]} == {"fp32", "bank"}
    assert result["options"]["bank"]["peak"]["n"] == 2
    assert result["options"]["bank"]["equivalent"] in (True, False)
    # run again: every fit comes from --out, none is fitted
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 fits found" in second.stdout and "0 to run" in second.stdout
    assert json.loads((out / "equivalence.json").read_text())["options"] == result["options"]
