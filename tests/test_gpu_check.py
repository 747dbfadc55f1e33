"""benchmarks/gpu_check.py: one line and exit 0 without a GPU; its table from pytest's report
and the host-sync counts (the parts that run without a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0() -> None:
    # no device visible, on any machine: the line names torch and its CUDA build
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    build = torch.version.cuda or "no"
    assert done.stdout == (
        f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build: {build}); "
        "nothing to check\n"
    )


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_cuda" name="test_fit[32-true]" time="3.25" />
<testcase classname="tests.test_cuda" name="test_resume" time="1.0">
  <failure message="AssertionError: assert False&#10;  where False = equal">trace</failure>
</testcase>
<testcase classname="tests.test_cuda" name="test_broken" time="0.1">
  <error message="fixture 'gpu' not found">trace</error>
</testcase>
<testcase classname="tests.test_cuda" name="test_sync" time="0">
  <skipped type="pytest.skip" message="no CUDA device (torch 2.5)">skip</skipped>
</testcase>
</testsuite></testsuites>
"""


def test_each_cuda_test_is_a_row_of_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu_check = load_benchmark("gpu_check")
    report = tmp_path / "cuda.xml"
    report.write_text(JUNIT)
    rows = gpu_check.junit_rows(report)
    assert [(r.case, r.status) for r in rows] == [
        ("test_cuda.py::test_fit[32-true]", "ok"),
        ("test_cuda.py::test_resume", "FAIL"),
        ("test_cuda.py::test_broken", "FAIL"),
        ("test_cuda.py::test_sync", "skipped"),
    ]
    assert rows[0].result == "passed in 3.2 s"
    assert rows[1].result == "failed: AssertionError: assert False where False = equal"
    assert rows[2].result.startswith("error: fixture 'gpu'")
    gpu_check.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == len(gpu_check.COLUMNS) + 1 for line in lines)


@pytest.mark.parametrize(("short", "long", "status"), [(40, 55, "ok"), (40, 440, "FAIL")])
def test_host_syncs_are_counted_over_100_steps(
    monkeypatch: pytest.MonkeyPatch, short: int, long: int, status: str
) -> None:
    gpu_check = load_benchmark("gpu_check")
    counts = {10: short, 110: long}
    asked: list[int] = []

    def count(args: list[str]) -> int:
        steps = int(args[-1])
        asked.append(steps)
        return counts[steps]

    monkeypatch.setattr(gpu_check, "count_host_syncs", count)
    row = gpu_check.sync_row("fit", 10, lambda run, steps: ["fit", str(steps)])
    assert asked == [10, 110]
    assert row.status == status
    assert row.result.startswith(f"{long - short} in 100 steps (bound {10 + gpu_check.SYNC_SLACK}")


class FakeItem:
    """What the collection hook uses of a test item."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [m.mark for m in marks]

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((m for m in self.marks if m.name == name), None)

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.marks.append(marker.mark)


@pytest.mark.parametrize("reason", ["no CUDA device (torch 2.5.1, CUDA build: no)", None])
def test_tests_marked_cuda_are_skipped_without_a_gpu(
    pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch, reason: str | None
) -> None:
    import conftest

    from dip_lightning import precision

    assert any(line.startswith("cuda:") for line in pytestconfig.getini("markers"))
    monkeypatch.setattr(precision, "no_cuda_reason", lambda: reason)
    gpu, cpu = FakeItem(pytest.mark.cuda), FakeItem(pytest.mark.filterwarnings("ignore"))
    conftest.pytest_collection_modifyitems(pytestconfig, [gpu, cpu])  # type: ignore[list-item]
    skip = gpu.get_closest_marker("skip")
    if reason is None:  # a GPU: the test runs
        assert skip is None
    else:
        assert skip is not None and skip.kwargs["reason"].startswith(reason)
    assert cpu.get_closest_marker("skip") is None
