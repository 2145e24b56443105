"""LightningDataModules: each exposes ``image_shape`` (C, H, W) and ``value_range``."""

from vae_lightning.data.batched import BatchedImageDataModule, BatchIndexedDataset
from vae_lightning.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = ["BatchIndexedDataset", "BatchedImageDataModule", "FashionMNISTDataModule", "MNISTDataModule"]
