"""Controls of spectral bias: Lipschitz-bounded convolutions, Gaussian upsampling, Fourier input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dip_lightning.errors import ConfigError
from dip_lightning.networks import SkipNet, count_parameters
from dip_lightning.networks.inputs import make_input
from dip_lightning.networks.spectral import (
    GaussianUpsample,
    LipschitzConv2d,
    MeanOnlyBatchNorm,
    conv_operator,
    conv_operator_norm,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dense_norm(layer: LipschitzConv2d, weight: torch.Tensor, shape: tuple[int, int, int]):
    """Exact largest singular value: the operator's dense matrix, by autograd, and its 2-norm."""

    def apply(flat: torch.Tensor) -> torch.Tensor:
        x = flat.view(1, *shape).double()
        return conv_operator(x, weight.double(), layer.conv, layer.padding, layer.pad).flatten()

    matrix = torch.autograd.functional.jacobian(apply, torch.zeros(int(torch.tensor(shape).prod())))
    return torch.linalg.matrix_norm(matrix, ord=2)


CASES = [  # (in, out, kernel, stride, padding, input (H, W))
    (2, 3, 3, 1, "zero", (7, 6)),
    (2, 3, 3, 2, "reflection", (9, 8)),
    (3, 2, 3, 2, "replication", (7, 7)),
    (2, 2, 5, 1, "reflection", (7, 5)),
    (3, 4, 1, 1, "zero", (5, 6)),
]


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "padding", "size"), CASES)
def test_lipschitz_estimate_is_the_exact_largest_singular_value(
    cin: int, cout: int, k: int, stride: int, padding: str, size: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    pad = (k - 1) // 2
    conv = nn.Conv2d(cin, cout, k, stride, padding=pad if padding == "zero" else 0)
    layer = LipschitzConv2d(conv, 0.5, padding=padding, pad=pad, warmup_iterations=300)
    x = torch.rand(1, cin, *size)
    layer(x)  # the first forward runs the warm-up iterations
    exact = dense_norm(layer, conv.weight.detach(), (cin, *size))
    assert float(layer.sigma) == pytest.approx(float(exact), rel=1e-4)
    assert float(conv_operator_norm(conv, size, padding, layer.pad)) == pytest.approx(
        float(exact), rel=1e-3
    )
    # the weight of the forward pass has norm min(sigma, bound)
    normalized = layer.normalized_weight(x.shape[1:]).detach()
    bounded = dense_norm(layer, normalized, (cin, *size))
    assert float(bounded) <= 0.5 * (1 + 1e-4)
    assert float(bounded) == pytest.approx(min(float(exact), 0.5), rel=1e-4)


def test_lipschitz_forward_matches_the_conv_with_a_scaled_weight() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=0)
    layer = LipschitzConv2d(conv, 0.1, padding="reflection", pad=1)
    x = torch.rand(1, 2, 6, 7)
    y = layer(x)
    scale = min(1.0, 0.1 / float(layer.sigma))
    expected = nn.functional.conv2d(
        nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), conv.weight * scale, conv.bias
    )
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    with pytest.raises(ConfigError):
        LipschitzConv2d(conv, 0.0)


def test_lipschitz_vector_is_saved_and_loaded() -> None:
    torch.manual_seed(2)
    net = SkipNet(2, 3, channels_down=4, channels_up=4, channels_skip=2, levels=2, lipschitz=1.5)
    net(torch.rand(1, 2, 8, 8))
    copy = SkipNet(2, 3, channels_down=4, channels_up=4, channels_skip=2, levels=2, lipschitz=1.5)
    copy.load_state_dict(net.state_dict())
    net.eval(), copy.eval()
    z = torch.rand(1, 2, 8, 8)
    torch.testing.assert_close(net(z), copy(z))


def test_skipnet_switches_keep_the_parameters_and_shapes() -> None:
    kwargs = {"channels_down": 8, "channels_up": 8, "channels_skip": 2, "levels": 3}
    plain = SkipNet(4, 3, **kwargs)
    bounded = SkipNet(4, 3, lipschitz=1.6, **kwargs)
    gaussian = SkipNet(4, 3, upsample_mode="gaussian", **kwargs)
    assert count_parameters(plain) == count_parameters(gaussian)
    assert count_parameters(SkipNet(32, 3)) == count_parameters(SkipNet(32, 3, lipschitz=None))
    # the bounded network has the same convolutions; its norms are mean-only (1 parameter each)
    norms = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert count_parameters(bounded) == count_parameters(plain) - sum(m.num_features for m in norms)
    assert sum(isinstance(m, MeanOnlyBatchNorm) for m in bounded.modules()) == len(norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bounded.modules())
    assert sum(isinstance(m, LipschitzConv2d) for m in bounded.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in plain.modules()
    )
    assert sum(isinstance(m, GaussianUpsample) for m in gaussian.modules()) == 3
    z = torch.rand(1, 4, 24, 32)
    for net in (plain, bounded, gaussian):
        assert net(z).shape == (1, 3, 24, 32)
    for module in bounded.modules():
        if isinstance(module, LipschitzConv2d):
            assert float(module.sigma) > 0


def test_gaussian_upsampling_shapes_and_low_pass() -> None:
    up = GaussianUpsample()
    x = torch.rand(2, 3, 5, 7)
    y = up(x)
    assert y.shape == (2, 3, 10, 14)
    assert torch.allclose(up(torch.full((1, 2, 3, 3), 0.3)), torch.full((1, 2, 6, 6), 0.3))
    nearest = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert float(y.diff(dim=-1).abs().mean()) < float(nearest.diff(dim=-1).abs().mean())
    with pytest.raises(ConfigError):
        SkipNet(1, 1, upsample_mode="cubic")


def test_fourier_input_is_seeded_and_has_the_requested_channels() -> None:
    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return make_input("fourier", 16, 24, 20, generator=generator, scale=0.1)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (1, 16, 24, 20)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= 0.1 + 1e-6
    torch.testing.assert_close(a[0, :8] ** 2 + a[0, 8:] ** 2, torch.full((8, 24, 20), 0.01))
    with pytest.raises(ConfigError, match="even"):
        make_input("fourier", 3, 4, 4, generator=torch.Generator())
