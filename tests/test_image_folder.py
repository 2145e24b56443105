"""data=image_folder on a tree of PNG, JPEG (grey and RGB), WebP and BMP files with a
truncated file and a non-image among them: skipped and reported, never fatal."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, TINY
from hydra import compose, initialize_config_dir
from synthetic_images import make_image_tree

from vae_lightning.data import ImageFolderDataModule, load_image
from vae_lightning.data.folder import find_images
from vae_lightning.errors import ConfigError, DataError
from vae_lightning.likelihoods import LIKELIHOODS
from vae_lightning.training import train

SKIPPED = ["cats/not_an_image.png", "dogs/truncated.jpg"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_tree(tmp_path_factory.mktemp("photos"))


def datamodule(image_dir, data_dir, **kwargs) -> ImageFolderDataModule:
    args = dict(batch_size=4, num_workers=0, image_size=32, val_fraction=0.2, test_fraction=0.2)
    dm = ImageFolderDataModule(image_dir=str(image_dir), data_dir=str(data_dir), **{**args, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_finds_images_by_extension_in_any_case_and_skips_hidden_files(tree):
    images, others = find_images(tree)
    assert len(images) == 26 and others == ["README.txt"]
    assert {"cats/b.JPG", "cats/e.webp", "cats/f.bmp", "dogs/deep/g.PNG", "top.jpg"} <= set(images)
    assert not any(name.startswith(".thumbnails") for name in images)


def test_unreadable_files_are_skipped_and_reported(tree, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        dm = datamodule(tree, tmp_path, num_workers=2)
    assert [name for name, _ in dm.skipped] == SKIPPED and dm.ignored == ["README.txt"]
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "Skipped 2 of 26 image file(s)" in warning and all(name in warning for name in SKIPPED)
    assert "image file is truncated" in warning and "cannot identify image file" in warning
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 14, "val": 5, "test": 5}  # 24 readable: 20% val, 20% test
    rows = np.concatenate([dm.splits[k].rows for k in ("train", "val", "test")])
    skipped_rows = {dm.image_cache().files.index(name) for name in SKIPPED}
    assert len(set(rows.tolist())) == 24 and not skipped_rows & set(rows.tolist())
    assert dm.image_shape == (3, 32, 32) and dm.classes == ["", "cats", "dogs"]


def test_images_are_converted_cropped_and_resized_like_on_the_fly(tree, tmp_path):
    dm = datamodule(tree, tmp_path, channels=1, image_size=16)
    contents = dm.image_cache().open()
    assert contents.images.shape == (26, 1, 16, 16) and dm.image_shape == (1, 16, 16)
    for row, name in enumerate(contents.files):
        if name not in SKIPPED:
            assert np.array_equal(contents.images[row], load_image(tree / name, 16, 1, None))
    x, y = dm.splits["train"].__getitems__([0, 1, 2])
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 16, 16) and y.dtype == torch.long


def test_split_is_seeded(tree, tmp_path):
    a, b = datamodule(tree, tmp_path), datamodule(tree, tmp_path)
    assert np.array_equal(a.splits["val"].rows, b.splits["val"].rows)
    c = datamodule(tree, tmp_path, split_seed=1)
    assert not np.array_equal(a.splits["val"].rows, c.splits["val"].rows)


def test_empty_missing_or_unset_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=r"no images in .*empty or its sub-folders .*notes\.txt"):
        datamodule(empty, tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        datamodule(tmp_path / "nowhere", tmp_path)
    with pytest.raises(ConfigError, match="data.image_dir is not set"):
        ImageFolderDataModule(image_dir=None, data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="val_fraction"):
        ImageFolderDataModule(
            image_dir=str(empty), data_dir=str(tmp_path), val_fraction=0.6, test_fraction=0.5
        )


def test_trains_one_epoch_and_reports_the_two_skipped_files(tree, tmp_path, caplog):
    if "logistic" not in LIKELIHOODS:
        pytest.skip(
            "data=image_folder defaults to model.likelihood=logistic, not in vae_lightning.likelihoods yet"
        )
    tiny = [o for o in TINY if not o.startswith(("data.val_size", "data.batch_size"))]
    overrides = [
        f"paths.data_dir={tmp_path}/data",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.output_dir={tmp_path}/run",
        *tiny,
        "data=image_folder",
        f"data.image_dir={tree}",
        "data.image_size=32",
        "data.batch_size=4",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "model=conv_vae",
        "trainer.max_epochs=1",
        "logger=csv",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with caplog.at_level(logging.WARNING, logger="vae_lightning.data.folder"):
        train(cfg)
    assert any("Skipped 2 of 26" in r.getMessage() for r in caplog.records)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nelbo"])


def test_sample_inputs_come_from_the_test_rows_of_the_cache(tree, tmp_path):
    """sample.py's test-split inputs are the test rows of the memory-mapped cache, as uint8."""
    from vae_lightning.inputs import test_images

    dm = datamodule(tree, tmp_path)
    rows = dm.splits["test"].rows
    cache = dm.image_cache().open().images
    got = test_images(dm, 3, None)
    assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(np.asarray(cache[rows[:3]])))
    picked = test_images(dm, 0, [len(rows) - 1])
    assert torch.equal(picked[0], torch.from_numpy(np.asarray(cache[rows[-1]])))
    assert dm.preprocess(got).dtype == torch.float32
