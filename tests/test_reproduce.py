"""benchmarks/reproduce.py on a fake data root: one image per set, tiny crops, two steps."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
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


def test_reproduce_names_a_missing_data_root(tmp_path: Path) -> None:
    reproduce = load_reproduce()
    with pytest.raises(SystemExit, match="--data-root"):
        reproduce.main(["--data-root", str(tmp_path / "nowhere"), "--only", "sr"])
