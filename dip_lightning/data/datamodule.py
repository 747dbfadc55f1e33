"""The single-image DataModule: one observation, fitted by one network."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from dip_lightning.data.io import ImageInfo, LoadedImage, load_image
from dip_lightning.degradations.base import Degradation
from dip_lightning.errors import ConfigError


def sample_image_path() -> Path:
    """The path of the small sample image that ships inside the package."""
    return Path(str(resources.files("dip_lightning") / "assets" / "cat.png"))


@dataclass
class ImageSample:
    """What a task fits: the observation ``y`` and, when known, the clean image.

    Tensors are ``(C, H, W)`` in [0, 1]. ``info`` and ``alpha`` describe the image that the
    restored output replaces (its mode, bit depth and alpha channel are written back).
    """

    observation: torch.Tensor
    clean: torch.Tensor | None
    info: ImageInfo
    alpha: torch.Tensor | None
    name: str
    simulated: bool

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


class SingleImageDataModule(LightningDataModule):
    """One image to restore, read with Pillow (see :func:`dip_lightning.data.io.load_image`).

    Args:
        image: the input image (the observation), or, with ``simulate``, the clean image from which
            the observation is made. The embedded sample image when omitted.
        clean: a clean reference, used only for metrics (PSNR, SSIM).
        noise_sigma: std of the Gaussian noise of a simulated observation, on the 0-255 scale.
        simulate: treat ``image`` as clean and make the observation with the task's degradation;
            on by default when ``noise_sigma`` is given.
        seed: seed of every synthetic degradation.
        grayscale: ``true`` converts a colour image to one channel, ``false`` expands a gray one
            to three, ``null`` keeps the file's channels.

    The images are read when the module is built, so that a bad path fails before anything runs.
    Each epoch is one pass over ``trainer.max_steps`` identical items, so Lightning's progress bar
    counts optimisation steps.
    """

    def __init__(
        self,
        image: str | None = None,
        clean: str | None = None,
        noise_sigma: float = 0.0,
        simulate: bool | None = None,
        seed: int = 0,
        grayscale: bool | None = None,
    ) -> None:
        super().__init__()
        _check_range(
            "noise_sigma", noise_sigma, 0.0, 255.0, "give the noise std on the 0-255 scale"
        )
        self.image_path = Path(image) if image else sample_image_path()
        self.clean_path = Path(clean) if clean else None
        self.noise_sigma = float(noise_sigma)
        self.simulate = bool(noise_sigma > 0) if simulate is None else bool(simulate)
        self.seed = int(seed)
        self.image: LoadedImage = load_image(self.image_path, what="image", grayscale=grayscale)
        if grayscale is None:
            grayscale = self.image.tensor.shape[0] == 1
        self.clean: LoadedImage | None = (
            load_image(self.clean_path, what="clean image", grayscale=grayscale)
            if self.clean_path
            else None
        )
        if self.simulate and self.clean is not None:
            raise ConfigError(
                "data.clean is given but data.simulate is on: with simulate, data.image is the clean "
                "image; drop one of them"
            )

    @property
    def image_name(self) -> str:
        """The input's file name without its suffix (``cat`` for the embedded sample)."""
        return self.image_path.stem

    def make_sample(self, degradation: Degradation) -> ImageSample:
        """The observation for ``degradation``: simulated from ``image`` or ``image`` itself."""
        x = self.image.tensor
        if self.simulate:
            generator = torch.Generator().manual_seed(self.seed)
            observation = degradation.simulate(x[None], generator)[0].contiguous()
            clean: torch.Tensor | None = x
        else:
            observation = x
            clean = self.clean.tensor if self.clean is not None else None
        return ImageSample(
            observation=observation,
            clean=clean,
            info=self.image.info,
            alpha=self.image.alpha,
            name=self.image_name,
            simulated=self.simulate,
        )

    def train_dataloader(self) -> DataLoader[int]:
        steps = self.trainer.max_steps if self.trainer is not None else -1
        return DataLoader(_RepeatedIndex(max(int(steps), 1)), batch_size=None)
