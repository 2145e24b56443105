"""Data held on the training device: a whole split as one uint8 tensor in GPU memory
(MNIST: 47 MB, the CelebA 64x64 cache: 2.5 GB), served a batch at a time by indexing it
there. No DataLoader, no workers, no host-to-device copy per step: batches are gathered,
binarised or flipped and converted to floats without leaving the device.

``data.on_device``: ``true`` (always; on a CPU run the "device" is host memory, so the
path is exercised and tested without a GPU), ``false`` (the DataLoader path), ``auto``
(on a GPU when every split fits in half of its free memory).
"""

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from vae_lightning.errors import ConfigError

CHOICES = ("auto", "true", "false")


def on_device_choice(value: bool | str) -> str:
    """``data.on_device`` as one of ``CHOICES`` (YAML gives booleans for true/false)."""
    choice = str(value).lower()
    if choice not in CHOICES:
        raise ConfigError(f"data.on_device must be auto, true or false, got {value!r}")
    return choice


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` of data take at most half of the device's free memory (GPUs only)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


def to_device(
    images: torch.Tensor | np.ndarray, rows: np.ndarray | None, device: torch.device
) -> torch.Tensor:
    """The selected ``rows`` of ``images`` (a tensor or a memory map) as a tensor on ``device``."""
    if isinstance(images, np.ndarray):  # a memory map: read the split's rows once
        taken = images if rows is None else images[rows]
        return torch.from_numpy(np.ascontiguousarray(taken)).to(device)
    return (images if rows is None else images[torch.from_numpy(rows)]).to(device)


class DeviceBatches:
    """Batches of device-resident ``images`` ``(N, C, H, W)`` and ``labels``, in the order of
    ``sampler`` (the same samplers as the DataLoader path, so the same batches: a permutation
    of (seed, epoch) for training, contiguous or per-rank batches for evaluation).

    Lightning treats it as a data loader: it has ``len``, and ``sampler.set_epoch`` is called
    every epoch. The sampler's order is moved to the device once per epoch.
    """

    batch_sampler = None  # what Lightning looks at next to ``sampler``

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, sampler: Sampler | None = None
    ):
        self.images, self.labels, self.batch_size, self.sampler = images, labels, batch_size, sampler

    def _order(self) -> torch.Tensor:
        if self.sampler is None:
            return torch.arange(len(self.images), device=self.images.device)
        return torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.images.device)

    def __len__(self) -> int:
        n = len(self.images) if self.sampler is None else len(self.sampler)
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.images[index], self.labels[index]  # (B, C, H, W) uint8, (B, ...)
