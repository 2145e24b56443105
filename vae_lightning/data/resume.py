"""Training batches that resume mid-epoch, through Lightning's stateful-loader protocol
(``state_dict`` / ``load_state_dict``). Lightning 2.6 saves that state in its fit loop but
does not hand it back to a loader built before the checkpoint is read, as ours is; so
``BatchedImageDataModule`` also keeps it in its own checkpoint entry and gives it to the
next train loader. The batch order is a function of (seed, epoch)
alone (``SkippingSampler``), so the state is just how many batches of which epoch
training has taken: a run resumed from a step checkpoint starts with the first batch it
had not trained on, and skips the others by index, reading no image.
"""

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


class SkippingSampler(DistributedSampler):
    """This rank's indices of the epoch's permutation of (seed, epoch), without the first
    ``skip`` of them. Its length stays the whole epoch's: Lightning counts an epoch's
    batches from the loader's length and, on a resume, the batches already taken."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)


class ResumableBatches:
    """A training loader (a DataLoader, or ``DeviceBatches``) whose sampler is a
    ``SkippingSampler``, made a stateful loader for Lightning.

    ``state_dict`` gives the epoch and the number of batches yielded in it. Lightning's
    fetcher does not read ahead of a loader that has a length, so these are the batches
    trained on when a checkpoint is written (after a training batch, after a validation
    or at the end of an epoch). ``load_state_dict`` makes the next iteration of that
    epoch start after them; an iteration of another epoch starts at its first batch.
    """

    batch_sampler = None  # what Lightning looks at next to ``sampler`` (set_epoch)

    def __init__(self, loader: Iterable, sampler: SkippingSampler, batch_size: int):
        self.loader, self.sampler, self.batch_size = loader, sampler, batch_size
        self._epoch, self._taken = 0, 0
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        # a generator: its body runs at the first next(), after Lightning's set_epoch
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        epoch, skip = self.sampler.epoch, 0
        if self._resume is not None:
            if self._resume["epoch"] == epoch and self._resume["batches"] < len(self):
                skip = self._resume["batches"]
            self._resume = None
        self.sampler.skip = skip * self.batch_size
        self._epoch, self._taken = epoch, skip
        for batch in self.loader:
            self._taken += 1
            yield batch

    def _layout(self) -> dict[str, int]:
        """What the batch order depends on, besides the epoch."""
        return {
            "batch_size": self.batch_size,
            "samples": len(self.sampler.dataset),
            "seed": int(self.sampler.seed),
            "world_size": int(self.sampler.num_replicas),
        }

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._taken, **self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        now = self._layout()
        changed = ", ".join(
            f"{key} {state.get(key)} -> {now[key]}" for key in now if state.get(key) != now[key]
        )
        if changed:
            log.warning(
                "resuming with another training batch order (%s): epoch %d goes on after %d batches "
                "of the new order, so some images of it may be seen twice or not at all",
                changed,
                state["epoch"],
                state["batches"],
            )
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
