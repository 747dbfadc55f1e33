"""Tests of dip_lightning.networks.grouped: K networks fitted at once as one grouped module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dip_lightning.networks import ResNet, SkipNet, UNet, input_multiple
from dip_lightning.networks.grouped import (
    GroupedConcat,
    GroupedLipschitzConv2d,
    GroupedNetwork,
    group_networks,
    split_output,
)

SMALL: dict[str, Any] = {"channels_down": 8, "channels_up": 8, "channels_skip": 2, "levels": 3}
H, W = 23, 29  # odd sizes, not multiples of 2**levels: the Concat blocks crop


def _skipnets(k: int, **kwargs: Any) -> list[nn.Module]:
    nets: list[nn.Module] = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(SkipNet(4, 3, **{**SMALL, **kwargs}))
    return nets


def _inputs(k: int, channels: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [
        torch.rand(1, channels, H, W, generator=torch.Generator().manual_seed(100 + i), dtype=dtype)
        for i in range(k)
    ]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _state_diff(grouped: GroupedNetwork, nets: list[nn.Module]) -> float:
    """Largest difference between each network's state and its block of the grouped state."""
    worst = 0.0
    for k, net in enumerate(nets):
        expected = net.state_dict()
        got = grouped.state_dict_of(k)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key].shape == value.shape, key
            worst = max(worst, _max_diff(got[key], value))
    return worst


# --------------------------------------------------------------------------------------------
# (a) the grouped forward (and backward) is each network's
# --------------------------------------------------------------------------------------------


def _resnets(k: int) -> list[nn.Module]:
    nets: list[nn.Module] = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(ResNet(4, 3, num_blocks=2, num_channels=8))
    return nets


def _custom(k: int) -> list[nn.Module]:
    """Other supported layers: grouped and transposed convs, instance/group norm, PReLU."""
    nets: list[nn.Module] = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(
            nn.Sequential(
                nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"),
                nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
                nn.PReLU(8),
                nn.Conv2d(8, 8, 3, stride=2, groups=2),
                nn.GroupNorm(4, 8),
                nn.Tanh(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2),
                nn.BatchNorm2d(6, momentum=None),
                nn.Conv2d(6, 3, 1, bias=False),
            )
        )
    return nets


NETWORKS: dict[str, Callable[[int], list[nn.Module]]] = {
    "skip": lambda k: _skipnets(k),
    "skip-lanczos-gaussian-zero": lambda k: _skipnets(
        k, downsample_mode="lanczos2", upsample_mode="gaussian", padding="zero"
    ),
    "skip-avg-elu-no1x1": lambda k: _skipnets(
        k, downsample_mode="avg", activation="ELU", need_1x1_up=False
    ),
    "skip-nobn-noskip-swish": lambda k: _skipnets(
        k, batch_norm=False, channels_skip=0, upsample_mode="nearest", activation="Swish"
    ),
    "skip-lipschitz": lambda k: _skipnets(k, lipschitz=1.5),
    "resnet": _resnets,
    "custom": _custom,
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_grouped_forward_and_gradients_match_each_network(name: str) -> None:
    k = 3
    nets = NETWORKS[name](k)
    grouped = group_networks(nets)
    assert grouped.training  # train mode: batch norms use the batch statistics
    xs = _inputs(k, 4)
    targets: list[torch.Tensor] = []

    y = grouped(torch.cat(xs, 1))
    outs = split_output(y, k)
    for x, net in zip(xs, nets, strict=True):
        expected = net(x)
        targets.append(
            torch.rand(expected.shape, generator=torch.Generator().manual_seed(len(targets)))
        )
        assert outs[len(targets) - 1].shape == expected.shape
        assert _max_diff(outs[len(targets) - 1], expected) < 1e-5
        F.mse_loss(expected, targets[-1]).backward()
    torch.stack([F.mse_loss(o, t) for o, t in zip(outs, targets, strict=True)]).sum().backward()

    grads = dict(grouped.net.named_parameters())
    for key, param in grads.items():
        assert param.grad is not None, key
        blocks = param.grad.chunk(k, dim=0)
        for block, net in zip(blocks, nets, strict=True):
            own = net.get_parameter(key).grad
            assert own is not None
            assert _max_diff(block, own) < 1e-5, key
    # running statistics, Lipschitz power-iteration vectors and sigmas updated alike
    assert _state_diff(grouped, nets) < 1e-5


def test_grouped_modules_replace_concat_and_lipschitz() -> None:
    grouped = group_networks(_skipnets(2, lipschitz=1.5))
    kinds = {type(m) for m in grouped.modules()}
    assert GroupedConcat in kinds and GroupedLipschitzConv2d in kinds
    layer = next(m for m in grouped.modules() if isinstance(m, GroupedLipschitzConv2d))
    grouped(torch.cat(_inputs(2, 4), 1))
    assert layer.sigma.shape == (2,) and bool(torch.isfinite(layer.sigma).all())


def test_grouped_parameters_are_the_concatenated_parameters() -> None:
    nets = _skipnets(3)
    grouped = group_networks(nets)
    assert sum(p.numel() for p in grouped.parameters()) == 3 * sum(
        p.numel() for p in nets[0].parameters()
    )
    assert [n for n, _ in grouped.net.named_parameters()] == [
        n for n, _ in nets[0].named_parameters()
    ]
    assert grouped.groups == 3 and grouped.in_channels == 4 and grouped.out_channels == 3
    assert input_multiple(grouped) == input_multiple(nets[0]) == 8
    # the originals are copied, not shared
    with torch.no_grad():
        next(iter(grouped.parameters())).zero_()
    assert float(next(iter(nets[0].parameters())).detach().abs().sum()) > 0


# --------------------------------------------------------------------------------------------
# (b) a grouped fit is K separate fits
# --------------------------------------------------------------------------------------------


def test_grouped_adam_fit_equals_separate_fits() -> None:
    # float64: in float32 any change of summation order (even channels_last on one network)
    # makes 15 Adam steps diverge, because the first step divides rounding-level gradients of
    # the parameters that batch norm makes irrelevant by their own size.
    k, steps, dtype = 3, 15, torch.float64
    nets = [net.to(dtype) for net in _skipnets(k)]
    grouped = group_networks(nets)
    xs = _inputs(k, 4, dtype)
    targets = [
        torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(200 + i), dtype=dtype)
        for i in range(k)
    ]
    optimizers = [torch.optim.Adam(net.parameters(), lr=0.01) for net in nets]
    grouped_optimizer = torch.optim.Adam(grouped.parameters(), lr=0.01)
    z = torch.cat(xs, 1)

    losses, grouped_losses = [], []
    for _ in range(steps):
        step_losses = []
        for net, optimizer, x, target in zip(nets, optimizers, xs, targets, strict=True):
            optimizer.zero_grad()
            loss = F.mse_loss(net(x), target)
            loss.backward()
            optimizer.step()
            step_losses.append(float(loss.detach()))
        losses.append(step_losses)

        grouped_optimizer.zero_grad()
        per_image = [
            F.mse_loss(out, target)
            for out, target in zip(split_output(grouped(z), k), targets, strict=True)
        ]
        torch.stack(per_image).sum().backward()
        grouped_optimizer.step()
        grouped_losses.append([float(v.detach()) for v in per_image])

    assert torch.tensor(grouped_losses).sub(torch.tensor(losses)).abs().max() < 1e-10
    assert losses[-1][0] < losses[0][0]  # the fits did move
    assert _state_diff(grouped, nets) < 1e-4  # parameters and batch-norm running statistics

    # each network keeps its own Adam state: block k of the grouped state is network k's
    for key, param in grouped.net.named_parameters():
        state = grouped_optimizer.state[param]
        for index, (net, optimizer) in enumerate(zip(nets, optimizers, strict=True)):
            own = optimizer.state[net.get_parameter(key)]
            assert int(state["step"]) == int(own["step"]) == steps
            for moment in ("exp_avg", "exp_avg_sq"):
                block = state[moment].chunk(k, dim=0)[index]
                assert _max_diff(block, own[moment]) < 1e-8, (key, moment)

    # outputs, in evaluation mode (running statistics) and in training mode
    grouped.eval()
    for net in nets:
        net.eval()
    with torch.no_grad():
        outs = split_output(grouped(z), k)
        for out, net, x in zip(outs, nets, xs, strict=True):
            assert _max_diff(out, net(x)) < 1e-4

        # the state of network k, loaded into a fresh network, gives network k back
        fresh = _skipnets(1)[0].to(dtype).eval()
        fresh.load_state_dict(grouped.state_dict_of(2))
        assert _max_diff(fresh(xs[2]), outs[2]) < 1e-10


# --------------------------------------------------------------------------------------------
# (c) unsupported modules are refused
# --------------------------------------------------------------------------------------------


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), _Scale()), r"'1' of type _Scale.*parameters"),
        (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), nn.LayerNorm([4, 5, 5])), "LayerNorm"),
        (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), nn.Softmax2d()), "Softmax2d.*mix"),
        (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), nn.PReLU()), "PReLU.*single slope"),
        (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), nn.Dropout2d()), "Dropout2d"),
        (lambda: UNet(3, 3, feature_scale=16), r"UNet.*concatenates"),
        (lambda: nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(4, 4, 3))), "'0'.*hooks"),
        (
            lambda: nn.Sequential(
                nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3)), nn.ReLU()
            ),
            "ParametrizedConv2d",
        ),
    ],
)
def test_unsupported_modules_are_refused(make: Callable[[], nn.Module], message: str) -> None:
    nets = []
    for seed in range(2):
        torch.manual_seed(seed)
        nets.append(make())
    with pytest.raises(ValueError, match=message):
        group_networks(nets)


def test_declared_channelwise_module_is_accepted() -> None:
    def make() -> nn.Module:
        return nn.Sequential(nn.Conv2d(4, 2, 3), _Square())

    torch.manual_seed(0)
    nets = [make(), make()]
    with pytest.raises(ValueError, match=r"_Square.*channelwise"):
        group_networks(nets)
    grouped = group_networks(nets, channelwise=(_Square,))
    xs = _inputs(2, 4)
    outs = split_output(grouped(torch.cat(xs, 1)), 2)
    assert all(_max_diff(o, n(x)) < 1e-5 for o, n, x in zip(outs, nets, xs, strict=True))
    with pytest.raises(ValueError, match=r"_Scale.*parameters"):
        group_networks([nn.Sequential(_Scale())] * 2, channelwise=(_Scale,))


# --------------------------------------------------------------------------------------------
# (d) networks of different architectures are refused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (
            {"channels_down": 16, "channels_up": 16},
            r"differ at module .*\(Conv2d\): settings is 4, 8, .* vs 4, 16, ",
        ),
        ({"upsample_mode": "nearest"}, r"differ at .*Upsample.*'nearest'"),
        ({"levels": 2}, "differ at the top-level module .*levels is 3 vs 2"),
        ({"padding": "zero"}, "differ at module .*children"),
        ({"lipschitz": 1.5}, "differ at module .*LipschitzConv2d"),
    ],
)
def test_mismatched_architectures_are_refused(other: dict[str, Any], message: str) -> None:
    nets = [*_skipnets(2), *_skipnets(1, **other)]
    with pytest.raises(ValueError, match=f"networks 0 and 2 ({message})"):
        group_networks(nets)


def test_other_mismatches_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one network"):
        group_networks([])
    with pytest.raises(ValueError, match=r"top-level module .*type is SkipNet vs ResNet"):
        group_networks([*_skipnets(1), *_resnets(1)])
    with pytest.raises(ValueError, match="training is True vs False"):
        group_networks([_skipnets(1)[0], _skipnets(1)[0].eval()])
    with pytest.raises(ValueError, match=r"torch.float32 on cpu, requires_grad=True vs .*float64"):
        group_networks([_skipnets(1)[0], _skipnets(1)[0].double()])


def test_input_and_output_shapes_are_checked() -> None:
    grouped = group_networks(_skipnets(2))
    with pytest.raises(ValueError, match="8 channels"):
        grouped(torch.rand(1, 4, H, W))
    with pytest.raises(ValueError, match="into 2 equal blocks"):
        split_output(torch.rand(1, 5, 2, 2), 2)
    with pytest.raises(IndexError):
        grouped.state_dict_of(2)
