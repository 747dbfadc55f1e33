"""Tests of dip_lightning.degradations: the operators (one family, by properties) and the masks."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dip_lightning.data.masks import load_mask
from dip_lightning.degradations import (
    DOWNSAMPLE_FACTORS,
    Degradation,
    Downsample,
    Mask,
    bicubic_upsample,
    make_degradation,
    random_pixel_mask,
    random_rectangles_mask,
    rectangle_mask,
    text_mask,
)
from dip_lightning.errors import ConfigError, DIPError, ImageError
from dip_lightning.networks.blocks import Downsampler

SHARED = Path(os.environ.get("DIP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
KERNELS_JSON = SHARED / "reference" / "downsampler_kernels.json"

ODD = (3, 37, 31)  # odd sizes for operators that keep the size
SR = (3, 40, 24)  # divisible by every super-resolution factor
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text
    assert text
    return text


# --------------------------------------------------------------------------------------------
# the operator family, through one factory
# --------------------------------------------------------------------------------------------

Builder = Callable[[torch.Generator], tuple[Degradation, tuple[int, int, int]]]


def _mask_op(make: Callable[[torch.Generator], torch.Tensor]) -> Builder:
    return lambda g: (make_degradation("mask", mask=make(g)), ODD)


def _down_op(factor: int, kernel: str) -> Builder:
    return lambda g: (
        make_degradation("downsample", factor=factor, channels=SR[0], kernel=kernel),
        SR,
    )


OPERATORS: dict[str, Builder] = {
    "identity": lambda g: (make_degradation("identity"), ODD),
    "mask-pixels": _mask_op(lambda g: random_pixel_mask(ODD, 0.5, g)),
    "mask-per-channel": _mask_op(lambda g: random_pixel_mask(ODD, 0.3, g, per_channel=True)),
    "mask-boxes": _mask_op(lambda g: random_rectangles_mask(ODD[1], ODD[2], 3, 0.4, g)),
    "mask-text": _mask_op(lambda g: text_mask(ODD[1], ODD[2], "ab", font_size=10, generator=g)),
    "downsample-x2-lanczos2": _down_op(2, "lanczos2"),
    "downsample-x4-lanczos2": _down_op(4, "lanczos2"),
    "downsample-x8-lanczos3": _down_op(8, "lanczos3"),
    "downsample-x4-gauss12": _down_op(4, "gauss12"),
    "downsample-x8-box": _down_op(8, "box"),
}
DOWNSAMPLERS = [name for name in OPERATORS if name.startswith("downsample")]
MASKS = [name for name in OPERATORS if name.startswith("mask")]


def make_operator(
    name: str, generator: torch.Generator
) -> tuple[Degradation, tuple[int, int, int]]:
    """The operator ``name`` and the (C, H, W) image size it is tested at."""
    return OPERATORS[name](generator)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


@pytest.mark.parametrize("name", OPERATORS)
def test_linear(name: str, rng: torch.Generator) -> None:
    op, shape = make_operator(name, rng)
    x = torch.rand(2, *shape, generator=rng, dtype=torch.float64)
    y = torch.rand(2, *shape, generator=rng, dtype=torch.float64)
    a, b = 0.7, -1.9
    torch.testing.assert_close(op(a * x + b * y), a * op(x) + b * op(y))


@pytest.mark.parametrize("name", OPERATORS)
def test_shape_is_observed_size(name: str, rng: torch.Generator) -> None:
    op, (c, h, w) = make_operator(name, rng)
    out = op(torch.rand(2, c, h, w, generator=rng))
    assert out.shape == (2, c, *op.observed_size(h, w))
    sim = op.simulate(torch.rand(1, c, h, w, generator=rng), rng)
    assert sim.shape == (1, c, *op.observed_size(h, w))


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint(name: str, rng: torch.Generator) -> None:
    op, (c, h, w) = make_operator(name, rng)
    x = torch.rand(2, c, h, w, generator=rng, dtype=torch.float64)
    y = torch.rand(2, c, *op.observed_size(h, w), generator=rng, dtype=torch.float64)
    _, at_y = torch.autograd.functional.vjp(op, x, y)
    torch.testing.assert_close(_dot(op(x), y), _dot(x, at_y))
    adjoint = getattr(op, "adjoint", None)  # Mask and Downsample have an explicit one
    if callable(adjoint):
        torch.testing.assert_close(adjoint(y), at_y)
        torch.testing.assert_close(_dot(op(x), y), _dot(x, adjoint(y)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", OPERATORS)
def test_dtype_and_device_kept(
    name: str, dtype: torch.dtype, device: str, rng: torch.Generator
) -> None:
    op, shape = make_operator(name, rng)
    op = op.to(device)
    x = torch.rand(1, *shape, generator=rng).to(device=device, dtype=dtype)
    out = op(x)
    assert out.dtype == dtype
    assert out.device == x.device


@pytest.mark.parametrize("name", MASKS)
def test_mask_is_idempotent(name: str, rng: torch.Generator) -> None:
    op, shape = make_operator(name, rng)
    x = torch.rand(2, *shape, generator=rng)
    assert torch.equal(op(op(x)), op(x))


@pytest.mark.parametrize("name", MASKS)
def test_mask_simulate_keeps_known_pixels(name: str, rng: torch.Generator) -> None:
    op, shape = make_operator(name, rng)
    assert isinstance(op, Mask)
    x = torch.rand(1, *shape, generator=rng) + 0.5  # no zero in x
    y = op.simulate(x, rng)
    known = op.mask.expand_as(x) == 1
    assert torch.equal(y[known], x[known])
    assert bool((y[~known] == 0).all())


@pytest.mark.parametrize("name", DOWNSAMPLERS)
def test_constant_image_stays_constant_everywhere(name: str, rng: torch.Generator) -> None:
    # replication padding and a kernel that sums to 1: constant up to the border too
    op, shape = make_operator(name, rng)
    for value in (0.0, 0.37, 1.0):
        out = op(torch.full((1, *shape), value, dtype=torch.float64))
        torch.testing.assert_close(out, torch.full_like(out, value))


def test_downsample_is_the_authors_downsampler(rng: torch.Generator) -> None:
    op = Downsample(4, 3)
    authors = Downsampler(
        n_planes=3, factor=4, kernel_type="lanczos2", phase=0.5, preserve_size=True
    )
    x = torch.rand(2, *SR, generator=rng)
    assert torch.equal(op(x), authors(x))


def _impulse_response(op: Downsample, factor: int, k: int) -> torch.Tensor:
    """Reassemble the k x k kernel from the responses to factor**2 impulses (one per phase)."""
    n = 2 * (k // factor + 2)  # low-resolution size: the kernel fits away from the borders
    size = n * factor
    r0 = size // 2
    x = torch.zeros(factor * factor, 1, size, size, dtype=torch.float64)
    for u in range(factor):
        for v in range(factor):
            x[u * factor + v, 0, r0 + u, r0 + v] = 1.0
    y = op(x)
    pad = op.downsampler.pad
    kernel = torch.full((k, k), math.nan, dtype=torch.float64)
    for u in range(factor):
        for v in range(factor):
            for i in range(n):
                for j in range(n):
                    a, b = r0 + u + pad - i * factor, r0 + v + pad - j * factor
                    if 0 <= a < k and 0 <= b < k:
                        kernel[a, b] = y[u * factor + v, 0, i, j]
    return kernel


def _reference_kernels() -> dict[str, dict[str, object]]:
    if not KERNELS_JSON.is_file():
        pytest.skip(f"authors' reference kernels not found at {KERNELS_JSON} (set DIP_SHARED)")
    data: dict[str, dict[str, object]] = json.loads(KERNELS_JSON.read_text())
    return data


@pytest.mark.parametrize("kernel_type", ["lanczos2", "lanczos3", "gauss12", "gauss1sq2"])
@pytest.mark.parametrize("factor", DOWNSAMPLE_FACTORS)
def test_impulse_response_is_the_authors_kernel(kernel_type: str, factor: int) -> None:
    key = f"{kernel_type}_x{factor}"
    entry = _reference_kernels().get(key)
    if entry is None:
        pytest.skip(f"{key} not in {KERNELS_JSON}")
    expected = torch.tensor(entry["kernel"], dtype=torch.float64)
    op = Downsample(factor, 1, kernel=kernel_type)
    assert list(expected.shape) == entry["shape"] == list(op.kernel.shape)
    got = _impulse_response(op, factor, expected.shape[0])
    assert not bool(got.isnan().any())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)


def test_box_kernel_is_average_pooling(rng: torch.Generator) -> None:
    x = torch.rand(2, *SR, generator=rng)
    torch.testing.assert_close(
        Downsample(4, 3, kernel="box")(x), torch.nn.functional.avg_pool2d(x, 4)
    )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"factor": 3, "channels": 3}, "2, 4, 8"),
        ({"factor": 4, "channels": 3, "kernel": "bicubic"}, "lanczos2"),
        ({"factor": 4, "channels": 3, "kernel": "gauss12", "phase": 0.5}, "phase"),
        ({"factor": 4, "channels": 0}, "channels"),
    ],
)
def test_downsample_rejects_bad_options(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        Downsample(**kwargs)  # type: ignore[arg-type]
    assert needle in _one_line(err)


def test_downsample_rejects_images_it_cannot_take() -> None:
    op = Downsample(4, 3)
    with pytest.raises(ConfigError) as err:
        op(torch.rand(1, 3, 41, 24))
    assert "24x41" in _one_line(err) and "multiples of 4" in str(err.value)
    with pytest.raises(ConfigError) as err:
        op(torch.rand(1, 1, 40, 24))
    assert "(N, 3, H, W)" in _one_line(err)


def test_bicubic_upsample_matches_pillow_on_8bit_images(rng: torch.Generator) -> None:
    lr = (torch.rand(3, 9, 7, generator=rng) * 255).round() / 255
    up = bicubic_upsample(lr, 4)
    assert up.shape == (3, 36, 28)
    pil = Image.fromarray((lr * 255).round().byte().permute(1, 2, 0).numpy())
    ref = torch.from_numpy(np.array(pil.resize((28, 36), Image.Resampling.BICUBIC))).permute(
        2, 0, 1
    )
    # Pillow's 8-bit path rounds between its two passes and at the end: about one grey level
    assert float((up * 255 - ref.double()).abs().max()) <= 1.5
    assert float(up.min()) >= 0.0 and float(up.max()) <= 1.0
    batch = bicubic_upsample(lr[None].double(), 2)
    assert batch.shape == (1, 3, 18, 14) and batch.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# Mask
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "needle"),
    [
        (torch.tensor([[0.0, 0.5], [1.0, 1.0]]), "not binary"),
        (torch.zeros(1, 4, 5), "no known pixel"),
        (torch.ones(3, 4, 5), "hides nothing"),
        (torch.ones(2, 1, 4, 5), "shape"),
        (torch.ones(1, 1, 1, 4, 5), "shape"),
    ],
)
def test_mask_rejects_bad_masks(mask: torch.Tensor, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        Mask(mask)
    assert needle in _one_line(err)


def test_mask_accepts_bool_and_3d() -> None:
    m = torch.tensor([[[True, False], [True, True]]])
    op = Mask(m)
    assert op.mask.shape == (1, 1, 2, 2) and op.mask.dtype == torch.get_default_dtype()
    assert op.missing_ratio == 0.25
    assert "mask" in op.state_dict()  # saved in checkpoints


def test_mask_check_image(rng: torch.Generator) -> None:
    op = Mask(random_pixel_mask(ODD, 0.5, rng, per_channel=True))
    op.check_image(torch.rand(*ODD))
    op.check_image(ODD)
    with pytest.raises(ConfigError) as err:
        op.check_image((3, 37, 32))
    text = _one_line(err)
    assert "31x37" in text and "32x37" in text and "resize" in text
    with pytest.raises(ConfigError) as err:
        op(torch.rand(1, 1, 37, 31))
    assert "3 channels" in _one_line(err)
    shared = Mask(random_pixel_mask((1, 37, 31), 0.5, rng))
    assert shared(torch.rand(2, 4, 37, 31)).shape == (2, 4, 37, 31)


# --------------------------------------------------------------------------------------------
# mask generators
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_random_pixel_mask_missing_fraction(ratio: float, rng: torch.Generator) -> None:
    m = random_pixel_mask((3, 64, 64), ratio, rng, per_channel=True)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    for channel in m:  # 4 standard deviations of a binomial fraction on 4096 pixels
        assert abs(float(1 - channel.mean()) - ratio) < 4 * math.sqrt(ratio * (1 - ratio) / 4096)


def test_random_pixel_mask_deterministic_and_shared() -> None:
    def draw(seed: int, per_channel: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return random_pixel_mask(ODD, 0.5, g, per_channel=per_channel)

    assert torch.equal(draw(1, False), draw(1, False))
    assert not torch.equal(draw(1, False), draw(2, False))
    shared, per_channel = draw(3, False), draw(3, True)
    assert shared.shape == per_channel.shape == ODD
    assert all(torch.equal(shared[0], shared[c]) for c in range(3))
    assert not torch.equal(per_channel[0], per_channel[1])


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, math.nan, True, "0.5"])
def test_random_pixel_mask_rejects_bad_ratio(ratio: object, rng: torch.Generator) -> None:
    with pytest.raises(ConfigError) as err:
        random_pixel_mask(ODD, ratio, rng)  # type: ignore[arg-type]
    assert "missing_ratio" in _one_line(err) and "(0, 1)" in str(err.value)


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    data=st.data(),
)
def test_rectangle_mask_hides_exactly_the_box(h: int, w: int, data: st.DataObject) -> None:
    top = data.draw(st.integers(0, h - 1))
    left = data.draw(st.integers(0, w - 1))
    bh = data.draw(st.integers(1, h - top))
    bw = data.draw(st.integers(1, w - left))
    m = rectangle_mask(h, w, [(top, left, bh, bw)])
    assert m.shape == (1, h, w)
    assert int((m == 0).sum()) == bh * bw
    assert bool((m[0, top : top + bh, left : left + bw] == 0).all())


def test_rectangle_mask_rejects_boxes_outside() -> None:
    with pytest.raises(ConfigError) as err:
        rectangle_mask(10, 8, [(5, 0, 6, 2)])
    assert "inside" in _one_line(err)


def test_random_rectangles_mask(rng: torch.Generator) -> None:
    m = random_rectangles_mask(37, 31, 4, 0.3, rng)
    assert m.shape == (1, 37, 31)
    assert bool((m == 0).any()) and bool((m == 1).any())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        random_rectangles_mask(37, 31, 4, 0.3, g1), random_rectangles_mask(37, 31, 4, 0.3, g2)
    )


def test_text_mask(rng: torch.Generator) -> None:
    m = text_mask(64, 96)
    assert m.shape == (1, 64, 96)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert 0.0 < float(1 - m.mean()) < 0.5  # text strokes are a minority
    assert torch.equal(m, text_mask(64, 96))  # fixed layout without a generator
    shifted = text_mask(64, 96, generator=rng)
    assert not torch.equal(m, shifted)
    Mask(shifted)  # a valid mask
    with pytest.raises(ConfigError) as err:
        text_mask(16, 16, "   ")
    _one_line(err)


# --------------------------------------------------------------------------------------------
# mask files
# --------------------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _holes(h: int = 37, w: int = 31) -> np.ndarray:
    a = np.full((h, w), 255, dtype=np.uint8)
    a[5:15, 3:20] = 0
    return a


def test_load_mask_gray(tmp_path: Path) -> None:
    a = _holes()
    a[0, :3] = [128, 60, 200]  # a few anti-aliased pixels are tolerated
    m = load_mask(_save(tmp_path / "m.png", a), 37, 31, 3)
    assert m.shape == (1, 37, 31) and m.dtype == torch.float32
    expected = torch.from_numpy(a >= 128).float()[None]
    assert torch.equal(m, expected)
    Mask(m).check_image(ODD)


def test_load_mask_colour(tmp_path: Path) -> None:
    a = _holes()
    same = _save(tmp_path / "same.png", np.stack([a, a, a], axis=-1))
    assert load_mask(same, 37, 31, 1).shape == (1, 37, 31)
    b = a.copy()
    b[20:30, 10:12] = 0
    differ = _save(tmp_path / "differ.png", np.stack([a, b, a], axis=-1))
    m = load_mask(differ, 37, 31, 3)
    assert m.shape == (3, 37, 31) and not torch.equal(m[0], m[1])
    with pytest.raises(ConfigError) as err:
        load_mask(differ, 37, 31, 1)
    assert "channel" in _one_line(err)


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (_holes(37, 30), "30x37"),
        (np.zeros((37, 31)), "no known pixel"),
        (np.full((37, 31), 255), "hides nothing"),
        (np.tile(np.linspace(0, 255, 31), (37, 1)), "not binary"),
    ],
    ids=["wrong-size", "all-zero", "all-one", "gradient"],
)
def test_load_mask_errors(tmp_path: Path, array: np.ndarray, needle: str) -> None:
    path = _save(tmp_path / "bad.png", array)
    with pytest.raises(ConfigError) as err:
        load_mask(path, 37, 31, 3)
    text = _one_line(err)
    assert needle in text and str(path) in text
    if needle == "30x37":
        assert "31x37" in text


def test_load_mask_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        load_mask(tmp_path / "missing.png", 37, 31, 3)
    assert "mask not found" in _one_line(err)


def test_make_degradation_unknown() -> None:
    with pytest.raises(ConfigError) as err:
        make_degradation("blur")
    assert "'identity'" in _one_line(err)
    assert isinstance(err.value, DIPError)
