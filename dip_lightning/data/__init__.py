"""Image and mask-file I/O, padding to the network's multiple, and the single-image DataModule."""

from dip_lightning.data.datamodule import ImageSample, SingleImageDataModule, sample_image_path
from dip_lightning.data.io import ImageInfo, LoadedImage, load_image, save_image
from dip_lightning.data.masks import load_mask
from dip_lightning.data.padding import CropBox, crop, pad_to_multiple, padded_size

__all__ = [
    "CropBox",
    "ImageInfo",
    "ImageSample",
    "LoadedImage",
    "SingleImageDataModule",
    "crop",
    "load_image",
    "load_mask",
    "pad_to_multiple",
    "padded_size",
    "sample_image_path",
    "save_image",
]
