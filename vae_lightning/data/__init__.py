"""LightningDataModules: each exposes ``image_shape`` (C, H, W) and ``value_range``."""

from vae_lightning.data.batched import BatchedImageDataModule, BatchIndexedDataset
from vae_lightning.data.cache import ImageCache, load_image
from vae_lightning.data.cached import CachedImageDataModule
from vae_lightning.data.celeba import CelebADataModule
from vae_lightning.data.folder import ImageFolderDataModule
from vae_lightning.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "BatchIndexedDataset",
    "BatchedImageDataModule",
    "CachedImageDataModule",
    "CelebADataModule",
    "FashionMNISTDataModule",
    "ImageCache",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "load_image",
]
