"""benchmarks/reproduce.py on a fake data root: one image per set, tiny crops, two steps."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import REPO, smooth_image, write_png


def load_reproduce() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def fake_data_root(root: Path) -> Path:
    """The layout of ../shared/data with one small synthetic image per set."""
    for folder in (
        "inpainting-table1/img",
        "inpainting-table1/mask",
        "denoising-cbm3d",
        "dip-paper",
    ):
        (root / folder).mkdir(parents=True)
    write_png(root / "inpainting-table1/img/barbara.png", smooth_image(40, 36, 1))
    rng = np.random.default_rng(100)
    mask = np.where(rng.random((40, 36)) > 0.5, 255, 0).astype(np.uint8)
    write_png(root / "inpainting-table1/mask/barbara.png", mask)
    write_png(root / "denoising-cbm3d/image_Baboon512rgb.png", smooth_image(40, 36, 3, seed=1))
    write_png(root / "dip-paper/zebra_GT.png", smooth_image(44, 52, 3, seed=2))
    return root


SMALL = [
    "--set",
    "model.init_args.net.init_args.channels_down=8",
    "--set",
    "model.init_args.net.init_args.channels_up=8",
    "--set",
    "model.init_args.net.init_args.levels=3",
    "--set",
    "model.init_args.input_depth=4",
]


def test_reproduce_runs_one_image_per_set(tmp_path: Path) -> None:
    reproduce = load_reproduce()
    root = fake_data_root(tmp_path / "data")
    out = tmp_path / "table.md"
    args = ["--data-root", str(root), "--limit", "1", "--crop", "24", "--steps", "2", *SMALL]
    args += ["--out", str(out), "--work-dir", str(tmp_path / "work")]
    table = reproduce.main(args)
    assert out.read_text().strip() == table.strip()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    assert {"Barbara", "Baboon", "zebra x4"} <= rows.keys()
    assert "32.22" in rows["Barbara"] and "28.14" in rows["Barbara"]  # published DIP and CSC
    assert "—" not in rows["zebra x4"]  # bicubic and ours, Y and RGB
    runs = tmp_path / "work" / "runs"
    assert (runs / "table1" / "Barbara" / "metrics.json").is_file()
    assert (runs / "sr" / "zebra_x4" / "restored.png").is_file()


def test_reproduce_writes_json_and_csv(tmp_path: Path) -> None:
    reproduce = load_reproduce()
    root = fake_data_root(tmp_path / "data")
    threads = torch.get_num_threads()
    args = ["--data-root", str(root), "--limit", "1", "--crop", "24", "--steps", "2", *SMALL]
    args += ["--only", "table1", "--only", "sr", "--threads", "1"]
    args += ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]
    reproduce.main(args)
    assert torch.get_num_threads() == threads  # restored for the caller
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["scale"] == "cpu" and document["arguments"] == args
    assert document["machine"]["threads"] == 1
    assert document["plan"]["table1"]["crop"] == 24
    runs = {run["image"]: run for run in document["runs"]}
    assert runs.keys() == {"Barbara", "zebra x4"}
    barbara, zebra = runs["Barbara"], runs["zebra x4"]
    assert barbara["published_dip"] == 32.22 and barbara["published_csc"] == 28.14
    assert barbara["config"] == "configs/paper/restore_barbara.yaml" and barbara["steps"] == 2
    assert isinstance(barbara["psnr"], float) and isinstance(barbara["input_psnr"], float)
    assert barbara["bicubic_psnr"] is None
    assert isinstance(zebra["bicubic_psnr_y"], float) and isinstance(zebra["psnr_y"], float)
    with (tmp_path / "r.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["Barbara", "zebra x4"]
    assert tuple(rows[0]) == reproduce.RESULT_FIELDS
    assert float(rows[0]["psnr"]) == pytest.approx(barbara["psnr"])
    assert rows[0]["bicubic_psnr"] == ""


def test_cpu_plan_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    reproduce = load_reproduce()
    with pytest.raises(SystemExit):
        reproduce.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, setting in reproduce.CPU_PLAN.items():
        crop = f"{setting.crop}x{setting.crop}, {setting.steps} steps"
        assert crop in help_text, (name, crop)


@pytest.mark.parametrize("option", ["--threads", "--crop", "--steps"])
def test_reproduce_rejects_a_count_below_one(option: str, tmp_path: Path) -> None:
    reproduce = load_reproduce()
    with pytest.raises(SystemExit):
        reproduce.main(["--data-root", str(tmp_path), option, "0"])


def test_reproduce_names_a_missing_data_root(tmp_path: Path) -> None:
    reproduce = load_reproduce()
    with pytest.raises(SystemExit, match="--data-root"):
        reproduce.main(["--data-root", str(tmp_path / "nowhere"), "--only", "sr"])
