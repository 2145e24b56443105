"""Fashion-MNIST falls back to Debian's gzipped copy (apt-get install dataset-fashion-mnist)
when the data directory lacks it, reading it in place without writing anything."""

import gzip
import os
from pathlib import Path

import pytest
import torch
from conftest import REAL_DATA_DIR, make_mnist
from torchvision import datasets

from vae_lightning.data import FashionMNISTDataModule
from vae_lightning.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture
def debian_copy(tmp_path, monkeypatch) -> Path:
    """Synthetic Fashion-MNIST files gzipped as the Debian package ships them."""
    raw = make_mnist(tmp_path / "src", n_train=200, n_test=50, name="FashionMNIST") / "FashionMNIST" / "raw"
    folder = tmp_path / "debian"
    folder.mkdir()
    for name in FILES:
        (folder / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
    monkeypatch.setattr(FashionMNISTDataModule, "fallback_dir", folder)
    return folder


def datamodule(data_dir, **kwargs) -> FashionMNISTDataModule:
    args = dict(data_dir=str(data_dir), batch_size=16, val_size=20, download=False)
    dm = FashionMNISTDataModule(**{**args, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_debian_copy_is_read_in_place_when_data_dir_lacks_the_files(debian_copy, tmp_path, monkeypatch):
    def no_download(self):
        raise AssertionError("downloaded although Debian's copy is there")

    monkeypatch.setattr(datasets.FashionMNIST, "download", no_download)
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    dm = datamodule(data_dir, download=True)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 180, "val": 20, "test": 50}
    expected = datasets.FashionMNIST(str(tmp_path / "src"), train=False)
    assert torch.equal(dm.splits["test"].labels, expected.targets)
    assert os.listdir(data_dir) == []  # nothing written
    grey = dm.splits["train"].images
    assert grey.dtype == torch.uint8 and grey.shape == (180, 1, 28, 28) and len(grey.unique()) > 2


def test_files_in_data_dir_come_first(debian_copy, tmp_path):
    make_mnist(tmp_path / "own", n_train=300, n_test=60, name="FashionMNIST")
    assert len(datamodule(tmp_path / "own").splits["test"]) == 60  # not the 50 of the copy


def test_corrupt_debian_copy_and_no_copy_are_clear_errors(debian_copy, tmp_path, monkeypatch):
    (debian_copy / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="could not be read"):
        datamodule(tmp_path / "empty")
    monkeypatch.setattr(FashionMNISTDataModule, "fallback_dir", tmp_path / "absent")
    with pytest.raises(DataError) as err:
        datamodule(tmp_path / "empty")
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "data.data_dir" in str(err.value)


@pytest.mark.skipif(
    not (DEBIAN_DIR.is_dir() and (REAL_DATA_DIR / "FashionMNIST" / "raw").is_dir()),
    reason="needs Debian's dataset-fashion-mnist and the shared FashionMNIST/raw copy",
)
def test_real_debian_copy_equals_the_shared_files(tmp_path):
    debian = datamodule(tmp_path, val_size=5000)
    shared = datamodule(REAL_DATA_DIR, val_size=5000)
    for split in ("train", "test"):
        assert torch.equal(debian.splits[split].images, shared.splits[split].images)
        assert torch.equal(debian.splits[split].labels, shared.splits[split].labels)
