"""CelebA (aligned and cropped, 178x218 RGB JPEGs), centre-cropped to 148 and resized to
64x64 as in the VAE literature, decoded once into a memory-mapped uint8 cache.

The official layout, under ``data_dir``::

    celeba/img_align_celeba/000001.jpg ... 202599.jpg
    celeba/list_eval_partition.txt      # "000001.jpg 0": 0 train, 1 valid, 2 test
    celeba/list_attr_celeba.txt         # optional: 40 binary attributes per image
"""

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from vae_lightning.data.cache import CacheContents
from vae_lightning.data.cached import CachedImageDataModule
from vae_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = {"train": 0, "val": 1, "test": 2}  # codes in list_eval_partition.txt
SHOWN = 5  # file names quoted in an error


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _examples(names: list[str]) -> str:
    more = f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def read_partition(path: Path) -> tuple[list[str], np.ndarray]:
    """File names and split codes ``(N,)`` (0 train, 1 valid, 2 test) of ``list_eval_partition.txt``."""
    names, codes = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(
                f"{path}, line {number}: expected '<image file> <0|1|2>', got {line.strip()!r}.\n"
                "  fix: use the official list_eval_partition.txt (CelebA's Eval/ folder)."
            )
        names.append(parts[0])
        codes.append(int(parts[1]))
    if not names:
        raise DataError(f"{path} lists no images.\n  fix: use the official list_eval_partition.txt.")
    return names, np.array(codes, dtype=np.int8)


def read_attributes(path: Path, names: list[str]) -> tuple[list[str], torch.Tensor]:
    """The 40 attribute names and the attributes ``(len(names), 40)`` int64 in {0, 1} of
    ``names``, from ``list_attr_celeba.txt`` (line 1: count, line 2: names, then
    ``<file> ±1 ...``)."""
    lines = path.read_text().splitlines()
    header = lines[1].split() if len(lines) > 1 else []
    table = {}
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if parts and len(parts) != len(header) + 1:
            raise DataError(
                f"{path}, line {number}: {len(parts) - 1} values for {len(header)} attributes.\n"
                "  fix: use the official list_attr_celeba.txt (CelebA's Anno/ folder), or delete it."
            )
        if parts:
            table[parts[0]] = parts[1:]
    missing = [name for name in names if name not in table]
    if not header or missing:
        raise DataError(
            f"{path} has no attributes for {len(missing) or len(names)} of the {len(names)} images "
            f"(e.g. {_examples(missing or names)}).\n"
            "  fix: use the official list_attr_celeba.txt, or delete it (attributes are optional)."
        )
    values = np.array([table[name] for name in names]).astype(np.int8)  # (N, 40) in {-1, 1}
    return header, torch.from_numpy(values > 0).long()


class CelebADataModule(CachedImageDataModule):
    """CelebA with the official train / valid / test partition (162,770 / 19,867 /
    19,962 images).

    Args:
        data_dir: the folder that holds ``celeba/`` (see the module docstring).
        cache_dir: where the decoded cache goes; ``None``: ``<data_dir>/celeba/cache``.
            Set it when ``data_dir`` is read-only (a shared dataset mount).
        image_size: side of the model's images (64 as in the literature; 128 works too).
        crop: side of the centred square cut from the 178x218 images before resizing.
        download: try torchvision's download (Google Drive) when files are missing; when
            it fails, the error says what to download by hand and where to unpack it.
        hflip: mirror a random half of each training batch (on the device).
        labels: ``"attributes"``: the 40 binary attributes ``(N, 40)`` of
            ``list_attr_celeba.txt`` (``(N, 0)`` when that optional file is absent); an
            attribute name such as ``"Smiling"``: that attribute ``(N,)`` in {0, 1}; ``None``:
            no labels ``(N, 0)``.
        binarize, likelihood: 8-bit colour pixels: no binarisation, a discretised logistic.
    """

    cache_prefix = "celeba"
    what = "CelebA images"

    def __init__(
        self,
        data_dir: str,
        cache_dir: str | None = None,
        image_size: int = 64,
        channels: int = 3,
        crop: int | None = 148,
        batch_size: int = 128,
        num_workers: int = 2,
        download: bool = False,
        hflip: bool = True,
        binarize: bool = False,
        labels: str | None = "attributes",
        split_seed: int = 0,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        likelihood: str | None = "logistic",
        on_device: bool | str = "auto",
    ):
        super().__init__(
            *(cache_dir, image_size, channels, crop, batch_size, num_workers, binarize),
            *(eval_batch_size, pin_memory, likelihood, hflip, split_seed, on_device),
        )
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.labels = labels
        self.attribute_names: list[str] = []
        self._partition = np.zeros(0, np.int8)
        self.save_hyperparameters(ignore=["likelihood"])  # only a default: model.likelihood may differ

    @property
    def folder(self) -> Path:
        return self.data_dir / "celeba"

    @property
    def partition_file(self) -> Path:
        return self.folder / "list_eval_partition.txt"

    @property
    def attribute_file(self) -> Path:
        return self.folder / "list_attr_celeba.txt"

    @property
    def image_dir(self) -> Path:
        return self.folder / "img_align_celeba"

    def _default_cache_dir(self) -> Path:
        return self.folder / "cache"

    def _instructions(self, problem: str) -> str:
        return (
            f"CelebA {problem}.\n"
            "  get it by hand from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (the Google Drive "
            "or Baidu links under 'Align&Cropped Images'): Img/img_align_celeba.zip, "
            "Eval/list_eval_partition.txt and, for attribute labels, Anno/list_attr_celeba.txt (optional)\n"
            "  unpack them so that these paths exist:\n"
            f"    {self.image_dir}/000001.jpg ... 202599.jpg\n"
            f"    {self.partition_file}\n"
            f"    {self.attribute_file}   (optional)\n"
            "  or point data.data_dir=... (or VAE_DATA_DIR) at the folder that holds celeba/."
        )

    def prepare_data(self) -> None:
        """Download when asked and files are missing, then build the cache once."""
        if self.download and not (self.partition_file.is_file() and self.image_dir.is_dir()):
            self._download()
        super().prepare_data()

    def _download(self) -> None:
        log.info("Downloading CelebA into %s with torchvision (Google Drive)", self.folder)
        try:
            datasets.CelebA(str(self.data_dir), split="all", target_type=[], download=True)
        except Exception as err:  # no network, Drive quota, gdown missing, bad checksum ...
            raise DataError(
                self._instructions(
                    f"could not be downloaded ({_first_line(err)}); torchvision fetches it from "
                    "Google Drive (with gdown), which often refuses it (daily quota)"
                )
            ) from err

    def _find_files(self) -> tuple[Path, list[str]]:
        """Partition file names, after checking that every listed image is there."""
        absent = [p.name for p in (self.image_dir, self.partition_file) if not p.exists()]
        if absent:
            hint = "" if self.download else " (data.download=true tries torchvision's download)"
            raise DataError(
                self._instructions(f"was not found in {self.folder}: no {' and no '.join(absent)}{hint}")
            )
        names, self._partition = read_partition(self.partition_file)
        present = set(os.listdir(self.image_dir))
        missing = [name for name in names if name not in present]
        if missing:
            raise DataError(
                f"CelebA: {len(missing):,} of the {len(names):,} images listed in {self.partition_file.name} "
                f"are missing from {self.image_dir} ({_examples(missing)}).\n"
                "  fix: unpack img_align_celeba.zip there again (it holds 202,599 JPEGs), or use the "
                "list_eval_partition.txt that belongs to your images."
            )
        return self.image_dir, names

    def _split_rows(self, contents: CacheContents) -> dict[str, np.ndarray]:
        if contents.failed:
            bad = [
                f"{contents.files[row]} ({reason[:80]})" for row, reason in sorted(contents.failed.items())
            ]
            raise DataError(
                f"CelebA: {len(bad):,} of the {len(contents.files):,} images in {self.image_dir} "
                f"could not be decoded: {_examples(bad)}.\n"
                "  fix: replace them from img_align_celeba.zip (the cache is rebuilt when files change)."
            )
        rows = {split: np.flatnonzero(self._partition == code) for split, code in SPLITS.items()}
        for split, code in SPLITS.items():
            if len(rows[split]) == 0:
                raise DataError(f"{self.partition_file} assigns no image to {split} (code {code}).")
        return rows

    def _labels(self, contents: CacheContents) -> torch.Tensor:
        n = len(contents.files)
        if self.labels is None:
            return torch.zeros(n, 0, dtype=torch.long)
        if not self.attribute_file.is_file():
            if self.labels != "attributes":
                raise DataError(f"data.labels={self.labels!r} needs {self.attribute_file}, which is missing.")
            log.info("No %s: CelebA batches carry no labels", self.attribute_file.name)
            return torch.zeros(n, 0, dtype=torch.long)
        self.attribute_names, attributes = read_attributes(self.attribute_file, contents.files)
        if self.labels == "attributes":
            return attributes  # (N, 40)
        if self.labels not in self.attribute_names:
            raise ConfigError(
                f"unknown data.labels={self.labels!r}; valid: attributes, null, "
                + ", ".join(self.attribute_names)
            )
        return attributes[:, self.attribute_names.index(self.labels)].contiguous()  # (N,)
