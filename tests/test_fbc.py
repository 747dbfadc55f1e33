"""Frequency-band correspondence against an independent NumPy computation of its definition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch
from scipy.ndimage import gaussian_filter

from dip_lightning.metrics import (
    FrequencyBandCorrespondence,
    band_masks,
    frequency_band_correspondence,
)
from dip_lightning.metrics.fbc import to_gray

# ---------------------------------------------------------------------------------------------
# Independent reference: float64 NumPy, written from the definition (Shi et al., IJCV 2022).


def np_gray(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W): the authors' rgb2gray weights, clipped to [0, 1]."""
    if image.shape[0] == 3:
        gray = 0.2989 * image[0] + 0.5870 * image[1] + 0.1140 * image[2]
    else:
        gray = image[0]
    return np.clip(gray, 0.0, 1.0)


def np_rings(height: int, width: int, num_bands: int) -> list[np.ndarray]:
    """Concentric rings out to half the width, vertical offsets rescaled by W / H."""
    y, x = np.ogrid[:height, :width]
    dist = np.hypot(x - width // 2, (y - height // 2) * (width / height))
    radii = np.linspace(1.0 / num_bands, 1.0, num_bands) * (width // 2)
    rings, inside = [], np.zeros((height, width), dtype=bool)
    for radius in radii:
        disc = dist <= radius * (1 + 1e-12)  # inclusive outer boundary, robust to rounding
        rings.append(disc & ~inside)
        inside = disc
    return rings


def np_fbc(output: np.ndarray, target: np.ndarray, num_bands: int = 5) -> np.ndarray:
    """FBC of one (C, H, W) pair: ring means of clip(|F(out)| / (|F(tgt)| + 1e-8), 0, 1)."""
    amp_out = np.abs(np.fft.fftshift(np.fft.fft2(np_gray(output))))
    amp_tgt = np.abs(np.fft.fftshift(np.fft.fft2(np_gray(target))))
    ratio = np.clip(amp_out / (amp_tgt + 1e-8), 0.0, 1.0)
    height, width = ratio.shape
    return np.array([ratio[ring].mean() for ring in np_rings(height, width, num_bands)])


# ---------------------------------------------------------------------------------------------
# Images


@pytest.fixture
def np_rng() -> np.random.Generator:
    """A seeded NumPy generator (the shared ``rng`` fixture is a torch.Generator)."""
    return np.random.default_rng(0)


def camera(size: int = 96) -> np.ndarray:
    """A textured (1, size, size) crop of the cameraman, float64 in [0, 1]."""
    image = skimage.data.camera().astype(np.float64) / 255.0
    return image[None, 300 : 300 + size, 100 : 100 + size]


def pink_noise(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """Seeded random (C, H, W) image with a 1/f amplitude spectrum, scaled to [0, 1]."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    spectrum = rng.standard_normal((channels, height, width)) / radius
    image = np.fft.ifft2(spectrum).real
    image -= image.min(axis=(1, 2), keepdims=True)
    return image / image.max(axis=(1, 2), keepdims=True)


def fbc(output: np.ndarray, target: np.ndarray, **kwargs: Any) -> np.ndarray:
    result = frequency_band_correspondence(
        torch.from_numpy(output), torch.from_numpy(target), **kwargs
    )
    return result.numpy()


# ---------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("num_bands", [1, 3, 5, 8])
@pytest.mark.parametrize(("height", "width", "channels"), [(96, 96, 1), (37, 31, 3), (31, 64, 3)])
def test_matches_numpy_reference(np_rng, num_bands, height, width, channels):
    target = pink_noise(np_rng, height, width, channels)
    output = np.clip(target + 0.2 * np_rng.standard_normal(target.shape), 0, 1)
    output = gaussian_filter(output, sigma=(0, 1, 1))
    expected = np_fbc(output, target, num_bands)
    np.testing.assert_allclose(fbc(output, target, num_bands=num_bands), expected, atol=1e-10)
    as_float32 = fbc(output.astype(np.float32), target.astype(np.float32), num_bands=num_bands)
    assert as_float32.dtype == np.float32
    np.testing.assert_allclose(as_float32, expected, atol=1e-4)


def test_batch_and_reduction(np_rng):
    targets = np.stack([pink_noise(np_rng, 37, 31, 3) for _ in range(3)])
    outputs = gaussian_filter(targets, sigma=(0, 0, 1.5, 1.5))
    expected = np.stack([np_fbc(o, t) for o, t in zip(outputs, targets, strict=True)])
    per_image = fbc(outputs, targets, reduction="none")
    assert per_image.shape == (3, 5)
    np.testing.assert_allclose(per_image, expected, atol=1e-10)
    np.testing.assert_allclose(fbc(outputs, targets), expected.mean(0), atol=1e-10)
    # A (C, H, W) input is a batch of one.
    assert fbc(outputs[0], targets[0], reduction="none").shape == (1, 5)
    np.testing.assert_allclose(fbc(outputs[0], targets[0]), expected[0], atol=1e-10)


def test_square_masks_match_authors_float_construction():
    """For H == W and num_bands <= 8, the rings are exactly those of the authors' code:
    differences of discs ``sqrt((X - c)**2 + (Y - c)**2) <= c * sz``, ``c = int(w / 2)``,
    ``sz`` in ``np.linspace(1 / n, 1, n)``."""
    for num_bands in range(1, 9):
        for size in [*range(1, 70), 96, 127, 128, 255, 256, 480, 512]:
            y, x = np.ogrid[:size, :size]
            centre = int(size / 2)
            dist = np.sqrt((x - centre) ** 2 + (y - centre) ** 2)
            previous = np.zeros((size, size), dtype=np.int32)
            expected = []
            for sz in np.linspace(1 / num_bands, 1, num_bands):
                disc = (dist <= centre * sz).astype(np.int32)
                expected.append((disc - previous).astype(bool))
                previous = disc
            masks = band_masks(size, size, num_bands).numpy()
            np.testing.assert_array_equal(masks, np.stack(expected), err_msg=f"{size=}")


@pytest.mark.parametrize(("height", "width"), [(96, 96), (37, 31), (31, 37), (16, 48), (1, 9)])
def test_band_masks_partition_the_disc(height, width):
    masks = band_masks(height, width, 5)
    assert masks.shape == (5, height, width)
    assert masks.dtype == torch.bool
    assert int(masks.sum(0).max()) <= 1  # disjoint
    assert bool(masks[0, height // 2, width // 2])  # zero frequency in the lowest band
    expected = np.stack(np_rings(height, width, 5))
    np.testing.assert_array_equal(masks.numpy(), expected)
    assert band_masks(height, width, 5) is masks  # cached


# ---------------------------------------------------------------------------------------------
# Properties


def test_identical_images_give_one(np_rng):
    for image in [camera(), pink_noise(np_rng, 37, 31, 3)]:
        np.testing.assert_allclose(fbc(image, image), np.ones(5), atol=1e-6)
        np.testing.assert_allclose(fbc(image.astype(np.float32), image.astype(np.float32)), 1)


@pytest.mark.parametrize("make_target", ["camera", "pink"])
def test_blurred_output_keeps_low_and_loses_high_frequencies(np_rng, make_target):
    """output = blur(target), like a network early in the fit."""
    target = camera() if make_target == "camera" else pink_noise(np_rng, 96, 96, 1)
    output = gaussian_filter(target, sigma=(0, 1, 1))
    values = fbc(output, target)
    np.testing.assert_allclose(values, np_fbc(output, target), atol=1e-10)
    assert values[0] > 0.9
    assert values[-1] < 0.5


def test_half_size_rescale_gives_decreasing_bands():
    target = camera()
    small = skimage.transform.rescale(target[0], 0.5, anti_aliasing=True)
    output = skimage.transform.resize(small, target.shape[1:], order=3)[None]
    values = fbc(output, target)
    np.testing.assert_allclose(values, np_fbc(output, target), atol=1e-10)
    assert values[0] > 0.9 and values[1] > 0.75  # below the new Nyquist: kept
    assert np.all(np.diff(values) < 0.02)  # monotone-ish decrease
    assert values[-1] < values[0] - 0.4  # above it: lost


def test_results_in_unit_interval(np_rng):
    for _ in range(5):
        output = np_rng.uniform(size=(2, 3, 37, 31))
        target = np_rng.uniform(size=(2, 3, 37, 31))
        values = fbc(output, target, reduction="none")
        assert np.all((values >= 0) & (values <= 1))
    # Out-of-range inputs are clamped when converted to gray.
    values = fbc(3 * np_rng.standard_normal((1, 37, 31)), np_rng.uniform(size=(1, 37, 31)))
    assert np.all((values >= 0) & (values <= 1))


def test_odd_sizes_and_single_channel_gray():
    image = torch.rand(1, 3, 37, 31, generator=torch.Generator().manual_seed(0))
    gray = to_gray(image)
    assert gray.shape == (1, 1, 37, 31)
    rgb_values = frequency_band_correspondence(image * 0.5, image)
    gray_values = frequency_band_correspondence(gray * 0.5, gray)
    torch.testing.assert_close(rgb_values, gray_values)
    assert rgb_values.shape == (5,)
    assert torch.isfinite(rgb_values).all()


def test_bad_inputs_are_reported():
    image = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        frequency_band_correspondence(image, image[..., :7])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        frequency_band_correspondence(image[:, :2], image[:, :2])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        frequency_band_correspondence(image[0, 0], image[0, 0])
    with pytest.raises(TypeError, match="floating-point"):
        frequency_band_correspondence(image.to(torch.uint8), image.to(torch.uint8))
    with pytest.raises(ValueError, match="num_bands"):
        frequency_band_correspondence(image, image, num_bands=0)
    with pytest.raises(ValueError, match="reduction"):
        frequency_band_correspondence(image, image, reduction="sum")


# ---------------------------------------------------------------------------------------------
# The Metric


def test_metric_agrees_with_function(np_rng):
    target = torch.from_numpy(pink_noise(np_rng, 37, 31, 3)).float()
    outputs = [
        torch.from_numpy(gaussian_filter(target.numpy(), sigma=(0, s, s))) for s in (0.5, 1, 2, 3)
    ]
    metric = FrequencyBandCorrespondence(num_bands=4)
    for output in outputs:
        metric.update(output, target)
    expected = torch.stack(
        [frequency_band_correspondence(o, target, num_bands=4) for o in outputs]
    ).mean(0)
    torch.testing.assert_close(metric.compute(), expected)
    assert metric.compute().shape == (4,)

    # Batches of different sizes: the mean over images, not over updates.
    metric.reset()
    batch = torch.stack(outputs)
    targets = target.expand_as(batch)
    metric.update(batch[:1], targets[:1])
    metric.update(batch[1:], targets[1:])
    torch.testing.assert_close(metric.compute(), expected)


def test_metric_attributes_and_states():
    metric = FrequencyBandCorrespondence()
    assert metric.higher_is_better is True
    assert metric.full_state_update is False
    assert metric.is_differentiable is False
    assert metric._reductions.keys() == {"fbc_sum", "total"}
    assert metric.fbc_sum.shape == (5,)
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    metric.update(image, image)
    assert int(metric.total) == 2
    torch.testing.assert_close(metric.compute(), torch.ones(5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="num_bands"):
        FrequencyBandCorrespondence(num_bands=-1)
