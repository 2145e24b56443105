"""Input images for the modes that encode (reconstruct, interpolate, traverse).

Either the checkpoint's own test split, rebuilt from the run's ``.hydra/config.yaml``
(its ``data`` node, with ``data_dir`` overridable and never downloading), or image files.
Both arrive as the model saw its data: floats ``(N, C, H, W)`` in [0, 1].

Binarisation: the test split is binarised once with the DataModule's fixed seed, as in
training's evaluation. Image files get the same rule: when the run's data was binarised
(or, without a run config, when the likelihood is Bernoulli) every pixel is one Bernoulli
draw with probability intensity/255, from a generator seeded by ``seed``, so the result
is deterministic; otherwise intensities are kept (intensity / 255).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lightning.checkpoints import run_dir_of
from vae_lightning.data.batched import BatchedImageDataModule, binarize_once
from vae_lightning.data.cache import load_image
from vae_lightning.errors import ConfigError, DataError, UserError, quiet_logger

PIL_MODES = {1: "L", 3: "RGB"}


def run_config(ckpt: Path) -> tuple[DictConfig | None, Path]:
    """The composed config of the run that wrote ``ckpt`` (None if there is none) and its path."""
    path = run_dir_of(ckpt) / ".hydra" / "config.yaml"
    if ckpt.parent.name != "checkpoints" or not path.is_file():
        return None, path
    try:
        return OmegaConf.load(path), path
    except Exception as err:
        raise DataError(f"cannot read the run config {path}: {err}") from None


def build_datamodule(run_cfg: DictConfig, path: Path, data_dir: str | None) -> BatchedImageDataModule:
    """The run's DataModule (not set up), pointed at ``data_dir`` when given."""
    node = run_cfg.get("data")
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    try:
        with quiet_logger():
            cls = get_class(target)
    except Exception:
        raise ConfigError(f"the data config in {path} names no importable DataModule ({target!r})") from None
    if not issubclass(cls, BatchedImageDataModule):  # never call an arbitrary function from a file
        raise ConfigError(f"data._target_={target!r} in {path} is not a vae_lightning DataModule")
    if data_dir is not None:
        node.data_dir = data_dir
    if "download" in node:
        node.download = False  # sample.py only reads what is there
    try:
        return instantiate(node, _recursive_=False)
    except UserError:
        raise
    except Exception as err:
        raise ConfigError(f"the data config in {path} cannot be used ({type(err).__name__}: {err})") from None


def test_images(
    datamodule: BatchedImageDataModule, count: int, indices: Sequence[int] | None
) -> torch.Tensor:
    """uint8 ``(N, C, H, W)``: the test images at ``indices``, else the first ``count``."""
    try:
        datamodule.setup("test")
    except DataError as err:
        raise DataError(
            f"{err}\n  for sample.py: pass data_dir=... (the folder that holds the dataset) or use image "
            "files with inputs=[a.png,b.png]."
        ) from None
    split = datamodule.splits["test"]  # may be rows of a memory-mapped cache shared by all splits
    if indices is None:
        if count > len(split):
            raise ConfigError(f"asked for {count} test images, but the test split has {len(split)}")
        indices = range(count)
    bad = [i for i in indices if not 0 <= i < len(split)]
    if bad:
        raise ConfigError(
            f"indices {bad} are out of range: the test split has {len(split)} images (0..{len(split) - 1})"
        )
    return split.__getitems__(list(indices))[0]  # uint8 tensor


def read_image_files(
    files: Sequence[str], image_shape: Sequence[int], crop: int | None = None
) -> torch.Tensor:
    """uint8 ``(N, C, H, W)``: each file prepared like cached training images (``load_image``:
    C channels, the centred ``crop`` square or the largest one, antialiased resize to H x W)."""
    channels, height, width = image_shape
    if channels not in PIL_MODES or height != width:
        raise ConfigError(
            f"image files can feed square models with 1 or 3 channels, not {tuple(image_shape)}"
        )
    arrays = []
    for name in files:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"input image {path} does not exist")
        try:
            arrays.append(load_image(path, height, channels, crop))
        except Exception as err:  # not an image, truncated, too large ...
            raise DataError(f"cannot read input image {path} ({type(err).__name__}: {err})") from None
    return torch.from_numpy(np.stack(arrays))


def load_inputs(
    ckpt: Path,
    model,
    count: int,
    indices: Sequence[int] | None = None,
    files: Sequence[str] | None = None,
    seed: int = 0,
    data_dir: str | None = None,
) -> torch.Tensor:
    """Model inputs ``(N, C, H, W)`` in [0, 1]: ``files``, else the checkpoint's test split."""
    run_cfg, cfg_path = run_config(ckpt)
    datamodule = build_datamodule(run_cfg, cfg_path, data_dir) if run_cfg is not None else None
    if files:
        crop = getattr(datamodule, "crop", None)  # CelebA: the same 148 crop as in training
        images = read_image_files(files, model.image_shape, crop)
        binarize = datamodule.binarize if datamodule is not None else model.hparams.likelihood == "bernoulli"
        if binarize:
            images = binarize_once(images, seed)
    elif datamodule is None:
        raise ConfigError(
            f"{ckpt} is not in a run directory with .hydra/config.yaml, so its test split is unknown.\n"
            "  fix: pass image files with inputs=[a.png,b.png], or point ckpt_path at the run directory."
        )
    else:
        images = test_images(datamodule, count, indices)
    if tuple(images.shape[1:]) != tuple(model.image_shape):
        raise ConfigError(
            f"the data has images {tuple(images.shape[1:])}, the model expects {model.image_shape}"
        )
    return datamodule.preprocess(images, train=False) if datamodule is not None else images.float() / 255
