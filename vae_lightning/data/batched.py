"""In-memory image datasets indexed a whole batch at a time, and the DataModule base
class that turns their uint8 batches into model inputs on the device.

The DataLoader's sampler still yields indices (so shuffling, seeding and Lightning's
distributed sampler work unchanged), but ``__getitems__`` gathers the batch with one
tensor index instead of a Python call, a PIL image and a ``stack`` per sample. The
images may also be a memory-mapped ``.npy`` file (``np.load(path, mmap_mode="r")``):
a batch then reads only its own rows from disk.
"""

import os
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vae_lightning.data.device import DeviceBatches, fits_on, on_device_choice, to_device
from vae_lightning.data.resume import ResumableBatches, SkippingSampler
from vae_lightning.errors import ConfigError


class BatchIndexedDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` and labels ``(N, ...)``, indexed a batch at a time.

    ``images`` is a tensor in memory or a numpy array, typically memory-mapped from a
    cache file. ``rows`` (optional) selects this dataset's rows of ``images`` and
    ``labels``, so that several splits share one memory map.
    """

    def __init__(
        self, images: torch.Tensor | np.ndarray, labels: torch.Tensor, rows: np.ndarray | None = None
    ):
        uint8 = images.dtype == (torch.uint8 if isinstance(images, torch.Tensor) else np.uint8)
        if not uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 (N, C, H, W) images and N labels, got {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images) if self.rows is None else len(self.rows)

    def _take(self, index: int | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is not None:
            index = self.rows[index]
        labels = self.labels[torch.from_numpy(index) if isinstance(index, np.ndarray) else index]
        if isinstance(self.images, torch.Tensor):
            return self.images[index], labels
        images = self.images[index]  # reads only the selected rows of a memory map
        if not images.flags.writeable or not images.flags.c_contiguous:  # a view, not a copy
            images = np.ascontiguousarray(images).copy()
        return torch.from_numpy(images), labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._take(index)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.images, torch.Tensor) and self.rows is None:
            idx = torch.as_tensor(indices)
            return self.images[idx], self.labels[idx]  # (B, C, H, W) uint8, (B, ...)
        return self._take(np.asarray(indices, dtype=np.int64))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle a memory map as its file name (a spawned worker re-opens it), not its bytes."""
        state = self.__dict__.copy()
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = ("npy_memmap", str(self.images.filename))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], tuple):
            state["images"] = np.load(state["images"][1], mmap_mode="r")
        self.__dict__.update(state)


def keep_batch(batch: Any) -> Any:
    """``collate_fn`` for datasets that already return whole batches."""
    return batch


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed Bernoulli draw of uint8 grey images, returned as uint8 0/255."""
    generator = torch.Generator().manual_seed(seed)
    probs = images.float().div_(255)
    return (torch.rand(probs.shape, generator=generator) < probs).to(torch.uint8).mul_(255)


def split_dataset(
    images: np.ndarray, labels: torch.Tensor, rows: np.ndarray, binarize: bool, seed: int
) -> BatchIndexedDataset:
    """The ``rows`` of a (memory-mapped) image array as a dataset; with ``binarize`` the
    rows are read into memory and binarised once (fixed seed per chunk of 4096 rows), as
    validation and test sets are."""
    if not binarize:
        return BatchIndexedDataset(images, labels, rows)
    chunks = [
        binarize_once(torch.from_numpy(np.ascontiguousarray(images[rows[i : i + 4096]])), seed + i)
        for i in range(0, len(rows), 4096)
    ]
    return BatchIndexedDataset(torch.cat(chunks), labels[torch.from_numpy(rows)])


class EvalShard(DistributedSampler):
    """Validation/test indices of one DDP rank: whole batches r, r + w, r + 2w, ... of the
    evaluation order, without the padding of ``DistributedSampler`` (which would count some
    images twice). Metrics reduce sums and counts, so uneven shards are right; and each
    batch is the same batch, with the same noise seed, as on one process.

    A rank that gets no batch (a split of fewer batches than processes) evaluates batch 0
    with ``padding`` set: the system runs it, so every rank takes part in the metrics'
    reduction and Lightning's length checks, but counts none of it."""

    def __init__(self, dataset: Any, batch_size: int, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        batches = range(rank, -(-n // batch_size), num_replicas)
        self.padding = not batches and n > 0
        if self.padding:
            batches = range(1)
        self.indices = [i for b in batches for i in range(b * batch_size, min((b + 1) * batch_size, n))]
        self.num_samples = self.total_size = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def is_padding(loader: Any) -> bool:
    """Whether an evaluation loader only repeats batch 0 to keep its rank in step (``EvalShard``)."""
    return bool(getattr(getattr(loader, "sampler", None), "padding", False))


class BatchedImageDataModule(L.LightningDataModule):
    """Base class: subclasses fill ``self.splits`` with ``BatchIndexedDataset``s in ``setup``.

    Batches travel as uint8 and become floats in [0, 1] after the transfer to the device.
    With ``binarize``, training batches get a fresh Bernoulli draw every step (dynamic
    binarisation); validation and test sets are binarised once, with a fixed seed, in
    ``setup`` so that their metrics are deterministic. With ``hflip``, a random half of
    each training batch is mirrored left-right (on the device, after the transfer).
    """

    image_shape: tuple[int, int, int]  # (C, H, W), set by subclasses

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        binarize: bool = True,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        likelihood: str | None = None,
        hflip: bool = False,
        on_device: bool | str = "auto",
    ):
        """``likelihood`` names the p(x|z) family these pixels call for (binary: bernoulli,
        8-bit: logistic); model configs read it as their default ``model.likelihood``.
        ``on_device``: hold the splits in the training device's memory (``data.on_device``)."""
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.binarize = binarize
        self.pin_memory = pin_memory
        self.likelihood = likelihood
        self.hflip = hflip
        self.on_device = on_device_choice(on_device)
        self.splits: dict[str, BatchIndexedDataset] = {}
        self._device_splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_batches: ResumableBatches | None = None
        self._resume_batches: dict[str, Any] | None = None

    @property
    def value_range(self) -> tuple[float, float]:
        """Range of the pixel values the model receives."""
        return (0.0, 1.0)

    def data_device(self) -> torch.device | None:
        """Where the batches come from: the training device (``on_device``), or None for
        host memory through a DataLoader."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.on_device == "auto":  # a GPU only, when every split fits
            if device.type != "cuda":
                return None
            nbytes = sum(d.images[:1].nbytes * len(d) + d.labels.nbytes for d in self.splits.values())
            return device if fits_on(device, nbytes) else None
        return device if self.on_device == "true" else None

    def _device_split(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's images and labels on ``device``, copied there once."""
        if split not in self._device_splits or self._device_splits[split][0].device != device:
            dataset = self.splits[split]
            self._device_splits[split] = tuple(
                to_device(array, dataset.rows, device) for array in (dataset.images, dataset.labels)
            )
        return self._device_splits[split]

    def _loader(
        self, split: str, batch_size: int, train: bool
    ) -> DataLoader | DeviceBatches | ResumableBatches:
        if split not in self.splits:
            raise RuntimeError(f"the {split} split is not set up; call setup() first")
        trainer, dataset = self.trainer, self.splits[split]
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the run's seed (seed_everything)
        if train:  # a permutation of (seed, epoch) only: Lightning calls set_epoch every epoch
            overfit = trainer is not None and bool(trainer.overfit_batches)  # the same few batches
            sampler = SkippingSampler(dataset, num_replicas=world, rank=rank, shuffle=not overfit, seed=seed)
        elif world > 1:  # DDP evaluation
            sampler = EvalShard(dataset, batch_size, world, rank)
        else:
            sampler = None
        device = self.data_device()
        if device is not None:
            loader = DeviceBatches(*self._device_split(split, device), batch_size, sampler)
        else:
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                generator=torch.Generator().manual_seed(seed),  # workers' seeds: not from torch's RNG
                num_workers=self.num_workers,
                collate_fn=keep_batch,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
        return ResumableBatches(loader, sampler, batch_size) if train else loader

    def train_dataloader(self) -> ResumableBatches:
        """Shuffled every epoch by a sampler seeded from the run's seed and the epoch, so the
        data order does not depend on torch's global RNG; stateful, so that a run resumed
        from a mid-epoch checkpoint goes on with the batches that were left
        (``data.resume``). With ``trainer.overfit_batches``: the first batches, unshuffled."""
        loader = self._loader("train", self.batch_size, train=True)
        if self._resume_batches is not None:
            loader.load_state_dict(self._resume_batches)
            self._resume_batches = None
        self._train_batches = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Where the training batches are (``ResumableBatches.state_dict``), in every checkpoint.
        Lightning's fit loop saves the loader's state too, but gives it back only to a loader
        made after the checkpoint was read, and ``configure_optimizers`` makes it before
        (``trainer.estimated_stepping_batches``): so the DataModule restores it."""
        return {} if self._train_batches is None else {"train_batches": self._train_batches.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resume: the next training loader starts where the checkpoint's left off."""
        self._resume_batches = state_dict.get("train_batches")

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test", self.eval_batch_size, train=False)

    def preprocess(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> float in [0, 1]; when ``train``, dynamic binarisation
        (``binarize``) and a left-right flip of a random half of the batch (``hflip``)."""
        if train and self.hflip:  # on uint8: a quarter of the bytes of floats
            flip = torch.rand(len(images), device=images.device) < 0.5  # (B,)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        x = images.float().div_(255)
        if train and self.binarize:
            x = torch.bernoulli(x)
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(images, train=training), labels
