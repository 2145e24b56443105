"""Base class of the DataModules whose images are files on disk (CelebA, an image folder):
``prepare_data`` decodes them once into an ``ImageCache``, ``setup`` memory-maps it and
serves whole batches through the same batch-indexed path as MNIST."""

from pathlib import Path

import numpy as np
import torch

from vae_lightning.data.batched import BatchedImageDataModule, BatchIndexedDataset, split_dataset
from vae_lightning.data.cache import CacheContents, ImageCache
from vae_lightning.errors import ConfigError


class CachedImageDataModule(BatchedImageDataModule):
    """Images decoded once to uint8 ``(N, C, S, S)`` and memory-mapped.

    Subclasses say which files there are (``_find_files``), where the cache goes by
    default (``_default_cache_dir``), how the rows split (``_split_rows``) and what the
    labels are (``_labels``).

    Args:
        cache_dir: folder of the cache files; ``None`` for the subclass's default
            (under ``data_dir``). Set it when ``data_dir`` is read-only.
        image_size: side S of the square images the model sees.
        channels: 3 (RGB) or 1 (grey).
        crop: side of the centred square cut before resizing; ``None``: the largest.
        split_seed: seed of the fixed binarisation of validation and test images.
        Others: see ``BatchedImageDataModule``.
    """

    cache_prefix = "images"  # start of the cache file names
    what = "images"  # how logs and errors name these images

    def __init__(
        self,
        cache_dir: str | None,
        image_size: int,
        channels: int,
        crop: int | None,
        batch_size: int,
        num_workers: int,
        binarize: bool,
        eval_batch_size: int | None,
        pin_memory: bool,
        likelihood: str | None,
        hflip: bool,
        split_seed: int,
        on_device: bool | str = "auto",
    ):
        super().__init__(
            batch_size, num_workers, binarize, eval_batch_size, pin_memory, likelihood, hflip, on_device
        )
        if image_size < 1:
            raise ConfigError(f"data.image_size must be >= 1, got {image_size}")
        if channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
        if crop is not None and crop < 1:
            raise ConfigError(f"data.crop must be >= 1 or null (the largest centred square), got {crop}")
        self.image_size, self.channels, self.crop = image_size, channels, crop
        self.image_shape = (channels, image_size, image_size)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.split_seed = split_seed
        self._cache: ImageCache | None = None

    # --- what subclasses provide -------------------------------------------------------
    def _find_files(self) -> tuple[Path, list[str]]:
        """The image root and the files under it, in cache order; DataError when missing."""
        raise NotImplementedError

    def _default_cache_dir(self) -> Path:
        raise NotImplementedError

    def _split_rows(self, contents: CacheContents) -> dict[str, np.ndarray]:
        """Rows of the cache in each of ``train``, ``val`` and ``test``."""
        raise NotImplementedError

    def _labels(self, contents: CacheContents) -> torch.Tensor:
        """Labels ``(N, ...)`` of the cached rows."""
        raise NotImplementedError

    # --- the shared machinery ----------------------------------------------------------
    def image_cache(self) -> ImageCache:
        """The cache of this data set's files (their list is read once per process)."""
        if self._cache is None:
            root, files = self._find_files()
            self._cache = ImageCache(
                root=root,
                files=tuple(files),
                directory=self.cache_dir or self._default_cache_dir(),
                size=self.image_size,
                channels=self.channels,
                crop=self.crop,
                prefix=self.cache_prefix,
            )
        return self._cache

    def prepare_data(self) -> None:
        """Decode the images into the cache unless a cache of the same files exists."""
        self.image_cache().ensure(self.num_workers, self.what)

    def setup(self, stage: str | None = None) -> None:
        """Memory-map the cache built by ``prepare_data``: nothing is decoded here."""
        if self.splits:
            return
        contents = self.image_cache().open()
        rows, labels = self._split_rows(contents), self._labels(contents)
        if self.batch_size > len(rows["train"]):
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the training set "
                f"({len(rows['train'])} images); lower data.batch_size"
            )
        images = contents.images
        self.splits = {
            "train": BatchIndexedDataset(images, labels, rows["train"]),
            "val": split_dataset(images, labels, rows["val"], self.binarize, self.split_seed),
            "test": split_dataset(images, labels, rows["test"], self.binarize, self.split_seed + 1),
        }
