"""Tests for image I/O, atomic writes and padding."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dip_lightning.data.io import ImageInfo, load_image, save_image, to_pil, to_tensor
from dip_lightning.data.padding import CropBox, crop, pad_to_multiple, padded_size
from dip_lightning.errors import ConfigError, DIPError, ImageError
from dip_lightning.io_utils import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

W, H = 37, 31  # odd sizes on purpose
RNG = np.random.default_rng(0)


def _rgb_array(h: int = H, w: int = W, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def _gray_array(h: int = H, w: int = W) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


def _pixels(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        im.load()
        return im.mode, np.asarray(im).copy()


def _assert_one_line_with_path(exc: BaseException, path: Path) -> None:
    msg = str(exc)
    assert "\n" not in msg and "\r" not in msg
    assert str(path) in msg
    assert "Traceback" not in msg


# ------------------------------------------------------------------------------------ errors


def test_error_hierarchy() -> None:
    assert issubclass(ImageError, DIPError) and issubclass(ImageError, ValueError)
    assert issubclass(ConfigError, DIPError) and issubclass(ConfigError, ValueError)
    assert str(DIPError("a\nb")) == "a b"


# ------------------------------------------------------------------------------ round trips


def test_gray_l_round_trip_exact(tmp_path: Path) -> None:
    arr = _gray_array()
    src = tmp_path / "in.png"
    Image.fromarray(arr).save(src)
    img = load_image(src)
    assert img.tensor.shape == (1, H, W) and img.tensor.dtype == torch.float32
    assert img.alpha is None
    assert img.info == ImageInfo(mode="L", bit_depth=8, size=(H, W), format="PNG")
    assert img.path == src
    out = tmp_path / "out.png"
    save_image(img.tensor, out, like=img.info)
    mode, got = _pixels(out)
    assert mode == "L"
    np.testing.assert_array_equal(got, arr)


def test_rgb_round_trip_exact(tmp_path: Path) -> None:
    arr = _rgb_array()
    src = tmp_path / "in.png"
    Image.fromarray(arr).save(src)
    img = load_image(src)
    assert img.tensor.shape == (3, H, W)
    assert float(img.tensor.min()) >= 0.0 and float(img.tensor.max()) <= 1.0
    out = tmp_path / "out.png"
    save_image(img.tensor.unsqueeze(0), out, like=img.info)  # (1, C, H, W) accepted
    mode, got = _pixels(out)
    assert mode == "RGB"
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_round_trip_bit_exact(tmp_path: Path, mode: str) -> None:
    arr = _rgb_array(c=4 if mode == "RGBA" else 2)
    src = tmp_path / "in.png"
    Image.fromarray(arr, mode=mode).save(src)
    img = load_image(src)
    assert img.tensor.shape == (len(mode) - 1, H, W)
    assert img.alpha is not None and img.alpha.shape == (1, H, W)
    assert img.info.mode == mode
    out = tmp_path / "out.png"
    save_image(img.tensor, out, like=img.info, alpha=img.alpha)
    got_mode, got = _pixels(out)
    assert got_mode == mode
    np.testing.assert_array_equal(got, arr)


def test_palette_without_transparency(tmp_path: Path) -> None:
    rgb = Image.fromarray(_rgb_array())
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    src = tmp_path / "in.png"
    pal.save(src)
    img = load_image(src)
    assert img.info.mode == "P" and img.alpha is None
    assert img.tensor.shape == (3, H, W)
    expected = np.asarray(pal.convert("RGB"))
    out = tmp_path / "out.png"
    save_image(img.tensor, out, like=img.info)
    mode, got = _pixels(out)
    assert mode == "RGB"  # palette images are written back as RGB
    np.testing.assert_array_equal(got, expected)


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.fromarray(_rgb_array()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    src = tmp_path / "in.png"
    pal.save(src, transparency=0)
    img = load_image(src)
    assert img.info.mode == "P"
    assert img.alpha is not None and img.tensor.shape == (3, H, W)
    index = np.asarray(pal)
    np.testing.assert_array_equal(img.alpha[0].numpy() == 0.0, index == 0)
    out = tmp_path / "out.png"
    save_image(img.tensor, out, like=img.info, alpha=img.alpha)
    mode, got = _pixels(out)
    assert mode == "RGBA"
    np.testing.assert_array_equal(got[..., 3], np.where(index == 0, 0, 255))


def test_sixteen_bit_gray_png_exact(tmp_path: Path) -> None:
    arr = RNG.integers(0, 65536, size=(H, W), dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    src = tmp_path / "in.png"
    Image.fromarray(arr).save(src)
    img = load_image(src)
    assert img.info.bit_depth == 16 and img.info.mode.startswith("I")
    assert img.tensor.shape == (1, H, W)
    assert float(img.tensor.max()) == 1.0 and float(img.tensor.min()) == 0.0
    out = tmp_path / "out.png"
    save_image(img.tensor, out, like=img.info)
    mode, got = _pixels(out)
    assert mode == "I;16"
    np.testing.assert_array_equal(got.astype(np.uint16), arr)
    # same through TIFF
    out_tif = tmp_path / "out.tif"
    save_image(img.tensor, out_tif, like=img.info)
    np.testing.assert_array_equal(load_image(out_tif).tensor, img.tensor)


def test_sixteen_bit_to_jpeg_falls_back_to_8bit(tmp_path: Path) -> None:
    arr = RNG.integers(0, 65536, size=(H, W), dtype=np.uint16)
    src = tmp_path / "in.png"
    Image.fromarray(arr).save(src)
    img = load_image(src)
    for name in ("out.jpg", "out.bmp"):
        out = tmp_path / name
        save_image(img.tensor, out, like=img.info)
        mode, _ = _pixels(out)
        assert mode == "L"


def test_one_bit(tmp_path: Path) -> None:
    arr = _gray_array() > 127
    src = tmp_path / "in.png"
    Image.fromarray(arr).convert("1").save(src)
    img = load_image(src)
    assert img.info.mode == "1" and img.tensor.shape == (1, H, W)
    np.testing.assert_array_equal(img.tensor[0].numpy(), arr.astype(np.float32))
    out = tmp_path / "out.png"
    save_image(img.tensor, out, like=img.info)
    mode, got = _pixels(out)
    assert mode == "L"
    np.testing.assert_array_equal(got, arr.astype(np.uint8) * 255)


def test_cmyk_jpeg_to_rgb(tmp_path: Path) -> None:
    src = tmp_path / "in.jpg"
    Image.fromarray(_rgb_array(c=4), mode="CMYK").save(src, quality=95)
    img = load_image(src)
    assert img.info.mode == "CMYK" and img.info.format == "JPEG"
    assert img.tensor.shape == (3, H, W) and img.alpha is None
    out = tmp_path / "out.png"
    save_image(img.tensor, out, like=img.info)
    assert _pixels(out)[0] == "RGB"


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    src = tmp_path / "rotated.jpg"
    Image.fromarray(_rgb_array()).save(src, exif=exif)
    img = load_image(src)
    assert img.info.size == (W, H)
    assert img.tensor.shape == (3, W, H)


def test_grayscale_options(tmp_path: Path) -> None:
    arr = _rgb_array()
    src = tmp_path / "in.png"
    Image.fromarray(arr).save(src)
    gray = load_image(src, grayscale=True)
    assert gray.tensor.shape == (1, H, W)
    expected = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float32)
    assert np.abs(gray.tensor[0].numpy() * 255 - expected).max() <= 1.0
    src_l = tmp_path / "gray.png"
    Image.fromarray(_gray_array()).save(src_l)
    colour = load_image(src_l, grayscale=False)
    assert colour.tensor.shape == (3, H, W)
    assert torch.equal(colour.tensor[0], colour.tensor[2])
    assert load_image(src_l, grayscale=None).tensor.shape == (1, H, W)


def test_float_tiff_in_unit_range_accepted(tmp_path: Path) -> None:
    arr = RNG.random((H, W), dtype=np.float32)
    src = tmp_path / "f.tif"
    Image.fromarray(arr, mode="F").save(src)
    img = load_image(src)
    assert img.info.mode == "F" and img.info.bit_depth == 16
    np.testing.assert_array_equal(img.tensor[0].numpy(), arr)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_save_every_format(tmp_path: Path, suffix: str, channels: int) -> None:
    t = torch.rand(channels, H, W)
    alpha = torch.rand(1, H, W)
    out = tmp_path / "sub" / f"out{suffix}"
    save_image(t, out, alpha=alpha)
    back = load_image(out)
    assert back.info.size == (H, W)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp files left
    if suffix in (".png", ".tif", ".tiff"):
        assert back.alpha is not None
        assert torch.allclose(back.alpha, alpha, atol=0.5 / 255 + 1e-6)
        assert torch.allclose(back.tensor, t, atol=0.5 / 255 + 1e-6)


def test_save_rounds_half_up_and_clamps(tmp_path: Path) -> None:
    t = torch.tensor([[[0.5 / 255, 1.5 / 255], [-3.0, 7.0]]], dtype=torch.float64)
    out = tmp_path / "r.png"
    save_image(t, out)
    np.testing.assert_array_equal(_pixels(out)[1], [[1, 2], [0, 255]])


def test_save_refuses_non_finite(tmp_path: Path) -> None:
    t = torch.rand(3, 4, 4)
    t[1, 2, 3] = float("nan")
    out = tmp_path / "nan.png"
    with pytest.raises(DIPError, match="refusing to write an image with non-finite values"):
        save_image(t, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_save_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DIPError, match=r"\.png") as info:
        save_image(torch.rand(3, 4, 4), tmp_path / "x.gif")
    assert "\n" not in str(info.value)


def test_save_bad_shape(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        save_image(torch.rand(2, 4, 4), tmp_path / "x.png")
    with pytest.raises(ImageError):
        save_image(torch.rand(3, 4, 4), tmp_path / "x.png", alpha=torch.rand(1, 5, 4))


def test_pil_helpers() -> None:
    t = torch.rand(3, 5, 6)
    pil = to_pil(t)
    assert pil.mode == "RGB" and pil.size == (6, 5)
    assert torch.allclose(to_tensor(pil), t, atol=0.5 / 255 + 1e-6)


# ----------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="mask not found") as info:
        load_image(path, what="mask")
    _assert_one_line_with_path(info.value, path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory") as info:
        load_image(tmp_path)
    _assert_one_line_with_path(info.value, tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    Image.fromarray(_gray_array()).save(path)
    path.chmod(0)
    with pytest.raises(ImageError, match="permission") as info:
        load_image(path)
    _assert_one_line_with_path(info.value, path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, this is not an image\n")
    with pytest.raises(ImageError) as info:
        load_image(path, what="clean image")
    assert str(info.value).startswith("cannot read clean image:")
    _assert_one_line_with_path(info.value, path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(path)
    _assert_one_line_with_path(info.value, path)


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb_array()).save(buf, format="PNG")
    data = buf.getvalue()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(path)
    _assert_one_line_with_path(info.value, path)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (5, 1)])
def test_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "tiny.png"
    Image.new("L", size).save(path)
    with pytest.raises(ImageError, match="need at least 2x2 pixels") as info:
        load_image(path)
    assert f"{size[0]}x{size[1]}" in str(info.value)
    _assert_one_line_with_path(info.value, path)


def test_decompression_bomb_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (W, H)).save(path)
    with pytest.raises(ImageError, match="pixels") as info:
        load_image(path, max_pixels=W * H - 1)
    _assert_one_line_with_path(info.value, path)
    assert load_image(path, max_pixels=W * H).info.size == (H, W)


def test_float_tiff_out_of_range_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(RNG.random((H, W), dtype=np.float32) * 10.0 - 2.0, mode="F").save(path)
    with pytest.raises(ImageError, match="mode F") as info:
        load_image(path)
    assert "PNG" in str(info.value)
    _assert_one_line_with_path(info.value, path)


def test_int32_out_of_range_refused(tmp_path: Path) -> None:
    path = tmp_path / "int.tif"
    arr = np.full((H, W), 70000, dtype=np.int32)
    Image.fromarray(arr, mode="I").save(path)
    with pytest.raises(ImageError, match="mode I") as info:
        load_image(path)
    _assert_one_line_with_path(info.value, path)


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb_array(9, 7)).save(buf, format="PNG")
    return buf.getvalue()


VALID_PNG = _valid_png()


def _load_or_image_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        img = load_image(path, max_pixels=1_000_000)
    except ImageError as exc:
        _assert_one_line_with_path(exc, path)
    else:
        assert img.tensor.dim() == 3 and img.tensor.shape[0] in (1, 3)
        assert bool(torch.isfinite(img.tensor).all())


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_load_or_image_error(tmp_path: Path, data: bytes) -> None:
    _load_or_image_error(tmp_path / "fuzz.png", data)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID_PNG) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.integers(1, len(VALID_PNG)),
)
def test_mutated_png_load_or_image_error(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(VALID_PNG)
    for pos, value in edits:
        data[pos] = value
    _load_or_image_error(tmp_path / "mutated.png", bytes(data[:cut]))


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "result.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.png")
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]


def test_atomic_writes(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_text(tmp_path / "t.txt", "replaced")
    assert (tmp_path / "t.txt").read_text() == "replaced"
    obj = {"z": 1, "a": [float("nan"), float("inf"), 2.5], "p": tmp_path, "n": np.float32(0.5)}
    atomic_write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_text()
    assert text.endswith("}\n") and "NaN" not in text and "Infinity" not in text
    assert list(json.loads(text)) == ["z", "a", "p", "n"]
    assert json.loads(text)["a"] == [None, None, 2.5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.json", "t.txt"]


# ----------------------------------------------------------------------------------- padding


SIZES = [(1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (31, 37), (32, 32), (33, 64), (1, 100), (65, 2)]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "constant"])
@pytest.mark.parametrize(("h", "w"), SIZES)
def test_pad_crop_round_trip(h: int, w: int, mode: str) -> None:
    x = torch.rand(2, 3, h, w)
    y, box = pad_to_multiple(x, 32, mode=mode)
    assert y.shape[:2] == (2, 3)
    assert y.shape[-2] % 32 == 0 and y.shape[-1] % 32 == 0
    assert (y.shape[-2], y.shape[-1]) == padded_size(h, w, 32)
    assert y.shape[-2] - h < 32 and y.shape[-1] - w < 32
    assert torch.equal(crop(y, box), x)
    # split as evenly as possible, extra pixel at the bottom/right
    bottom, right = y.shape[-2] - box.bottom, y.shape[-1] - box.right
    assert bottom - box.top in (0, 1) and right - box.left in (0, 1)


def test_reflect_matches_torch_when_possible() -> None:
    x = torch.rand(1, 3, 20, 27)
    y, box = pad_to_multiple(x, 32)
    pads = (box.left, 32 - box.right, box.top, 32 - box.bottom)
    assert torch.equal(y, torch.nn.functional.pad(x, pads, mode="reflect"))


def test_pad_large_reflect_values_come_from_image() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y, box = pad_to_multiple(x, 32)
    assert y.shape == (32, 32) and box == CropBox(top=15, left=15, height=2, width=2)
    assert set(y.unique().tolist()) == {1.0, 2.0, 3.0, 4.0}


def test_pad_keeps_gradient_and_dtype() -> None:
    x = torch.rand(1, 5, 3, requires_grad=True)
    y, _ = pad_to_multiple(x, 8)
    y.sum().backward()
    assert x.grad is not None and float(x.grad.sum()) == 64.0
    xi = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    assert pad_to_multiple(xi, 4)[0].dtype == torch.int64


def test_pad_no_op_and_errors() -> None:
    x = torch.rand(3, 64, 32)
    y, box = pad_to_multiple(x, 32)
    assert y is x and box == CropBox(0, 0, 64, 32)
    with pytest.raises(ValueError):
        pad_to_multiple(x, 0)
    with pytest.raises(ValueError):
        pad_to_multiple(x, 32, mode="bogus")
    with pytest.raises(ValueError):
        crop(x, CropBox(0, 0, 65, 32))
