"""Every random stream of a fit comes from the one seed by the documented spawning rule, and the
streams are independent of each other."""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_image, write_png

from dip_lightning.data import SingleImageDataModule
from dip_lightning.networks import SkipNet
from dip_lightning.networks.inputs import make_input
from dip_lightning.seeding import STREAMS, stream_generator, stream_seed
from dip_lightning.tasks import DenoisingDIP, InpaintingDIP


def small_net(input_depth: int, channels: int) -> SkipNet:
    return SkipNet(input_depth, channels, channels_down=8, channels_up=8, channels_skip=4)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_png(tmp_path / "img.png", smooth_image(29, 35))


@pytest.mark.parametrize("seed", [0, 1, 7, 2**40, -3])
def test_the_rule_is_numpys_seed_sequence_spawn(seed: int) -> None:
    # the documented rule, against NumPy's own spawning of children
    children = np.random.SeedSequence(seed % 2**64).spawn(len(STREAMS))
    for name, key in STREAMS.items():
        expected = int(children[key].generate_state(1, np.uint64)[0])
        assert stream_seed(seed, name) == expected
        assert stream_generator(seed, name).initial_seed() == expected


def test_streams_of_neighbouring_seeds_are_independent() -> None:
    draws = {
        (seed, name): torch.rand(2000, dtype=torch.float64, generator=stream_generator(seed, name))
        for seed in range(3)
        for name in STREAMS
    }
    for (a, x), (b, y) in itertools.combinations(draws.items(), 2):
        assert not bool(torch.isin(x, y).any()), (a, b)  # no number of one reappears in another
        corr = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
        assert abs(corr) < 0.1, (a, b, corr)  # 0.1 is 4.5 standard errors at n = 2000


def test_the_weights_do_not_reappear_in_z(image: Path) -> None:
    # one seed for the weights' and z's generators made z a rescaled copy of the first weights
    module = DenoisingDIP(net=partial(SkipNet, channels_down=16), input_depth=8, seed=0)
    module.attach(SingleImageDataModule(image=str(image), noise_sigma=25))
    assert module.net is not None
    z = module.z.flatten()[:200].double()
    convs = [m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d)]
    checked = 0
    for conv in convs:
        weights = conv.weight.detach().flatten()[:200].double()
        if len(weights) < 100:
            continue
        corr = float(torch.corrcoef(torch.stack([weights, z[: len(weights)]]))[0, 1])
        assert abs(corr) < 0.5, corr  # aligned draws of one stream give 1.0; 0.5 is 7 sigma
        checked += 1
    assert checked >= 5


def test_a_fit_draws_each_stream_by_the_rule(image: Path) -> None:
    seed = 5
    data = SingleImageDataModule(image=str(image), noise_sigma=25, seed=11)
    module = DenoisingDIP(
        net=small_net, input_depth=8, seed=seed, holdout_fraction=0.1, perturbation="bank"
    )
    module.attach(data)
    # the weights: the network built after seeding PyTorch with the weights stream
    torch.manual_seed(stream_seed(seed, "weights"))
    reference = small_net(8, 3)
    for ours, theirs in zip(module.net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    # z: the input stream
    _, depth, height, width = module.z.shape
    z = make_input(
        "uniform", depth, height, width, generator=stream_generator(seed, "input"), scale=0.1
    )
    assert torch.equal(module.z, z)
    # the observation: the data seed's observation stream
    noise = torch.randn((1, 3, 29, 35), generator=stream_generator(11, "observation"))
    expected = (data.image.tensor[None] + noise * 25 / 255).clamp(0, 1)
    assert torch.allclose(module.observation, expected, atol=1e-6)
    # the bank, its offsets and the perturbation: their own streams
    module.on_fit_start()
    assert module._offsets.initial_seed() == stream_seed(seed, "offsets")
    assert module._generator is not None
    assert module._generator.initial_seed() == stream_seed(seed, "perturbation")
    assert module._bank is not None
    bank = torch.randn(module._bank.shape, generator=stream_generator(seed, "bank"))
    assert torch.equal(module._bank, bank)


def test_the_held_out_pixels_and_the_mask_have_streams_of_their_own(image: Path) -> None:
    data = SingleImageDataModule(image=str(image), missing_ratio=0.5, seed=0)
    a = InpaintingDIP(net=small_net, input_depth=8, seed=0, holdout_fraction=0.2)
    b = InpaintingDIP(net=small_net, input_depth=8, seed=1, holdout_fraction=0.2)
    a.attach(data)
    b.attach(data)
    # the mask depends on the data seed only, the hold-out on the model seed
    assert torch.equal(a.degradation.mask, b.degradation.mask)
    assert not torch.equal(a.holdout_keep, b.holdout_keep)
    # the held-out pixels are not the missing ones (or their complement) in disguise
    known = a.degradation.mask[0].flatten().bool()
    held = (a.holdout_keep.flatten() == 0)[known].double()
    row = torch.arange(len(known))[known].double()
    assert abs(float(torch.corrcoef(torch.stack([held, row]))[0, 1])) < 0.15
    assert abs(float(held.mean()) - 0.2) < 0.01
