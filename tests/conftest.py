"""Shared fixtures: tiny MNIST-format data written as IDX files, and real configs
composed from ``conf/train.yaml`` and shrunk to run in seconds on a CPU."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
REAL_DATA_DIR = Path(os.environ.get("VAE_DATA_DIR", REPO.parent / "shared" / "data"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST ships in (magic 0x08 type, ndim)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images of 10 classes: a class-specific stroke pattern, shifted
    by a pixel or two, so that there is structure for a VAE to learn."""
    rng = np.random.default_rng(seed)
    templates = np.zeros((10, 28, 28), np.float32)
    for c in range(10):
        t = np.random.default_rng(100 + c)
        for _ in range(3):  # three thick strokes per class
            r0, c0 = t.integers(5, 20, size=2)
            if t.random() < 0.5:
                templates[c, r0 : r0 + 3, c0 - 4 : c0 + 6] = 1
            else:
                templates[c, r0 - 4 : r0 + 6, c0 : c0 + 3] = 1
    labels = rng.integers(0, 10, size=n)
    images = templates[labels]
    shifts = rng.integers(-2, 3, size=(n, 2))
    images = np.stack([np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(images, shifts, strict=True)])
    images = np.clip(images * rng.uniform(0.7, 1.0, size=(n, 1, 1)) * 255, 0, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_mnist(root: Path, n_train: int = 512, n_test: int = 128, name: str = "MNIST") -> Path:
    """A torchvision-layout MNIST folder under ``root`` with synthetic images."""
    raw = root / name / "raw"
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """Data dir with 512 training and 128 test synthetic images, as MNIST and FashionMNIST,
    and 40 synthetic faces in CelebA's layout."""
    from synthetic_images import make_celeba

    root = make_mnist(tmp_path_factory.mktemp("data"))
    make_celeba(root, n=40)
    return make_mnist(root, name="FashionMNIST")


# VAE_TEST_ACCELERATOR=gpu runs the tests that train through make_cfg on a GPU (benchmarks/gpu.sh)
TINY = [
    f"trainer.accelerator={os.environ.get('VAE_TEST_ACCELERATOR', 'cpu')}",
    "trainer.max_epochs=2",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "model.eval_iw_samples=16",
]
MNIST_TINY = ["data.val_size=64", "data.batch_size=32"]  # for data=mnist / fashion_mnist


@pytest.fixture
def make_cfg(tmp_path, tiny_mnist):
    """Compose the real ``conf/train.yaml`` with tiny sizes; the run dir is ``tmp_path/run``."""

    def _make(*overrides: str, data_dir: Path | None = None, mnist_like: bool = True) -> DictConfig:
        paths = [
            f"paths.data_dir={data_dir or tiny_mnist}",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            tiny = [*TINY, *MNIST_TINY] if mnist_like else list(TINY)
            if not any(o.lstrip("~+").startswith("logger") for o in overrides):
                tiny.append("logger=csv")  # metrics.csv to read back; W&B has its own tests
            return compose("train", overrides=[*paths, *tiny, *overrides])

    return _make
