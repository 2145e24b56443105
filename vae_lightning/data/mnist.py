"""MNIST and Fashion-MNIST (28x28 grey), loaded through torchvision and held as uint8."""

from pathlib import Path

import torch
from torchvision import datasets

from vae_lightning.data.batched import BatchedImageDataModule, BatchIndexedDataset, binarize_once
from vae_lightning.errors import ConfigError, DataError


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
    """

    dataset_cls = datasets.MNIST
    image_shape = (1, 28, 28)

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
    ):
        super().__init__(batch_size, num_workers, binarize, eval_batch_size, pin_memory, likelihood)
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
        self.save_hyperparameters()

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / self.dataset_cls.__name__ / "raw"

    def _missing_message(self, reason: str) -> str:
        files = ", ".join(name.removesuffix(".gz") for name, _ in self.dataset_cls.resources)
        return (
            f"{self.dataset_cls.__name__} {reason} in {self.raw_dir}\n"
            f"  expected files: {files}\n"
            "  fix: run with data.download=true on a machine with network access, or point "
            "data.data_dir=... (or the VAE_DATA_DIR environment variable) at a folder "
            f"that holds {self.dataset_cls.__name__}/raw/."
        )

    def prepare_data(self) -> None:
        """Download the files when asked and missing (``setup`` reports missing files)."""
        if self.download:
            try:
                self.dataset_cls(str(self.data_dir), train=True, download=True)
                self.dataset_cls(str(self.data_dir), train=False, download=True)
            except Exception as err:  # URLError, HTTP errors, checksum failures ...
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DataError(self._missing_message(f"could not be downloaded ({first_line})")) from err

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images ``(N, 1, 28, 28)`` and labels ``(N,)`` of one official split."""
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
    """Fashion-MNIST: same format, split and binarisation as MNIST."""

    dataset_cls = datasets.FashionMNIST
