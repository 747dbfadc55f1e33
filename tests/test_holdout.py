"""The hold-out: which pixels are left out of the data term, the error measured on them, and
its tracking, checked against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_lightning.data.padding import CropBox
from dip_lightning.degradations import Identity, Mask
from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError
from dip_lightning.tasks.holdout import (
    HeldOutPixels,
    choose_heldout,
    heldout_mse,
    observed_pixels,
)


class HoldoutOnly(HeldOutPixels, torch.nn.Module):
    """The hold-out part of a module, on an observation and a degradation of our choosing."""

    def __init__(
        self, degradation: Degradation, observation: torch.Tensor, fraction: float, seed: int = 0
    ) -> None:
        torch.nn.Module.__init__(self)
        self.seed = seed
        self.holdout_fraction = fraction
        self.degradation = degradation
        height, width = observation.shape[-2:]
        self.crop_box = CropBox(top=0, left=0, height=height, width=width)
        self.register_buffer("observation", observation)
        self.output = torch.zeros_like(observation)
        self._attach_holdout()

    def data_term(self, prediction: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, observation)

    def restored_batch(self) -> torch.Tensor:
        return self.output


@settings(max_examples=60, deadline=None)
@given(
    pixels=st.integers(2, 400),
    observed_share=st.floats(0.05, 1.0),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31),
)
def test_the_count_and_place_of_held_out_pixels(
    pixels: int, observed_share: float, fraction: float, seed: int
) -> None:
    """``round(fraction * observed)`` pixels are held out, all of them observed, and a
    fraction that would leave either side empty is refused."""
    generator = torch.Generator().manual_seed(seed)
    observed = torch.rand(pixels, generator=generator) < observed_share
    count = round(fraction * int(observed.sum()))
    if not 1 <= count < int(observed.sum()):
        with pytest.raises(ConfigError, match="holdout_fraction"):
            choose_heldout(observed, fraction, generator)
        return
    keep = choose_heldout(observed, fraction, generator)
    held = keep == 0
    assert keep.shape == (pixels,) and set(keep.unique().tolist()) <= {0.0, 1.0}
    assert int(held.sum()) == count
    assert bool(observed[held].all())


def test_the_choice_follows_the_generator() -> None:
    observed = torch.ones(500, dtype=torch.bool)

    def keep(seed: int) -> torch.Tensor:
        return choose_heldout(observed, 0.1, torch.Generator().manual_seed(seed))

    assert torch.equal(keep(1), keep(1))
    assert not torch.equal(keep(1), keep(2))


def test_observed_pixels_are_the_known_pixels_of_a_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 9, 7, generator=generator) > 0.4).float()
    assert torch.equal(observed_pixels(Mask(mask), 3, 9, 7), mask[0].flatten().bool())
    per_channel = (torch.rand(3, 9, 7, generator=generator) > 0.4).float()
    expected = per_channel.bool().all(dim=0).flatten()  # known in every channel
    assert torch.equal(observed_pixels(Mask(per_channel), 3, 9, 7), expected)
    assert bool(observed_pixels(Identity(), 1, 4, 5).all())


def test_heldout_mse_agrees_with_numpy() -> None:
    generator = torch.Generator().manual_seed(0)
    prediction = torch.rand(1, 3, 6, 5, generator=generator)
    observation = torch.rand(1, 3, 6, 5, generator=generator)
    keep = (torch.rand(1, 1, 6, 5, generator=generator) > 0.3).float()
    held = keep[0, 0].numpy() == 0
    errors = (prediction[0].numpy() - observation[0].numpy()) ** 2  # (3, 6, 5)
    expected = errors[:, held].mean()
    got = heldout_mse(prediction, observation, keep)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_the_held_out_error_of_the_clean_image_estimates_the_noise_variance() -> None:
    """For denoising the held-out MSE of the clean image is an unbiased estimate of the noise
    variance: the point of the score."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 3, 96, 96, generator=generator)
    sigma = 0.1
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    module = HoldoutOnly(Identity(), noisy, 0.2)
    estimate = float(heldout_mse(clean, noisy, module.holdout_keep))
    assert estimate == pytest.approx(sigma**2, rel=0.06)


def test_the_data_term_sees_no_held_out_pixel() -> None:
    """The gradient of the fitted data term is zero on every held-out pixel and non-zero on
    the others; without a hold-out the term is the plain data term."""
    generator = torch.Generator().manual_seed(0)
    observation = torch.rand(1, 2, 8, 8, generator=generator)
    module = HoldoutOnly(Identity(), observation, 0.25)
    assert module.holdout_keep is not None
    prediction = torch.rand(1, 2, 8, 8, generator=generator, requires_grad=True)
    module.fitted_data_term(prediction).backward()
    assert prediction.grad is not None
    held = (module.holdout_keep == 0).expand_as(prediction)
    assert int(held[0, 0].sum()) == 16
    assert bool((prediction.grad[held] == 0).all())
    assert bool((prediction.grad[~held] != 0).all())
    plain = HoldoutOnly(Identity(), observation, 0.0)
    assert plain.holdout_keep is None and plain.heldout_best is None
    assert torch.equal(
        plain.fitted_data_term(prediction.detach()), F.mse_loss(prediction.detach(), observation)
    )


def test_the_tracking_keeps_the_best_good_step() -> None:
    """The best held-out error and its step: a lower error of a rolled-back step is ignored."""
    generator = torch.Generator().manual_seed(0)
    observation = torch.rand(1, 1, 10, 10, generator=generator)
    module = HoldoutOnly(Identity(), observation, 0.3)
    errors = []
    for step, (distance, bad) in enumerate(
        [(0.5, False), (0.2, False), (0.05, True), (0.3, False), (0.1, False)], start=1
    ):
        module.output = observation + distance
        module._track_heldout(torch.tensor(bad), step)
        errors.append(float(module._heldout_mse))
    assert errors == pytest.approx([0.25, 0.04, 0.0025, 0.09, 0.01], rel=1e-5)
    assert module.heldout_best is not None and module.heldout_best_step is not None
    assert float(module.heldout_best) == pytest.approx(0.01, rel=1e-5)
    assert int(module.heldout_best_step) == 5


def test_a_hold_out_of_the_same_seed_is_the_same() -> None:
    observation = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    first = HoldoutOnly(Identity(), observation, 0.1, seed=7).holdout_keep
    again = HoldoutOnly(Identity(), observation, 0.1, seed=7).holdout_keep
    other = HoldoutOnly(Identity(), observation, 0.1, seed=8).holdout_keep
    assert first is not None and again is not None and other is not None
    assert first.shape == (1, 1, 12, 12)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert int((first == 0).sum()) == round(0.1 * 144)
