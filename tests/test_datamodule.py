from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dip_lightning.data import SingleImageDataModule, sample_image_path
from dip_lightning.degradations import Identity
from dip_lightning.errors import ConfigError, ImageError


def test_default_is_the_embedded_sample() -> None:
    data = SingleImageDataModule()
    assert data.image_path == sample_image_path()
    assert data.image_path.is_file()
    assert data.image.tensor.shape == (3, 128, 128)
    assert not data.simulate


def test_noise_sigma_turns_simulation_on_and_is_seeded(rgb_png: Path) -> None:
    a = SingleImageDataModule(image=str(rgb_png), noise_sigma=25, seed=3)
    b = SingleImageDataModule(image=str(rgb_png), noise_sigma=25, seed=3)
    c = SingleImageDataModule(image=str(rgb_png), noise_sigma=25, seed=4)
    assert a.simulate
    sa, sb, sc = (d.make_sample(Identity(d.noise_sigma)) for d in (a, b, c))
    assert torch.equal(sa.observation, sb.observation)
    assert not torch.equal(sa.observation, sc.observation)
    assert sa.clean is not None and torch.equal(sa.clean, a.image.tensor)
    residual = (sa.observation - sa.clean) * 255
    assert 20 < float(residual.std()) < 26  # clipping at 0 and 1 shrinks it a little
    assert sa.observation.shape == (3, 37, 45)


def test_real_observation_with_clean_reference(rgb_png: Path, tmp_path: Path) -> None:
    noisy = tmp_path / "noisy.png"
    Image.open(rgb_png).save(noisy)
    data = SingleImageDataModule(image=str(noisy), clean=str(rgb_png))
    sample = data.make_sample(Identity())
    assert not sample.simulated
    assert sample.clean is not None
    assert torch.equal(sample.observation, sample.clean)


def test_gray_image_keeps_one_channel(gray_png: Path) -> None:
    data = SingleImageDataModule(image=str(gray_png))
    assert data.image.tensor.shape == (1, 33, 29)
    assert SingleImageDataModule(image=str(gray_png), grayscale=False).image.tensor.shape[0] == 3


def test_clean_image_follows_the_input_channels(gray_png: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(gray_png), clean=str(gray_png))
    assert data.clean is not None and data.clean.tensor.shape[0] == 1
    data = SingleImageDataModule(image=str(rgb_png), clean=str(rgb_png))
    assert data.clean is not None and data.clean.tensor.shape[0] == 3


@pytest.mark.parametrize("sigma", [-1.0, 300.0, float("nan")])
def test_absurd_sigma_is_refused(sigma: float) -> None:
    with pytest.raises(ConfigError, match="noise_sigma"):
        SingleImageDataModule(noise_sigma=sigma)


def test_bad_paths_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        SingleImageDataModule(image=str(tmp_path / "missing.png"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError):
        SingleImageDataModule(image=str(text))
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny)
    with pytest.raises(ImageError, match="2x2"):
        SingleImageDataModule(image=str(tiny))


def test_simulate_with_clean_is_contradictory(rgb_png: Path) -> None:
    with pytest.raises(ConfigError, match="simulate"):
        SingleImageDataModule(image=str(rgb_png), clean=str(rgb_png), noise_sigma=25, simulate=True)
    # a clean reference alone makes the image the observation, whatever noise_sigma says
    data = SingleImageDataModule(image=str(rgb_png), clean=str(rgb_png), noise_sigma=25)
    assert not data.simulate
