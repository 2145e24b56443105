"""Every bad input is one readable message, a non-zero exit and no traceback, and nothing
already written is damaged. In-process cases go through Hydra's compose and the same
``report_user_errors`` wrapper as train.py; Hydra-level ones run train.py itself."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_mnist, write_idx
from PIL import Image
from synthetic_images import make_celeba

from vae_lightning.errors import report_user_errors
from vae_lightning.training import train


@pytest.fixture
def fails(make_cfg, capsys):
    """Run train(cfg) as train.py does; return the printed message after checking that the
    exit status is 2 and that no traceback was printed."""

    def _run(*overrides: str, **kwargs) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info, report_user_errors():
            train(make_cfg(*overrides, **kwargs))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, err
        return err

    return _run


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.likelihood=gausian",
            "unknown model.likelihood='gausian'; valid: bernoulli, gaussian, logistic",
        ),
        ("model.beta=-1", "model.beta must be >= 0, got -1"),
        ("model.latent_dim=0", "model.latent_dim must be >= 1, got 0"),
        ("model.free_bits=-0.5", "model.free_bits must be >= 0, got -0.5"),
        ("model.eval_iw_samples=0", "model.eval_iw_samples must be >= 1, got 0"),
        ("model.kl_warmup_steps=-10", "model.kl_warmup_steps must be >= 0"),
        ("model.iw_samples=0", "model.iw_samples must be >= 1"),
        ("data.batch_size=100000", "data.batch_size=100000 is larger than the training set (448 images)"),
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("model.optimizer.lr=-1", "model.optimizer (Adam) rejected its settings: Invalid learning rate: -1"),
        ("+model.encoder.widht=3", "unexpected keyword argument 'widht'; check model.encoder.hidden_dims"),
        ("model.max_skipped_steps=0", "model.max_skipped_steps must be >= 1, got 0"),
        ("callbacks.checkpoint.every_n_train_steps=-1", "every_n_train_steps must be >= 0, got -1"),
        ("trainer.accelerator=auto trainer.devices=4", "trainer.devices=4 asks for 4 devices, but this"),
        ("trainer.accelerator=gpu", "trainer.accelerator=gpu but this machine has no CUDA GPU"),
        (
            "model.likelihood=logistic data.binarize=true",
            "data.binarize=true turns the pixels into 0/1, but model.likelihood=logistic models 8-bit",
        ),
        (
            "trainer.limit_train_batches=-1",
            "Lightning's Trainer refused the trainer settings: You have passed invalid value -1 for "
            "limit_train_batches",
        ),
    ],
)
def test_bad_config_values(fails, override, message):
    if "GPU" in message and torch.cuda.device_count() >= 4:
        pytest.skip("this machine has the GPUs asked for")
    assert message in fails(*override.split())


def test_image_size_the_network_cannot_take(fails, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(np.full((20, 20, 3), 20 * i, np.uint8)).save(images / f"{i}.png")
    common = [
        "data=image_folder",
        f"data.image_dir={images}",
        "data.image_size=6",
        "data.batch_size=2",
        "data.num_workers=0",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    err = fails(*common, "model=conv_vae", mnist_like=False)
    assert "ConvEncoder cannot halve a 6x6 image" in err and "data.image_size" in err
    assert "cannot halve a 6x6 image" in fails(*common, "model=resnet_vae", mnist_like=False)


def test_missing_empty_and_corrupt_datasets(fails, tmp_path):
    err = fails(f"paths.data_dir={tmp_path / 'nothing'}", "data.download=false")
    assert "MNIST was not found in" in err and "VAE_DATA_DIR" in err
    make_mnist(tmp_path / "cut", n_train=200, n_test=50)
    images = tmp_path / "cut" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])  # truncated download
    assert "could not be read" in fails(f"paths.data_dir={tmp_path / 'cut'}")
    make_mnist(tmp_path / "magic", n_train=200, n_test=50)
    images = tmp_path / "magic" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    write_idx(images, np.zeros((200, 28, 28), np.uint8))
    images.write_bytes(b"\x00\x00\x99\x03" + images.read_bytes()[4:])  # bad type byte
    assert "could not be read" in fails(f"paths.data_dir={tmp_path / 'magic'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    err = fails("data=image_folder", f"data.image_dir={tmp_path / 'empty'}", mnist_like=False)
    assert "no images in" in err and "notes.txt" in err


def test_celeba_partition_naming_absent_images(fails, tmp_path):
    make_celeba(tmp_path, n=20)
    (tmp_path / "celeba" / "img_align_celeba" / "000007.jpg").unlink()
    err = fails("data=celeba", f"paths.data_dir={tmp_path}", "data.num_workers=0", mnist_like=False)
    assert "1 of the 20 images listed in list_eval_partition.txt are missing" in err and "000007.jpg" in err


def test_bad_checkpoints_and_an_intact_run(fails, make_cfg, tmp_path):
    train(make_cfg("trainer.max_epochs=1", "test=false"))
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    metrics = (run / "metrics.json").read_bytes()

    assert "does not exist" in fails(f"ckpt_path={tmp_path / 'nope.ckpt'}")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    assert "is not a PyTorch checkpoint" in fails(f"ckpt_path={tmp_path / 'notes.ckpt'}")
    (tmp_path / "cut.ckpt").write_bytes(last.read_bytes()[:20000])
    assert "it may be truncated" in fails(f"ckpt_path={tmp_path / 'cut.ckpt'}")
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {"lr": 1}}, tmp_path / "other.ckpt")
    err = fails(f"ckpt_path={tmp_path / 'other.ckpt'}")
    assert "is a Lightning checkpoint of another model" in err
    # a resume that fails on a bad value leaves the run's files as they were
    assert "model.beta must be >= 0" in fails(f"ckpt_path={run}", "model.beta=-2")
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert (run / "metrics.json").read_bytes() == metrics


def train_py(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


@pytest.mark.parametrize(
    "override, status, message",
    [
        ("model.latnt_dim=8", 1, "Could not override 'model.latnt_dim'"),
        ("trainer.limit_train_bathces=10", 1, "Could not override 'trainer.limit_train_bathces'"),
        ("model=convvae", 1, "Could not find 'model/convvae'"),
        ("hydra.run.dir=/etc/hostname/run", 2, "error: cannot write the run directory /etc/hostname/run"),
    ],
)
def test_cli_errors_before_training(tmp_path, override, status, message):
    proc = train_py(f"paths.log_dir={tmp_path / 'logs'}", override, cwd=tmp_path)
    assert proc.returncode == status, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) <= 15  # one paragraph, not a wall of text
