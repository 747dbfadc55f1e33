"""The single-image DataModule: one observation, fitted by one network."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dip_lightning.data.io import ImageInfo, LoadedImage, load_image
from dip_lightning.data.masks import load_mask
from dip_lightning.data.padding import CropBox, crop
from dip_lightning.degradations.base import Degradation
from dip_lightning.degradations.downsample import DOWNSAMPLE_FACTORS, bicubic_upsample
from dip_lightning.errors import ConfigError
from dip_lightning.seeding import stream_generator

#: Values ``data.scale`` accepts: 1 (no super-resolution) and the factors of ``Downsample``.
SCALES: tuple[int, ...] = (1, *DOWNSAMPLE_FACTORS)


def sample_image_path() -> Path:
    """The path of the small sample image that ships inside the package."""
    return Path(str(resources.files("dip_lightning") / "assets" / "cat.png"))


@dataclass
class ImageSample:
    """What a task fits: the observation ``y`` and, when known, the clean image.

    Tensors are ``(C, H, W)`` in [0, 1]. ``info`` and ``alpha`` describe the image that the
    restored output replaces (its mode, bit depth and alpha channel are written back; ``alpha``
    has the restored image's size). ``guide`` is a second image of the restored image's size
    (the flash image of flash/no-flash), when one is given.
    """

    observation: torch.Tensor
    clean: torch.Tensor | None
    info: ImageInfo
    alpha: torch.Tensor | None
    name: str
    simulated: bool
    guide: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        return int(self.observation.shape[0])


class _RepeatedIndex(Dataset[int]):
    """A dataset of ``length`` identical items: the loop reads its data from module buffers."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return 0


def _check_range(name: str, value: float, low: float, high: float, fix: str) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"data.{name} = {value} is out of range [{low:g}, {high:g}]; {fix}")


def _size(t: torch.Tensor) -> str:
    """``WxH`` of a ``(..., H, W)`` tensor, the way image sizes are usually written."""
    return f"{int(t.shape[-1])}x{int(t.shape[-2])}"


def center_crop_box(height: int, width: int, multiple: int) -> CropBox:
    """The centred region of an image whose sides are cut down to multiples of ``multiple``.

    >>> center_crop_box(389, 584, 8)
    CropBox(top=2, left=0, height=384, width=584)
    """
    new_h, new_w = height - height % multiple, width - width % multiple
    return CropBox(top=(height - new_h) // 2, left=(width - new_w) // 2, height=new_h, width=new_w)


def jpeg_compress(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x`` (``(C, H, W)`` in [0, 1], 1 or 3 channels) saved as an 8-bit JPEG and read back.

    Pillow's encoder at ``quality`` (1-95) with its default 4:2:0 chroma subsampling, the way a
    camera or a web page stores a photo; deterministic.

    >>> y = jpeg_compress(torch.full((3, 16, 16), 0.5), 10)
    >>> y.shape, round(float(y.mean()), 2)
    (torch.Size([3, 16, 16]), 0.5)
    """
    array = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    pil = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert(pil.mode), dtype=np.float32) / 255.0
    out = torch.from_numpy(decoded.copy())
    out = out[None] if out.dim() == 2 else out.permute(2, 0, 1).contiguous()
    return out.to(dtype=x.dtype, device=x.device)


#: The data options that make a simulated observation out of a clean image.
SIMULATION_OPTIONS: tuple[str, ...] = ("noise_sigma", "missing_ratio", "jpeg_quality")

#: The value of each data option that leaves it out of the observation.
_OFF: dict[str, Any] = {
    "noise_sigma": 0.0,
    "missing_ratio": 0.0,
    "per_channel_mask": False,
    "jpeg_quality": None,
    "mask": None,
    "scale": 1,
    "simulate": None,
    "clean": None,
}

#: Options that make the same part of the observation in two ways, with what they do and the
#: advice for when both are given together: (first, second, what both do, keep first, keep
#: second).
_RIVALS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "mask",
        "missing_ratio",
        "both define the missing pixels",
        "to use the mask file",
        "to drop pixels at random",
    ),
    ("scale", "mask", "ask for super-resolution and inpainting", "to enlarge", "to inpaint"),
    (
        "scale",
        "missing_ratio",
        "ask for super-resolution and inpainting",
        "to enlarge",
        "to inpaint",
    ),
    (
        "clean",
        "simulate",
        "both give the clean image (with simulate, data.image is the clean image)",
        "to fit data.image as the observation",
        "to simulate the observation from data.image",
    ),
)


def _active(options: Mapping[str, Any], key: str) -> bool:
    """Whether option ``key`` takes part in making the observation (is not left off)."""
    value = options.get(key, _OFF.get(key))
    if key == "simulate":
        return value is True
    return value is not None and value != _OFF.get(key) and value is not False


def simulation_parts(options: Mapping[str, Any]) -> list[str]:
    """What a simulated observation made with ``options`` (data options by name) would hold,
    one phrase each: ``["Gaussian noise sigma 25"]``."""
    parts = []
    if _active(options, "scale"):
        parts.append(f"{options['scale']}x downsampling")
    if _active(options, "mask"):
        parts.append(f"the pixels missing that {options['mask']} marks")
    if _active(options, "missing_ratio"):
        each = " in each channel" if options.get("per_channel_mask") else ""
        parts.append(f"{options['missing_ratio']:.0%} of the pixels missing at random{each}")
    if _active(options, "noise_sigma"):
        parts.append(f"Gaussian noise sigma {options['noise_sigma']:g}")
    if _active(options, "jpeg_quality"):
        parts.append(f"JPEG quality {options['jpeg_quality']}")
    return parts


def settle_observation(
    options: Mapping[str, Any], sources: Mapping[str, tuple[int, str]]
) -> tuple[dict[str, Any], list[str]]:
    """The data options that make the observation, from ``options`` given in several sources
    (``sources["data.<name>"]``: the level of the source that gives it last and where that is;
    see :func:`dip_lightning.presets.option_sources`). A later source replaces what an earlier
    one says: of two options that make the same part of the observation in two ways (a mask
    file and a random mask, a clean reference and a simulation, ...) the later one is kept and
    the earlier one left off; given together (on one level) they are refused, naming the one to
    drop. An image given later than every simulation setting is the observation itself: the
    earlier settings are left off unless ``data.simulate`` is given with the image or later.

    Returns the settled options and, when an image set a simulation aside, what that simulation
    would have added (:func:`simulation_parts`)."""
    settled = dict(options)

    def level(key: str) -> int:
        return sources.get(f"data.{key}", (-1, ""))[0]

    for first, second, what, keep_first, keep_second in _RIVALS:
        if not (_active(settled, first) and _active(settled, second)):
            continue
        if level(first) == level(second):
            where = sources.get(f"data.{first}", (-1, "together"))[1]
            raise ConfigError(
                f"data.{first} and data.{second} {what} (both {where}); drop data.{second} "
                f"{keep_first}, or data.{first} {keep_second}"
            )
        earlier = first if level(first) < level(second) else second
        settled[earlier] = _OFF[earlier]
    if not _active(settled, "missing_ratio"):
        settled["per_channel_mask"] = False
    # an explicit ``simulate: false`` and a simulation setting: the later one is kept
    if settled.get("simulate") is False:
        for key in SIMULATION_OPTIONS:
            if _active(settled, key) and level(key) < level("simulate"):
                settled[key] = _OFF[key]
            elif _active(settled, key) and level(key) > level("simulate"):
                settled["simulate"] = None
    # an image given after every simulation setting is the observation as it is
    image_level = max(
        level("image") if settled.get("image") is not None else -1,
        sources.get("batch.images", (-1, ""))[0],
    )
    chosen = level("simulate") >= image_level and settled.get("simulate") is not None
    later = any(_active(settled, key) and level(key) >= image_level for key in SIMULATION_OPTIONS)
    simulation = [key for key in SIMULATION_OPTIONS if _active(settled, key)]
    aside: list[str] = []
    if image_level >= 0 and not chosen and not later:
        if simulation or _active(settled, "simulate"):
            # what ``--data.simulate true`` would add (a mask file applies either way)
            scale = settled.get("scale", 1) if _active(settled, "simulate") else 1
            aside = simulation_parts({**settled, "mask": None, "scale": scale})
        for key in simulation:
            settled[key] = _OFF[key]
        settled["per_channel_mask"] = False
        if settled.get("simulate") is True:
            settled["simulate"] = False
    return settled, aside


class SingleImageDataModule(LightningDataModule):
    """One image to restore, read with Pillow (see :func:`dip_lightning.data.io.load_image`).

    Args:
        image: the input image (the observation), or, with ``simulate``, the clean image from which
            the observation is made. The embedded sample image when omitted.
        clean: a clean reference, used only for metrics (PSNR, SSIM).
        noise_sigma: std of the Gaussian noise of a simulated observation, on the 0-255 scale.
        simulate: treat ``image`` as clean and make the observation with the task's degradation;
            on by default when ``noise_sigma``, ``missing_ratio`` or ``jpeg_quality`` is given.
        seed: seed of every synthetic degradation: the ``observation`` and ``mask`` streams of
            :mod:`dip_lightning.seeding`, independent of each other and of the model's streams.
        grayscale: ``true`` converts a colour image to one channel, ``false`` expands a gray one
            to three, ``null`` keeps the file's channels.
        mask: an inpainting mask file of the image's size (white = known pixel, black = missing;
            gray or colour-per-channel as :func:`~dip_lightning.data.masks.load_mask` reads
            it). Without ``simulate`` the image is the observation and its missing pixels are
            zeroed; with it, the image is the clean image and the mask hides its pixels.
        missing_ratio: fraction of pixels dropped at random (seeded by ``seed``) for a
            simulated inpainting observation, in (0, 1); 0 is off.
        per_channel_mask: drop pixels independently in each channel (``missing_ratio`` only).
        scale: the super-resolution factor (1, 2, 4 or 8). Without ``simulate``, ``image`` is the
            low-resolution input and the restored image is ``scale`` times larger (a ``clean``
            reference must have that size). With ``simulate``, ``image`` is the clean
            high-resolution image: it is centre-cropped to multiples of ``scale`` (at most
            ``scale - 1`` rows and columns go) and the task's operator makes the low-resolution
            observation, so the restored image has the crop's size, i.e. ``scale`` times the
            observation's.
        guide: a second image fed to the task (the flash image of flash/no-flash), of the
            restored image's size; read with the same ``grayscale`` setting as ``image``.
        jpeg_quality: store the simulated observation as a JPEG of this quality (1-95) and read
            it back, for JPEG-artifact removal on a clean image; ``null`` is off.

    The images are read when the module is built, so that a bad path or a mask, guide or scale
    that does not fit the image fails before anything runs. Each epoch is one pass over
    ``trainer.max_steps`` identical items, so Lightning's progress bar counts optimisation steps.
    """

    def __init__(
        self,
        image: str | None = None,
        clean: str | None = None,
        noise_sigma: float = 0.0,
        simulate: bool | None = None,
        seed: int = 0,
        grayscale: bool | None = None,
        mask: str | None = None,
        missing_ratio: float = 0.0,
        per_channel_mask: bool = False,
        scale: int = 1,
        guide: str | None = None,
        jpeg_quality: int | None = None,
    ) -> None:
        super().__init__()
        # data.seed stays out: Lightning merges these with the module's, which has its own seed
        self.save_hyperparameters(ignore=["seed"])
        _check_range(
            "noise_sigma", noise_sigma, 0.0, 255.0, "give the noise std on the 0-255 scale"
        )
        if not (math.isfinite(missing_ratio) and 0.0 <= missing_ratio < 1.0):
            raise ConfigError(
                f"data.missing_ratio = {missing_ratio} is out of range; give the fraction of "
                "pixels to drop in (0, 1), e.g. 0.5 (0 turns it off)"
            )
        if isinstance(scale, bool) or scale not in SCALES:
            raise ConfigError(
                f"data.scale = {scale} is not supported; use one of {', '.join(map(str, SCALES))}"
            )
        if not -(2**63) <= seed < 2**63:
            raise ConfigError(f"data.seed = {seed} is out of range; use a seed below 2**63, e.g. 0")
        if jpeg_quality is not None and not 1 <= jpeg_quality <= 95:
            raise ConfigError(f"data.jpeg_quality = {jpeg_quality} is out of range; use 1 to 95")
        self.image_path = Path(image) if image else sample_image_path()
        self.clean_path = Path(clean) if clean else None
        self.mask_path = Path(mask) if mask else None
        self.guide_path = Path(guide) if guide else None
        self.noise_sigma = float(noise_sigma)
        self.missing_ratio = float(missing_ratio)
        self.per_channel_mask = bool(per_channel_mask)
        self.scale = int(scale)
        self.jpeg_quality = None if jpeg_quality is None else int(jpeg_quality)
        synthetic = noise_sigma > 0 or missing_ratio > 0 or jpeg_quality is not None
        # a clean reference means the image is the observation (a config's noise_sigma is moot)
        self.simulate = bool(synthetic and not clean) if simulate is None else bool(simulate)
        self.seed = int(seed)
        self._check_combinations()
        self.image: LoadedImage = load_image(self.image_path, what="image", grayscale=grayscale)
        if grayscale is None:
            grayscale = self.image.tensor.shape[0] == 1
        self.clean: LoadedImage | None = (
            load_image(self.clean_path, what="clean image", grayscale=grayscale)
            if self.clean_path
            else None
        )
        self.guide: LoadedImage | None = (
            load_image(self.guide_path, what="guide image", grayscale=grayscale)
            if self.guide_path
            else None
        )
        channels, height, width = self.image.tensor.shape
        #: the region of ``image`` that is restored: the whole image, or with ``simulate`` and
        #: ``scale`` > 1 its centred crop to multiples of ``scale``
        self.region = CropBox(top=0, left=0, height=int(height), width=int(width))
        if self.simulate and self.scale > 1:
            self.region = center_crop_box(int(height), int(width), self.scale)
            if self.region.height < 2 * self.scale or self.region.width < 2 * self.scale:
                raise ConfigError(
                    f"data.scale {self.scale} does not fit the {_size(self.image.tensor)} image: "
                    f"the low-resolution image would be smaller than 2x2; use a high-resolution "
                    f"image of at least {2 * self.scale}x{2 * self.scale} or a smaller scale"
                )
        self.mask: torch.Tensor | None = (
            load_mask(self.mask_path, int(height), int(width), int(channels))
            if self.mask_path
            else None
        )
        self._check_sizes()

    def _check_combinations(self) -> None:
        """Refuse options that contradict each other (before any file is read)."""
        if self.simulate and self.clean_path is not None:
            raise ConfigError(
                "data.clean is given but data.simulate is on: with simulate, data.image is the "
                "clean image; drop one of them"
            )
        if self.mask_path is not None and self.missing_ratio > 0:
            raise ConfigError(
                "data.mask and data.missing_ratio both define the missing pixels; drop "
                "data.missing_ratio to use the mask file, or data.mask to drop pixels at random"
            )
        if self.missing_ratio > 0 and not self.simulate:
            raise ConfigError(
                "data.missing_ratio drops pixels of a clean image, but data.simulate is off; turn "
                "it on, or give the observation's mask file with data.mask"
            )
        if self.per_channel_mask and self.missing_ratio == 0:
            raise ConfigError(
                "data.per_channel_mask applies to random masks only; set data.missing_ratio (a "
                "mask file gives per-channel masks as a colour image)"
            )
        if self.scale > 1 and (self.mask_path is not None or self.missing_ratio > 0):
            raise ConfigError(
                "data.scale (super-resolution) cannot be combined with data.mask or "
                "data.missing_ratio (inpainting); restore one of the two"
            )

    def _check_sizes(self) -> None:
        """The clean reference and the guide must have the restored image's size."""
        image = self.image.tensor
        if not self.simulate and self.scale > 1:
            expected = f"{image.shape[-1] * self.scale}x{image.shape[-2] * self.scale}"
            what = f"{expected}, {self.scale} times the {_size(image)} low-resolution image"
        else:
            expected = f"{self.region.width}x{self.region.height}"
            what = f"the image's size, {expected}"
        if self.clean is not None and _size(self.clean.tensor) != expected:
            raise ConfigError(
                f"the clean image is {_size(self.clean.tensor)} but must be {what}; give the "
                "clean image of the restored image's size"
            )
        if self.guide is not None:
            # with simulate, the guide is cropped together with the image
            guide, wanted = self.guide.tensor, _size(image) if self.simulate else expected
            if _size(guide) != wanted:
                raise ConfigError(
                    f"the guide image is {_size(guide)} but the image is {_size(image)}; give a "
                    f"guide of size {wanted}, the restored image's"
                )

    @property
    def image_name(self) -> str:
        """The input's file name without its suffix (``cat`` for the embedded sample)."""
        return self.image_path.stem

    def describe_observation(self, set_aside: Sequence[str] = ()) -> str:
        """One line saying what the observation is: what was simulated on which image, or the
        image as given (and, in ``set_aside``, what ``simulate`` would add to it).

        >>> SingleImageDataModule(noise_sigma=25).describe_observation()
        'simulated the observation: Gaussian noise sigma 25 on the embedded sample (seed 0)'
        """
        sample = self.image_path == sample_image_path()
        source = "the embedded sample" if sample else str(self.image_path)
        options = {
            "noise_sigma": self.noise_sigma,
            "missing_ratio": self.missing_ratio,
            "per_channel_mask": self.per_channel_mask,
            "jpeg_quality": self.jpeg_quality,
            "mask": self.mask_path,
            "scale": self.scale,
        }
        if self.simulate:
            parts = simulation_parts(options) or ["no degradation"]
            return f"simulated the observation: {', '.join(parts)} on {source} (seed {self.seed})"
        line = f"observation: {source} as given"
        if self.mask_path is not None:
            line += f", the pixels missing that {self.mask_path} marks"
        if self.scale > 1:
            line += f", enlarged {self.scale}x"
        hint = f"; --data.simulate true to add {', '.join(set_aside)}" if set_aside else ""
        return f"{line} (no simulation{hint})"

    def make_sample(self, degradation: Degradation) -> ImageSample:
        """The observation for ``degradation``: simulated from ``image`` or ``image`` itself.

        With ``simulate``, the (cropped, see ``scale``) image is the clean image and the
        observation is ``degradation.simulate`` of it, drawn from the ``observation`` stream
        of ``seed`` (:mod:`dip_lightning.seeding`), then JPEG-compressed when ``jpeg_quality``
        is set. Without it, ``image`` is the observation, with the pixels that ``mask`` marks
        missing set to 0.
        """
        x = self.image.tensor
        alpha = self.image.alpha
        guide = self.guide.tensor if self.guide is not None else None
        if self.simulate:
            x = crop(x, self.region)
            alpha = crop(alpha, self.region) if alpha is not None else None
            guide = crop(guide, self.region) if guide is not None else None
            generator = stream_generator(self.seed, "observation")
            observation = degradation.simulate(x[None], generator)[0].contiguous()
            if self.jpeg_quality is not None:
                observation = jpeg_compress(observation, self.jpeg_quality)
            clean: torch.Tensor | None = x
        else:
            observation = x if self.mask is None else x * self.mask
            clean = self.clean.tensor if self.clean is not None else None
            if alpha is not None and self.scale > 1:
                alpha = bicubic_upsample(alpha, self.scale)
        return ImageSample(
            observation=observation,
            clean=clean,
            info=self.image.info,
            alpha=alpha,
            name=self.image_name,
            simulated=self.simulate,
            guide=guide,
        )

    def train_dataloader(self) -> DataLoader[int]:
        steps = self.trainer.max_steps if self.trainer is not None else -1
        return _StatelessLoader(_RepeatedIndex(max(int(steps), 1)), batch_size=None)


class _StatelessLoader(DataLoader[int]):
    """The loader of a fit: every item is the same, so it resumes anywhere with no state (its
    ``state_dict`` tells Lightning so: a fit resumed mid-epoch is exact)."""

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        pass
