"""Shared fixtures: small odd-sized images made from a seeded generator, and the shared data."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIP_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
CONFIGS = REPO / "configs"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module named ``<name>_bench`` (registered in
    ``sys.modules``, which its dataclasses need), with ``benchmarks/`` on the path while it
    loads, for the scripts it imports."""
    folder = REPO / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` where no CUDA device is usable, saying why."""
    from dip_lightning.precision import no_cuda_reason

    reason = no_cuda_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"{reason}; these tests need one")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def smooth_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A natural-looking 8-bit test image: smooth colour gradients plus a few soft blobs."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    planes = []
    for c in range(channels):
        phase = torch.rand(3, generator=g) * 6.28
        plane = 0.5 + 0.25 * torch.sin(4 * xs + phase[0]) * torch.cos(3 * ys + phase[1])
        plane = plane + 0.2 * torch.exp(-((xs - 0.5) ** 2 + (ys - 0.4) ** 2) / 0.05) * (c + 1) / 3
        planes.append(plane.clamp(0, 1))
    array = (torch.stack(planes, -1) * 255).round().to(torch.uint8).numpy()
    return array[..., 0] if channels == 1 else array


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def rgb_png(tmp_path: Path) -> Path:
    """A 37x45 (HxW) RGB PNG."""
    return write_png(tmp_path / "rgb.png", smooth_image(37, 45))


@pytest.fixture
def gray_png(tmp_path: Path) -> Path:
    """A 33x29 grayscale PNG."""
    return write_png(tmp_path / "gray.png", smooth_image(33, 29, channels=1))


@pytest.fixture(autouse=True)
def _restore_log_levels() -> Iterator[None]:
    """Leave the loggers' levels as each test found them (a quiet command in-process sets them)."""
    names = ("dip_lightning", "lightning.pytorch", "lightning.fabric", "dip_lightning.callbacks")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
