"""MNIST and Fashion-MNIST (28x28 grey), loaded through torchvision and held as uint8."""

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from vae_lightning.data.batched import BatchedImageDataModule, BatchIndexedDataset, binarize_once
from vae_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def read_idx_gz(path: Path) -> torch.Tensor:
    """A uint8 IDX file (the MNIST format), gzipped, as a tensor of its shape."""
    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[2] != 0x08 or data[0:2] != b"\0\0":
        raise ValueError(f"{path.name} is not a uint8 IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    pixels = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if pixels.size != int(np.prod(shape)):
        raise ValueError(f"{path.name} holds {pixels.size} values, its header says {shape}")
    return torch.from_numpy(pixels.copy()).reshape(shape)


class MNISTDataModule(BatchedImageDataModule):
    """MNIST: 55,000 / 5,000 train / validation images split with a fixed seed from the
    official 60,000, and the official 10,000 test images.

    Args:
        data_dir: torchvision root; the files live in ``<data_dir>/MNIST/raw/``.
        download: fetch the files when missing (needs network).
        val_size: images held out of the official training set for validation.
        split_seed: seed of the train/validation split and of the one-time binarisation
            of the validation and test sets.
        channels, image_size: what the model is told; must be 1 and 28 here.
        hflip: mirror a random half of each training batch (off: digits are not symmetric).
        on_device: hold the images in the training device's memory (``data.on_device``).
    """

    dataset_cls = datasets.MNIST
    image_shape = (1, 28, 28)
    fallback_dir: Path | None = None  # a read-only copy of the gzipped files, used when raw/ lacks them

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        binarize: bool = True,
        val_size: int = 5000,
        split_seed: int = 0,
        channels: int = 1,
        image_size: int = 28,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        likelihood: str | None = "bernoulli",
        hflip: bool = False,
        on_device: bool | str = "auto",
    ):
        super().__init__(
            batch_size, num_workers, binarize, eval_batch_size, pin_memory, likelihood, hflip, on_device
        )
        name = self.dataset_cls.__name__
        if (channels, image_size, image_size) != self.image_shape:
            raise ConfigError(
                f"{name} images are 1x28x28; got data.channels={channels}, data.image_size={image_size}"
            )
        if val_size < 1:
            raise ConfigError(f"data.val_size must be >= 1, got {val_size}")
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed
        self.save_hyperparameters(ignore=["likelihood"])  # only a default: model.likelihood may differ

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / self.dataset_cls.__name__ / "raw"

    def _missing_message(self, reason: str) -> str:
        files = ", ".join(name.removesuffix(".gz") for name, _ in self.dataset_cls.resources)
        return (
            f"{self.dataset_cls.__name__} {reason} in {self.raw_dir}\n"
            f"  expected files: {files}\n"
            "  fix: with network access, data.download=true fetches them; or point "
            "data.data_dir=... (or the VAE_DATA_DIR environment variable) at a folder "
            f"that holds {self.dataset_cls.__name__}/raw/."
        )

    @property
    def file_names(self) -> list[str]:
        return [name.removesuffix(".gz") for name, _ in self.dataset_cls.resources]

    def _fallback(self) -> Path | None:
        """``fallback_dir`` when ``raw_dir`` lacks a file and it holds all gzipped ones."""
        if self.fallback_dir is None or all((self.raw_dir / name).is_file() for name in self.file_names):
            return None
        if all((self.fallback_dir / f"{name}.gz").is_file() for name in self.file_names):
            return self.fallback_dir
        return None

    def prepare_data(self) -> None:
        """Download the files when asked and missing (``setup`` reports missing or corrupt files)."""
        present = all((self.raw_dir / name).is_file() for name in self.file_names)
        if self.download and not present and self._fallback() is None:
            try:
                self.dataset_cls(str(self.data_dir), train=True, download=True)
                self.dataset_cls(str(self.data_dir), train=False, download=True)
            except Exception as err:  # URLError, HTTP errors, checksum failures ...
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DataError(self._missing_message(f"could not be downloaded ({first_line})")) from err

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images ``(N, 1, 28, 28)`` and labels ``(N,)`` of one official split."""
        fallback = self._fallback()
        if fallback is not None:
            return self._load_gz(fallback, train)
        try:
            ds = self.dataset_cls(str(self.data_dir), train=train, download=False)
        except RuntimeError as err:
            if "not found" in str(err):
                raise DataError(self._missing_message("was not found")) from None
            raise DataError(self._corrupt_message(err)) from err
        except (AssertionError, ValueError, TypeError, KeyError, OSError) as err:
            raise DataError(self._corrupt_message(err)) from err
        if len(ds.data) != len(ds.targets) or ds.data.shape[1:] != (28, 28):
            raise DataError(
                self._corrupt_message(
                    f"{len(ds.data)} images of shape {tuple(ds.data.shape[1:])}, {len(ds.targets)} labels"
                )
            )
        return ds.data.unsqueeze(1), ds.targets

    def _load_gz(self, folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The gzipped IDX files of ``folder`` (read in memory: nothing is written)."""
        if train:
            log.info("%s: reading %s (%s has no copy)", self.dataset_cls.__name__, folder, self.raw_dir)
        prefix = "train" if train else "t10k"
        try:
            images = read_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz").long()
        except (OSError, ValueError, EOFError, struct.error) as err:
            raise DataError(
                f"{self.dataset_cls.__name__} files in {folder} could not be read ({err}).\n"
                f"  fix: reinstall them, or put intact files in {self.raw_dir}."
            ) from err
        if images.dim() != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DataError(
                f"{self.dataset_cls.__name__} files in {folder} hold {tuple(images.shape)} images and "
                f"{len(labels)} labels, not N 28x28 images with N labels."
            )
        return images.unsqueeze(1), labels

    def _corrupt_message(self, err: object) -> str:
        return (
            f"{self.dataset_cls.__name__} files in {self.raw_dir} could not be read ({err or 'corrupt'}).\n"
            "  fix: delete them and run again with data.download=true, or copy intact files there."
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = self._load(train=True)
        if self.val_size >= len(images):
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training images "
                f"({len(images)} in the training file)"
            )
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
        train_idx, val_idx = order[self.val_size :], order[: self.val_size]
        if self.batch_size > len(train_idx):
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the training set "
                f"({len(train_idx)} images); lower data.batch_size"
            )
        test_images, test_labels = self._load(train=False)
        val_images = images[val_idx]
        if self.binarize:  # fixed draws: deterministic validation and test metrics
            val_images = binarize_once(val_images, self.split_seed)
            test_images = binarize_once(test_images, self.split_seed + 1)
        self.splits = {
            "train": BatchIndexedDataset(images[train_idx], labels[train_idx]),
            "val": BatchIndexedDataset(val_images, labels[val_idx]),
            "test": BatchIndexedDataset(test_images, test_labels),
        }


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: same format, split and binarisation as MNIST. When
    ``<data_dir>/FashionMNIST/raw/`` lacks the files, Debian's copy
    (``apt-get install dataset-fashion-mnist``) is read from ``fallback_dir``."""

    dataset_cls = datasets.FashionMNIST
    fallback_dir = Path("/usr/share/datasets/fashion-mnist")

    def _missing_message(self, reason: str) -> str:
        return (
            super()._missing_message(reason)
            + f"\n  or install Debian's copy into {self.fallback_dir}: apt-get install dataset-fashion-mnist"
        )
