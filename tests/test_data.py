import numpy as np
import pytest
import torch
from conftest import make_mnist, write_idx
from torchvision import datasets

from vae_lightning.data import FashionMNISTDataModule, MNISTDataModule
from vae_lightning.errors import ConfigError, DataError


def datamodule(data_dir, **kwargs) -> MNISTDataModule:
    args = dict(data_dir=str(data_dir), batch_size=32, val_size=64, download=False)
    dm = MNISTDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def test_splits_and_batches_stay_uint8_until_preprocessed(tiny_mnist):
    dm = datamodule(tiny_mnist)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 448, "val": 64, "test": 128}
    assert dm.image_shape == (1, 28, 28)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (32, 1, 28, 28) and y.shape == (32,)
    # whole-batch indexing: one call returns the stacked batch
    xb, yb = dm.splits["train"].__getitems__([3, 1, 2])
    assert torch.equal(xb[1], dm.splits["train"][1][0]) and yb.shape == (3,)


def test_train_and_val_sets_are_disjoint_and_split_is_seeded(tiny_mnist):
    a, b = datamodule(tiny_mnist), datamodule(tiny_mnist)
    train = {bytes(img.numpy()) for img in a.splits["train"].images}
    assert not any(bytes(img.numpy()) in train for img in a.splits["val"].images if img.any())
    assert torch.equal(a.splits["val"].images, b.splits["val"].images)
    c = datamodule(tiny_mnist, split_seed=1)
    assert not torch.equal(a.splits["val"].images, c.splits["val"].images)


def test_eval_sets_are_binarised_once_and_training_batches_dynamically(tiny_mnist):
    a, b = datamodule(tiny_mnist), datamodule(tiny_mnist)
    for split in ("val", "test"):
        values = set(a.splits[split].images.unique().tolist())
        assert values <= {0, 255}
        assert torch.equal(a.splits[split].images, b.splits[split].images)  # fixed seed
    grey = a.splits["train"].images[:64]
    assert len(grey.unique()) > 2  # training data stays grey in memory
    x1, x2 = a.preprocess(grey, train=True), a.preprocess(grey, train=True)
    assert set(x1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(x1, x2)  # a fresh draw per batch
    # the draw follows the grey level: mean pixel matches in expectation
    assert abs(x1.mean().item() - grey.float().div(255).mean().item()) < 0.01
    ev = a.preprocess(a.splits["val"].images[:8], train=False)
    assert ev.dtype == torch.float32 and set(ev.unique().tolist()) <= {0.0, 1.0}


def test_missing_files_name_the_directory_files_and_fixes(tmp_path):
    with pytest.raises(DataError) as err:
        datamodule(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "data.download=true" in msg and "VAE_DATA_DIR" in msg and "data.data_dir" in msg


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DataError, match="could not be downloaded") as err:
        dm.prepare_data()
    assert "data.data_dir" in str(err.value)


def test_truncated_or_bad_magic_files_are_reported(tmp_path):
    make_mnist(tmp_path, n_train=200, n_test=50)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DataError, match="could not be read"):
        datamodule(tmp_path)
    write_idx(images, np.zeros((200, 28, 28), np.uint8))
    images.write_bytes(b"\x00\x00\x99\x03" + images.read_bytes()[4:])  # bad type byte
    with pytest.raises(DataError, match="could not be read"):
        datamodule(tmp_path)


def test_batch_larger_than_training_set_is_a_config_error(tiny_mnist):
    with pytest.raises(ConfigError, match="larger than the training set"):
        datamodule(tiny_mnist, batch_size=1000)


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    make_mnist(tmp_path, n_train=200, n_test=50, name="FashionMNIST")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=16, val_size=20, download=False)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 180 and len(dm.splits["test"]) == 50
