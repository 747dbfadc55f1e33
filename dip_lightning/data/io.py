"""Read and write images as float tensors in ``[0, 1]`` (Pillow only).

Loading (:func:`load_image`) normalises every supported file to a ``(C, H, W)`` float32 tensor
with ``C = 1`` (gray) or ``C = 3`` (colour), plus an optional separate alpha channel, and
records the file's mode and bit depth in an :class:`ImageInfo`. Saving (:func:`save_image`)
with ``like=info`` writes the same kind of file back (8-bit or 16-bit, gray or colour, with the
alpha channel when one is given), atomically.

How file modes are read:

============================  ==========================================  =========
Pillow mode                   tensor                                      bit depth
============================  ==========================================  =========
``1``                         gray (0 or 1)                               8
``L``                         gray                                        8
``LA``, ``La``                gray + alpha                                8
``P``, ``PA``                 RGB (+ alpha if the palette has             8
                              transparency)
``RGB``, ``RGBX``             RGB                                         8
``RGBA``, ``RGBa``            RGB + alpha                                 8
``CMYK``, ``YCbCr``,          converted to RGB                            8
``LAB``, ``HSV``
``I;16``, ``I;16L/B/N``       gray, value / 65535                         16
``I`` (32-bit int)            gray, value / 65535; refused unless all     16
                              values are in ``[0, 65535]``
``F`` (32-bit float)          gray, values used as they are; refused      16
                              unless all values are finite and in
                              ``[0, 1]``
anything else                 refused with a message naming the mode
============================  ==========================================  =========

Colour-key transparency (a ``tRNS`` colour in an ``L``/``RGB`` PNG) is read as an alpha
channel too. Only the first frame of multi-frame files (GIF, TIFF, ...) is read. EXIF
orientation is applied (a corrupt EXIF block is ignored).

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.png"
>>> save_image(torch.tensor([[[0.0, 0.5], [1.0, 0.25]]]), path)
>>> img = load_image(path)
>>> img.info
ImageInfo(mode='L', bit_depth=8, size=(2, 2), format='PNG')
>>> (img.tensor * 255).round().tolist()
[[[0.0, 128.0], [255.0, 64.0]]]
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dip_lightning.errors import DIPError, ImageError, one_line
from dip_lightning.io_utils import atomic_path

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageInfo",
    "LoadedImage",
    "load_image",
    "save_image",
    "to_pil",
    "to_tensor",
]

#: Output file suffixes understood by :func:`save_image`, mapped to the Pillow format.
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".bmp": "BMP",
    ".jpeg": "JPEG",
    ".jpg": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_TO_RGB_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
# formats that can store 16-bit gray / an alpha channel (as written by Pillow)
_FORMATS_16BIT = frozenset({"PNG", "TIFF"})
_FORMATS_ALPHA = frozenset({"PNG", "TIFF", "WEBP"})
_FORMATS_GRAY = frozenset({"PNG", "TIFF", "JPEG", "BMP"})
_FIX_CONVERT = "convert it to an 8- or 16-bit PNG"


@dataclass(frozen=True)
class ImageInfo:
    """What an image file looked like when it was read."""

    mode: str
    """Pillow mode of the file as read (``"L"``, ``"RGB"``, ``"RGBA"``, ``"I;16"``, ...)."""
    bit_depth: int
    """8 or 16 (16 for ``I;16``/``I``/``F`` gray files)."""
    size: tuple[int, int]
    """``(height, width)`` after EXIF orientation."""
    format: str | None
    """Pillow format name (``"PNG"``, ``"JPEG"``, ...) or ``None``."""

    @property
    def is_gray(self) -> bool:
        """Whether the file is single-channel (possibly with alpha)."""
        return self.mode in _GRAY_MODES or self.mode in _UINT16_MODES


@dataclass
class LoadedImage:
    """An image read by :func:`load_image`."""

    tensor: torch.Tensor
    """float32 ``(C, H, W)`` in ``[0, 1]`` with ``C`` 1 or 3; never includes alpha."""
    alpha: torch.Tensor | None
    """float32 ``(1, H, W)`` in ``[0, 1]`` if the file has transparency, else ``None``."""
    info: ImageInfo
    path: Path | None = None

    @property
    def channels(self) -> int:
        """Number of channels of :attr:`tensor` (1 or 3)."""
        return int(self.tensor.shape[0])


# --------------------------------------------------------------------------------------------
# PIL <-> tensor


def _u8(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / np.float32(255.0))


def _chw(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _split(pil: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Decode a loaded PIL image into (tensor (C,H,W), alpha (1,H,W) or None, bit depth).

    Raises :class:`ValueError` (with a message) for unsupported modes or value ranges.
    """
    mode = pil.mode
    if mode in ("P", "PA", "L", "RGB") and (mode == "PA" or pil.has_transparency_data):
        pil = pil.convert("LA" if mode == "L" else "RGBA")
    elif mode == "P":
        pil = pil.convert("RGB")
    elif mode == "La":
        pil = pil.convert("LA")
    elif mode == "RGBa":
        pil = pil.convert("RGBA")
    elif mode in _TO_RGB_MODES:
        pil = pil.convert("RGB")
    elif mode == "1":
        pil = pil.convert("L")
    mode = pil.mode

    if mode in ("L", "RGB"):
        return _chw(_u8(np.asarray(pil))), None, 8
    if mode in ("LA", "RGBA"):
        arr = np.asarray(pil)
        return _chw(_u8(arr[..., :-1])), _chw(_u8(arr[..., -1])), 8
    if mode in _UINT16_MODES:
        arr16 = np.asarray(pil).astype(np.float32) / np.float32(65535.0)
        return torch.from_numpy(arr16).unsqueeze(0), None, 16
    if mode == "I":
        arr32 = np.asarray(pil)
        lo, hi = int(arr32.min()), int(arr32.max())
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"mode I (32-bit integer) with values in [{lo}, {hi}], outside the 16-bit range "
                f"[0, 65535]; {_FIX_CONVERT}"
            )
        arr16 = arr32.astype(np.float32) / np.float32(65535.0)
        return torch.from_numpy(arr16).unsqueeze(0), None, 16
    if mode == "F":
        arrf = np.asarray(pil).astype(np.float32)
        if not np.isfinite(arrf).all():
            raise ValueError(f"mode F (32-bit float) with non-finite values; {_FIX_CONVERT}")
        lo_f, hi_f = float(arrf.min()), float(arrf.max())
        if lo_f < 0.0 or hi_f > 1.0:
            raise ValueError(
                f"mode F (32-bit float) with values in [{lo_f:g}, {hi_f:g}], outside [0, 1]; "
                f"{_FIX_CONVERT}"
            )
        return torch.from_numpy(np.ascontiguousarray(arrf)).unsqueeze(0), None, 16
    raise ValueError(f"unsupported image mode {pil.mode!r}; {_FIX_CONVERT} (gray or RGB)")


def to_tensor(pil: Image.Image) -> torch.Tensor:
    """Convert a PIL image to a float32 ``(C, H, W)`` tensor in ``[0, 1]`` (alpha dropped).

    Modes are handled as described in the module docstring; unsupported modes raise
    :class:`ValueError`.

    >>> from PIL import Image
    >>> to_tensor(Image.new("RGBA", (3, 2), (255, 0, 51, 7))).shape
    torch.Size([3, 2, 3])
    >>> to_tensor(Image.new("I;16", (2, 2), 65535)).tolist()
    [[[1.0, 1.0], [1.0, 1.0]]]
    """
    return _split(pil)[0]


def _luma(t: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (the weights Pillow uses for ``convert("L")``) of a (3, H, W) tensor."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=t.dtype).view(3, 1, 1)
    return (t * weights).sum(dim=0, keepdim=True).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# loading


def _fail(what: str, path: object, reason: str, fix: str) -> ImageError:
    return ImageError(f"cannot read {what}: {path}: {one_line(reason)}; {fix}")


def _describe(exc: BaseException) -> str:
    text = one_line(exc)
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def not_found(what: str, path: str | os.PathLike[str]) -> str:
    """The one message for a file that is not there, wherever it is noticed.

    >>> not_found("image", "holiday.png")
    'image not found: holiday.png; check the path'
    """
    return f"{what} not found: {path}; check the path"


def load_image(
    path: str | os.PathLike[str],
    *,
    what: str = "image",
    grayscale: bool | None = None,
    max_pixels: int = 100_000_000,
) -> LoadedImage:
    """Read an image file as a float32 ``(C, H, W)`` tensor in ``[0, 1]``.

    ``what`` names the file in error messages (``"mask"``, ``"clean image"``, ...).
    ``grayscale=True`` converts colour to one channel (ITU-R 601-2 luma, as Pillow's ``"L"``),
    ``grayscale=False`` repeats a gray channel three times, ``None`` keeps the file's channels.
    Images with more than ``max_pixels`` pixels are refused before decoding (from the size in
    the header). Alpha, if any, is returned separately and never converted.

    Every failure (missing file, directory, permission, not an image, truncated or corrupt
    data, too small or too large, unsupported mode) raises :class:`ImageError` with a one-line
    message naming the path and the fix.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(not_found(what, p)) from None
    except PermissionError:
        raise _fail(what, p, "permission denied", "check the file permissions") from None
    except (OSError, ValueError) as exc:
        raise _fail(what, p, _describe(exc), "check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(what, p, "is a directory", "pass an image file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(what, p, "not a regular file", "pass an image file")

    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed below
    except PermissionError:
        raise _fail(what, p, "permission denied", "check the file permissions") from None
    except OSError as exc:
        raise _fail(what, p, _describe(exc), "check the path") from None

    corrupt_fix = "check that it is a valid, complete image file (PNG, JPEG, TIFF, ...)"
    with fh:
        try:
            with warnings.catch_warnings():
                # We enforce our own ``max_pixels`` limit below.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fh)
        except Image.UnidentifiedImageError:
            raise _fail(what, p, "not a recognised image file", corrupt_fix) from None
        except Image.DecompressionBombError as exc:
            reason = f"image is too large ({one_line(exc).rstrip('.')})"
            raise _fail(what, p, reason, "downscale it first") from None
        except Exception as exc:  # Pillow raises many types on malformed headers
            raise _fail(what, p, f"corrupt image ({_describe(exc)})", corrupt_fix) from None

        with img:
            fmt = img.format
            orig_mode = img.mode
            width, height = img.size
            if width * height > max_pixels:
                raise _fail(
                    what,
                    p,
                    f"image is {width}x{height} = {width * height} pixels, more than the limit "
                    f"of {max_pixels}",
                    "downscale it or raise the pixel limit",
                )
            if width < 2 or height < 2:
                raise _fail(what, p, f"image is {width}x{height}", "need at least 2x2 pixels")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img.load()
            except Exception as exc:  # OSError (truncated), SyntaxError, ValueError, ...
                raise _fail(
                    what, p, f"truncated or corrupt image data ({_describe(exc)})", corrupt_fix
                ) from None
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception:  # corrupt EXIF: keep the pixels as stored
                oriented = img
            try:
                tensor, alpha, bit_depth = _split(oriented)
            except ValueError as exc:
                raise ImageError(f"cannot read {what}: {p}: {exc}") from None
            except Exception as exc:
                raise _fail(
                    what, p, f"cannot decode mode {orig_mode!r} ({_describe(exc)})", corrupt_fix
                ) from None

    if grayscale is True and tensor.shape[0] == 3:
        tensor = _luma(tensor)
    elif grayscale is False and tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1).contiguous()
    info = ImageInfo(
        mode=orig_mode,
        bit_depth=bit_depth,
        size=(int(tensor.shape[1]), int(tensor.shape[2])),
        format=fmt,
    )
    return LoadedImage(tensor=tensor, alpha=alpha, info=info, path=p)


# --------------------------------------------------------------------------------------------
# saving


def _as_chw(tensor: torch.Tensor, name: str) -> torch.Tensor:
    t = tensor.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    elif t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3) or t.shape[1] < 1 or t.shape[2] < 1:
        raise ImageError(
            f"cannot save {name} of shape {tuple(tensor.shape)}; expected (C, H, W) or "
            "(1, C, H, W) with C = 1 or 3"
        )
    return t.to(device="cpu", dtype=torch.float64)


def _quantize(t: torch.Tensor, levels: int) -> np.ndarray:
    """Clamp to [0, 1], scale to ``levels`` and round half up; returns an (H, W[, C]) array."""
    arr = np.floor(t.clamp(0.0, 1.0).numpy() * levels + 0.5)
    arr = arr.astype(np.uint16 if levels > 255 else np.uint8)
    return arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))


def to_pil(
    tensor: torch.Tensor,
    *,
    bit_depth: int = 8,
    alpha: torch.Tensor | None = None,
) -> Image.Image:
    """Convert a ``(C, H, W)``/``(1, C, H, W)`` tensor in ``[0, 1]`` to a PIL image.

    Values are clamped to ``[0, 1]`` and rounded half up. One channel gives ``"L"`` (or
    ``"I;16"`` when ``bit_depth=16``), three give ``"RGB"``; with ``alpha`` (``(1, H, W)``) the
    result is ``"LA"``/``"RGBA"`` (always 8-bit). Non-finite values raise :class:`DIPError`.

    >>> import torch
    >>> to_pil(torch.full((1, 2, 3), 0.5)).getpixel((0, 0))
    128
    >>> to_pil(torch.zeros(3, 2, 2), alpha=torch.ones(1, 2, 2)).mode
    'RGBA'
    >>> to_pil(torch.ones(1, 2, 2), bit_depth=16).getpixel((1, 1))
    65535
    """
    t = _as_chw(tensor, "image")
    if not torch.isfinite(t).all():
        raise DIPError(
            "refusing to write an image with non-finite values (NaN or inf); "
            "training probably diverged, try a lower learning rate"
        )
    a: torch.Tensor | None = None
    if alpha is not None:
        a = _as_chw(alpha, "alpha")
        if a.shape[0] != 1 or a.shape[1:] != t.shape[1:]:
            raise ImageError(
                f"alpha of shape {tuple(alpha.shape)} does not match the image of shape "
                f"{tuple(t.shape)}; expected (1, H, W)"
            )
        if not torch.isfinite(a).all():
            raise DIPError("refusing to write an alpha channel with non-finite values")
    if a is None and bit_depth == 16 and t.shape[0] == 1:
        return Image.fromarray(_quantize(t, 65535))  # uint16 -> "I;16"
    if a is not None:
        t = torch.cat([t, a], dim=0)
    return Image.fromarray(_quantize(t, 255))  # L, LA, RGB or RGBA by channel count


def save_image(
    tensor: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    like: ImageInfo | None = None,
    alpha: torch.Tensor | None = None,
) -> None:
    """Write a ``(C, H, W)`` or ``(1, C, H, W)`` tensor in ``[0, 1]`` to ``path`` atomically.

    The format follows the suffix: ``.png``, ``.jpg``/``.jpeg`` (quality 95), ``.tif``/``.tiff``,
    ``.bmp``, ``.webp`` (quality 95); anything else raises :class:`DIPError`. Values are
    clamped to ``[0, 1]`` and rounded half up (so an 8-bit image read with :func:`load_image`
    is written back bit for bit); NaN/inf raise :class:`DIPError`. Parent directories are
    created and an existing file is only replaced once the new one is complete.

    The number of channels always follows the tensor (1 -> gray ``L``, 3 -> ``RGB``). ``like``
    (the :class:`ImageInfo` of the input) selects the bit depth: a 16-bit gray input gives a
    16-bit gray (``I;16``) PNG/TIFF; everything else is written as 8-bit, so ``1``, ``P``,
    ``CMYK``, ``YCbCr``, ... inputs come back as ``L``/``RGB``. ``alpha`` (``(1, H, W)``) is
    stored as ``LA``/``RGBA`` (8-bit) in PNG and TIFF and as ``RGBA`` in WebP.

    Fallbacks when the format cannot hold the data: 16-bit becomes 8-bit for JPEG, BMP and WebP
    (and when an alpha channel is written); the alpha channel is dropped for JPEG and BMP; gray
    is written as RGB in WebP.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    fmt = SUPPORTED_SUFFIXES.get(suffix)
    if fmt is None:
        raise DIPError(
            f"cannot write image: {p}: unsupported file extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    t = _as_chw(tensor, "image")
    if fmt not in _FORMATS_ALPHA:
        alpha = None
    bit_depth = like.bit_depth if like is not None and fmt in _FORMATS_16BIT else 8
    if fmt not in _FORMATS_GRAY and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if fmt == "WEBP" and alpha is not None and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    try:
        pil = to_pil(t, bit_depth=bit_depth, alpha=alpha)
    except DIPError as exc:
        raise type(exc)(f"cannot write image: {p}: {exc}") from None

    options: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = 95
    try:
        with atomic_path(p) as tmp:
            pil.save(tmp, format=fmt, **options)
    except OSError as exc:
        reason = exc.strerror or _describe(exc)
        raise DIPError(
            f"cannot write image: {p}: {one_line(reason)}; check that the directory is writable "
            "and the disk is not full"
        ) from None
