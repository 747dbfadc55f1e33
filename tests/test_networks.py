"""Tests of dip_lightning.networks: the skip net, U-Net, ResNet and the shared blocks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from dip_lightning.networks import (
    Concat,
    Downsampler,
    ResNet,
    SkipNet,
    UNet,
    build_network,
    count_parameters,
    get_kernel,
    lanczos_kernel,
)

SHARED = Path(os.environ.get("DIP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
KERNELS_JSON = SHARED / "reference" / "downsampler_kernels.json"

SMALL = {"channels_down": 8, "channels_up": 8, "channels_skip": 2, "levels": 3}


def _run(net: nn.Module, c: int, h: int, w: int) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.rand(2, c, h, w))


# --------------------------------------------------------------------------------------------
# SkipNet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("skip", "expected"), [(4, 2_217_831), (128, 3_002_627)])
def test_skip_parameter_count_matches_authors(skip: int, expected: int) -> None:
    net = SkipNet(
        32,
        3,
        channels_down=128,
        channels_up=128,
        channels_skip=skip,
        levels=5,
        upsample_mode="bilinear",
    )
    assert count_parameters(net) == expected
    assert net.multiple == 32


def test_skip_default_5_levels_zero_padding_odd_multiple() -> None:
    net = SkipNet(4, 3, channels_down=8, channels_up=8, channels_skip=2, padding="zero")
    assert net.multiple == 32
    assert _run(net, 4, 32, 96).shape == (2, 3, 32, 96)


def test_skip_snail_jpeg_network() -> None:
    ch = [8, 16, 32, 64, 128]
    net = SkipNet(3, 3, channels_down=ch, channels_up=ch, channels_skip=[0, 0, 0, 4, 4])
    assert net.levels == 5 and net.multiple == 32
    assert _run(net, 3, 64, 96).shape == (2, 3, 64, 96)


def test_skip_large_hole_inpainting_network() -> None:
    net = SkipNet(
        2,
        3,
        channels_down=4,
        channels_up=4,
        channels_skip=0,
        levels=6,
        upsample_mode="nearest",
    )
    assert net.multiple == 64
    assert _run(net, 2, 128, 192).shape == (2, 3, 128, 192)


@pytest.mark.parametrize("padding", ["reflection", "zero"])
@pytest.mark.parametrize("upsample_mode", ["nearest", "bilinear"])
def test_skip_shape_padding_upsample(padding: str, upsample_mode: str) -> None:
    net = SkipNet(3, 3, **SMALL, padding=padding, upsample_mode=upsample_mode)  # type: ignore[arg-type]
    assert net.multiple == 8
    out = _run(net, 3, 24, 40)
    assert out.shape == (2, 3, 24, 40)
    assert out.min() > 0 and out.max() < 1


@pytest.mark.parametrize("act", ["LeakyReLU", "Swish", "ELU", "none"])
def test_skip_activations(act: str) -> None:
    net = SkipNet(3, 2, **SMALL, activation=act)  # type: ignore[arg-type]
    assert _run(net, 3, 24, 40).shape == (2, 2, 24, 40)


@pytest.mark.parametrize("mode", ["stride", "avg", "max", "lanczos2", "lanczos3"])
def test_skip_downsample_modes(mode: str) -> None:
    net = SkipNet(3, 3, **SMALL, downsample_mode=mode)  # type: ignore[arg-type]
    assert _run(net, 3, 24, 40).shape == (2, 3, 24, 40)
    # the Lanczos downsamplers are fixed: they add no trainable parameters
    assert count_parameters(net) == count_parameters(SkipNet(3, 3, **SMALL))  # type: ignore[arg-type]


def test_skip_without_batch_norm_and_sigmoid() -> None:
    net = SkipNet(3, 3, **SMALL, batch_norm=False, sigmoid=False)  # type: ignore[arg-type]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.Sigmoid) for m in net.modules())
    assert _run(net, 3, 24, 40).shape == (2, 3, 24, 40)


def test_skip_per_level_lists() -> None:
    net = SkipNet(
        3,
        3,
        channels_down=[4, 8],
        channels_up=[4, 8],
        channels_skip=[0, 2],
        filter_size_down=[3, 5],
        filter_size_up=[3, 1],
        upsample_mode=["nearest", "bilinear"],
        levels=7,  # ignored: the lists fix the level count
        need_1x1_up=False,
    )
    assert net.levels == 2 and net.multiple == 4
    assert _run(net, 3, 12, 20).shape == (2, 3, 12, 20)


def test_skip_deterministic_under_seed() -> None:
    x = torch.rand(1, 3, 24, 40)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = SkipNet(3, 3, **SMALL)  # type: ignore[arg-type]
        with torch.no_grad():
            outs.append(net(x))
    assert torch.equal(outs[0], outs[1])


def test_skip_unequal_lists_raise() -> None:
    with pytest.raises(ValueError, match="same length"):
        SkipNet(3, 3, channels_down=[8, 8, 8], channels_up=[8, 8], channels_skip=4)
    with pytest.raises(ValueError, match="same length"):
        SkipNet(3, 3, channels_down=[8, 8], upsample_mode=["nearest"])


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"upsample_mode": "bicubic"}, "'nearest', 'bilinear'"),
        ({"downsample_mode": "lanczos4"}, "'stride', 'avg', 'max', 'lanczos2', 'lanczos3'"),
        ({"padding": "circular"}, "'reflection'"),
        ({"activation": "ReLU"}, "'LeakyReLU', 'Swish', 'ELU', 'none'"),
    ],
)
def test_skip_unknown_mode_raises(kwargs: dict[str, str], allowed: str) -> None:
    with pytest.raises(ValueError, match="expected one of") as info:
        SkipNet(3, 3, **SMALL, **kwargs)  # type: ignore[arg-type]
    assert allowed in str(info.value)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


# --------------------------------------------------------------------------------------------
# UNet / ResNet / build helper
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upsample_mode", ["deconv", "nearest", "bilinear"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_unet_shapes(upsample_mode: str, norm: str) -> None:
    net = UNet(3, 3, feature_scale=16, upsample_mode=upsample_mode, norm=norm)
    assert net.multiple == 16
    out = _run(net, 3, 16, 48)
    assert out.shape == (2, 3, 16, 48)
    assert out.min() > 0 and out.max() < 1


def test_unet_more_layers_and_concat_x() -> None:
    net = UNet(
        3, 2, feature_scale=8, more_layers=2, concat_x=True, padding="reflection", norm="batch"
    )
    assert net.multiple == 64
    assert _run(net, 3, 128, 192).shape == (2, 2, 128, 192)


def test_unet_unknown_mode_raises() -> None:
    with pytest.raises(ValueError, match="'deconv', 'nearest', 'bilinear'"):
        UNet(3, 3, upsample_mode="bicubic")
    with pytest.raises(ValueError, match="'batch', 'instance', 'none'"):
        UNet(3, 3, norm="group")


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("padding", ["reflection", "zero"])
def test_resnet_odd_size(norm: str, padding: str) -> None:
    net = ResNet(3, 3, num_blocks=2, num_channels=8, norm=norm, padding=padding)
    assert net.multiple == 1
    out = _run(net, 3, 37, 31)
    assert out.shape == (2, 3, 37, 31)
    assert out.min() > 0 and out.max() < 1


def test_resnet_without_residual() -> None:
    net = ResNet(2, 1, num_blocks=1, num_channels=4, residual=False, sigmoid=False)
    assert _run(net, 2, 9, 11).shape == (2, 1, 9, 11)


def test_unet_resnet_deterministic_under_seed() -> None:
    x = torch.rand(1, 3, 32, 32)
    for make in (
        lambda: UNet(3, 3, feature_scale=16),
        lambda: ResNet(3, 3, num_blocks=1, num_channels=4),
    ):
        outs = []
        for _ in range(2):
            torch.manual_seed(7)
            net = make()
            with torch.no_grad():
                outs.append(net(x))
        assert torch.equal(outs[0], outs[1])


def test_build_network() -> None:
    net = build_network("skip", 3, 3, **SMALL)
    assert isinstance(net, SkipNet)
    assert isinstance(build_network("ResNet", 3, 3, num_blocks=1), ResNet)
    with pytest.raises(ValueError, match="'skip', 'unet', 'resnet'"):
        build_network("dcgan", 3, 3)


# --------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------


def test_concat_centre_crops_only_when_needed() -> None:
    class Crop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 1:, 2:]

    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    out = Concat(1, nn.Identity(), Crop())(x)
    assert out.shape == (1, 4, 4, 5)
    # identity branch centre-cropped by ((5-4)//2, (7-5)//2) = (0, 1)
    assert torch.equal(out[:, :2], x[:, :, 0:4, 1:6])
    same = Concat(1, nn.Identity(), nn.Identity())(x)
    assert torch.equal(same, torch.cat([x, x], 1))


def test_get_kernel_matches_authors_kernels() -> None:
    if not KERNELS_JSON.is_file():
        pytest.skip(f"reference kernels not found at {KERNELS_JSON} (set DIP_SHARED)")
    reference = json.loads(KERNELS_JSON.read_text())
    assert reference
    for key, entry in reference.items():
        kernel_type, factor = key.rsplit("_x", 1)
        phase = 0.5 if kernel_type.startswith("lanczos") else 0.0
        kernel = get_kernel(kernel_type, int(factor), phase, None, None, None)
        expected = torch.tensor(entry["kernel"], dtype=torch.float64)
        assert list(kernel.shape) == list(entry["shape"]), key
        torch.testing.assert_close(kernel, expected, atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("support", [2, 3])
@pytest.mark.parametrize("factor", [2, 4])
def test_lanczos_kernel_sums_to_one(support: int, factor: int) -> None:
    kernel = lanczos_kernel(factor, support, phase=0.5)
    assert kernel.shape == (2 * support * factor, 2 * support * factor)
    assert abs(kernel.sum().item() - 1.0) < 1e-12
    named = get_kernel(f"lanczos{support}", factor, 0.5, None, None, None)
    torch.testing.assert_close(kernel, named)
    assert abs(lanczos_kernel(factor, support, phase=0).sum().item() - 1.0) < 1e-12


def test_get_kernel_base_types_and_errors() -> None:
    box = get_kernel("box", 2, 0.5, 4, None, None)
    assert torch.allclose(box, torch.full((4, 4), 1 / 16, dtype=torch.float64))
    gauss = get_kernel("gauss", 2, 0, 7, None, 0.5)
    torch.testing.assert_close(gauss, get_kernel("gauss12", 2, 0, None, None, None))
    with pytest.raises(ValueError, match="expected one of"):
        get_kernel("bicubic", 2, 0.5, None, None, None)
    with pytest.raises(ValueError, match="phase"):
        get_kernel("gauss12", 2, 0.5, None, None, None)


@pytest.mark.parametrize("kernel_type", ["lanczos2", "lanczos3", "gauss12", "gauss1sq2"])
@pytest.mark.parametrize("factor", [2, 4])
def test_downsampler_keeps_constant_image(kernel_type: str, factor: int) -> None:
    phase = 0.5 if kernel_type.startswith("lanczos") else 0.0
    down = Downsampler(3, factor, kernel_type, phase=phase, preserve_size=True)
    x = torch.full((1, 3, 16 * factor, 8 * factor), 0.7)
    x[:, 1] = -2.0
    y = down(x)
    assert y.shape == (1, 3, 16, 8)
    torch.testing.assert_close(y[:, 0], torch.full_like(y[:, 0], 0.7))
    torch.testing.assert_close(y[:, 1], torch.full_like(y[:, 1], -2.0))
    assert count_parameters(down) == 0


def test_downsampler_interior_matches_dense_convolution() -> None:
    """The depthwise form equals the authors' dense convolution with a diagonal kernel."""
    down = Downsampler(2, 2, "lanczos2", phase=0.5, preserve_size=False)
    x = torch.rand(1, 2, 20, 20)
    dense = torch.zeros(2, 2, 8, 8)
    dense[0, 0] = down.kernel
    dense[1, 1] = down.kernel
    expected = nn.functional.conv2d(x, dense, stride=2)
    torch.testing.assert_close(down(x), expected)
