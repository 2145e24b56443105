"""Any folder of images (jpg, jpeg, png, webp, bmp, in any sub-folder), converted to RGB or
grey, centre-cropped to a square, resized, split at random with a fixed seed and cached
once like CelebA. Files that cannot be decoded are skipped and reported, never fatal."""

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from vae_lightning.data.cache import CacheContents
from vae_lightning.data.cached import CachedImageDataModule
from vae_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHOWN = 5  # file names quoted in a log line or an error


def find_images(root: Path) -> tuple[list[str], list[str]]:
    """Relative paths (sorted, '/'-separated) of the image files under ``root`` and of the
    other files. Hidden files and folders (``.*``) are left out; linked folders are
    followed once."""
    images, others, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith("."):
                continue
            path = (rel / name).as_posix()
            (images if name.lower().endswith(IMAGE_SUFFIXES) else others).append(path)
    return sorted(images), sorted(others)


def _examples(names: list[str]) -> str:
    more = f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


class ImageFolderDataModule(CachedImageDataModule):
    """Images of a folder tree, split at random into train / val / test.

    Labels are the index of each file's top-level sub-folder in ``classes`` (torchvision's
    ``ImageFolder`` convention); files directly in ``image_dir`` get the class ``""``.
    After ``setup``, ``skipped`` lists (file, reason) of the files that could not be
    decoded and ``ignored`` the files without an image extension.

    Args:
        image_dir: the folder of images (searched recursively).
        data_dir: where the cache goes unless ``cache_dir`` is set: ``<data_dir>/image_folder/cache``.
        val_fraction, test_fraction: shares of the readable images held out (each at least one image).
        split_seed: seed of the split and of the one-time binarisation of val/test images.
        crop: side of the centred square cut before resizing; ``None``: the largest square.
        Others: as for ``CelebADataModule``.
    """

    what = "images"

    def __init__(
        self,
        image_dir: str | None,
        data_dir: str,
        cache_dir: str | None = None,
        image_size: int = 64,
        channels: int = 3,
        crop: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 2,
        hflip: bool = True,
        binarize: bool = False,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        likelihood: str | None = "logistic",
        on_device: bool | str = "auto",
    ):
        super().__init__(
            *(cache_dir, image_size, channels, crop, batch_size, num_workers, binarize),
            *(eval_batch_size, pin_memory, likelihood, hflip, split_seed, on_device),
        )
        if not image_dir:
            raise ConfigError(
                "data.image_dir is not set: give the folder of images, e.g. "
                "python train.py data=image_folder data.image_dir=/path/to/images"
            )
        if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise ConfigError(
                "data.val_fraction and data.test_fraction must be > 0 with a sum < 1, got "
                f"{val_fraction} and {test_fraction}"
            )
        self.image_dir = Path(image_dir).expanduser().resolve()
        self.data_dir = Path(data_dir).expanduser()
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        name = re.sub(r"[^A-Za-z0-9-]+", "-", self.image_dir.name).strip("-") or "images"
        where = hashlib.sha256(str(self.image_dir).encode()).hexdigest()[:8]
        self.cache_prefix = f"{name}-{where}"  # folders of the same name share no cache
        self.classes: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.ignored: list[str] = []
        self.save_hyperparameters(ignore=["likelihood"])  # only a default: model.likelihood may differ

    def _default_cache_dir(self) -> Path:
        return self.data_dir / "image_folder" / "cache"

    def _find_files(self) -> tuple[Path, list[str]]:
        if not self.image_dir.is_dir():
            raise DataError(
                f"data.image_dir={self.image_dir} is not a folder.\n"
                "  fix: point data.image_dir=... at a folder of images."
            )
        images, self.ignored = find_images(self.image_dir)
        if self.ignored:
            log.info(
                "Ignoring %d file(s) without an image extension: %s",
                len(self.ignored),
                _examples(self.ignored),
            )
        if not images:
            others = (
                f"; {len(self.ignored)} other file(s), e.g. {_examples(self.ignored)}" if self.ignored else ""
            )
            raise DataError(
                f"no images in {self.image_dir} or its sub-folders (looked for "
                f"{', '.join(IMAGE_SUFFIXES)}, any case{others}).\n"
                "  fix: point data.image_dir=... at a folder of images."
            )
        return self.image_dir, images

    def _split_rows(self, contents: CacheContents) -> dict[str, np.ndarray]:
        """A seeded random split of the readable rows; the unreadable ones are reported."""
        self.skipped = [(contents.files[row], reason) for row, reason in sorted(contents.failed.items())]
        if self.skipped:
            shown = [f"{name} ({reason[:100]})" for name, reason in self.skipped[:SHOWN]]
            log.warning(
                "Skipped %d of %d image file(s) that could not be decoded: %s%s",
                *(
                    len(self.skipped),
                    len(contents.files),
                    "; ".join(shown),
                    " ..." if len(self.skipped) > SHOWN else "",
                ),
            )
        readable = np.array(
            [row for row in range(len(contents.files)) if row not in contents.failed], np.int64
        )
        n_val = max(1, round(self.val_fraction * len(readable)))
        n_test = max(1, round(self.test_fraction * len(readable)))
        if n_val + n_test >= len(readable):
            raise DataError(
                f"{len(readable)} readable image(s) in {self.image_dir} are too few for a train / val / test "
                f"split ({n_val} val, {n_test} test).\n  fix: add images (at least 3 are needed)."
            )
        order = np.random.default_rng(self.split_seed).permutation(readable)
        return {
            "val": np.sort(order[:n_val]),
            "test": np.sort(order[n_val : n_val + n_test]),
            "train": np.sort(order[n_val + n_test :]),
        }

    def _labels(self, contents: CacheContents) -> torch.Tensor:
        """Index of each file's top-level sub-folder in ``classes``, ``(N,)``."""
        tops = [name.split("/", 1)[0] if "/" in name else "" for name in contents.files]
        self.classes = sorted(set(tops))
        index = {name: i for i, name in enumerate(self.classes)}
        return torch.tensor([index[top] for top in tops], dtype=torch.long)
