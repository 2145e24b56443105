"""CelebA on a synthetic copy in the official layout: splits, the one-time cache (equal to
decoding on the fly, reused, rebuilt when the files change, never half-written), clear
errors for missing or corrupt data, and a real training run."""

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, TINY
from hydra import compose, initialize_config_dir
from PIL import Image
from synthetic_images import face_like, make_celeba
from torchvision import datasets

from vae_lightning.data import CelebADataModule, load_image
from vae_lightning.data import cache as cache_module
from vae_lightning.errors import ConfigError, DataError
from vae_lightning.likelihoods import LIKELIHOODS
from vae_lightning.training import train


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory):
    """300 synthetic 178x218 JPEGs: 240 train, 30 valid, 30 test, with attributes."""
    return make_celeba(tmp_path_factory.mktemp("celeba300"), n=300)


def datamodule(data_dir, prepare: bool = True, **kwargs) -> CelebADataModule:
    dm = CelebADataModule(data_dir=str(data_dir), **{"batch_size": 32, "num_workers": 0, **kwargs})
    if prepare:
        dm.prepare_data()
        dm.setup("fit")
    return dm


def cache_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_splits_follow_the_partition_file_and_batches_stay_uint8(celeba_dir):
    dm = datamodule(celeba_dir, num_workers=2)  # builds the cache with 2 processes
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 240, "val": 30, "test": 30}
    assert dm.image_shape == (3, 64, 64) and dm.value_range == (0.0, 1.0)
    assert isinstance(dm.splits["train"].images, np.memmap)  # served from disk, not loaded
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (32, 3, 64, 64) and y.shape == (32, 40)
    assert set(y.unique().tolist()) <= {0, 1} and len(dm.attribute_names) == 40
    xf = dm.preprocess(x, train=False)
    assert xf.dtype == torch.float32 and 0 <= xf.min() and xf.max() <= 1 and len(xf.unique()) > 2
    # the val split holds the rows the partition file marks 1, in file order
    assert dm.splits["val"].rows.tolist() == list(range(240, 270))


def test_cache_equals_decoding_the_same_images_on_the_fly(celeba_dir):
    contents = datamodule(celeba_dir).image_cache().open()
    assert contents.images.shape == (300, 3, 64, 64) and contents.images.dtype == np.uint8
    image_dir = celeba_dir / "celeba" / "img_align_celeba"
    for row in range(0, 300, 7):
        assert np.array_equal(contents.images[row], load_image(image_dir / contents.files[row], 64, 3, 148))
    # the crop is the centred 148x148 square of the 178x218 image
    raw = np.asarray(Image.open(image_dir / "000001.jpg").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(load_image(image_dir / "000001.jpg", 148, 3, 148), raw[:, 35:183, 15:163])


def test_second_run_reuses_the_cache(celeba_dir, monkeypatch):
    first = datamodule(celeba_dir).image_cache().path
    stamp = first.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache_module.ImageCache, "_build", no_rebuild)
    second = datamodule(celeba_dir)
    assert second.image_cache().path == first and first.stat().st_mtime_ns == stamp
    assert len(second.splits["train"]) == 240


def test_changed_image_set_rebuilds_the_cache(tmp_path):
    make_celeba(tmp_path, n=40)
    before = datamodule(tmp_path).image_cache()
    old_row = before.open().images[4].copy()
    image = tmp_path / "celeba" / "img_align_celeba" / "000005.jpg"
    face_like(np.random.default_rng(99)).save(image, quality=90)
    os.utime(image, ns=(1, 1))  # a new mtime, whatever the clock's resolution
    after = datamodule(tmp_path).image_cache()
    assert after.path != before.path and after.is_valid()
    new_row = after.open().images[4]
    assert np.array_equal(new_row, load_image(image, 64, 3, 148)) and not np.array_equal(new_row, old_row)
    assert cache_files(after.directory) == sorted([after.path.name, after.sidecar.name])  # old one removed


def test_interrupted_build_leaves_no_valid_looking_cache(tmp_path, monkeypatch):
    make_celeba(tmp_path, n=40)
    cache_dir = tmp_path / "celeba" / "cache"
    real_load, calls = cache_module.load_image, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt  # Ctrl-C halfway through the build
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cache_module, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        datamodule(tmp_path)
    assert cache_files(cache_dir) == []  # no .npy, no sidecar, no temporary file
    with pytest.raises(DataError, match="call prepare_data"):
        datamodule(tmp_path, prepare=False).setup("fit")
    monkeypatch.setattr(cache_module, "load_image", real_load)
    # a killed build (temporary file left) or a crash before the sidecar: not valid either
    dm = datamodule(tmp_path, prepare=False)
    cache = dm.image_cache()
    cache_dir.mkdir(parents=True, exist_ok=True)
    stale = cache_dir / f".{cache.path.name}.999999999.tmp"
    stale.write_bytes(b"partial")
    np.save(cache.path, np.zeros((40, 3, 64, 64), np.uint8))
    assert not cache.is_valid()
    dm.prepare_data()
    dm.setup("fit")
    assert cache.is_valid() and not stale.exists() and len(dm.splits["train"]) == 32
    assert dm.splits["train"].images[0].any()  # decoded, not the zeros written above


def test_missing_data_names_what_is_missing_and_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        datamodule(tmp_path)
    msg = str(err.value)
    assert "no img_align_celeba and no list_eval_partition.txt" in msg
    assert "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in msg and "img_align_celeba.zip" in msg
    assert f"{tmp_path}/celeba/img_align_celeba/000001.jpg" in msg
    assert f"{tmp_path}/celeba/list_eval_partition.txt" in msg and "data.download=true" in msg
    make_celeba(tmp_path, n=10)
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="no list_eval_partition.txt"):
        datamodule(tmp_path)


def test_listed_but_absent_images_are_counted_and_named(tmp_path):
    make_celeba(tmp_path, n=20)
    for name in ("000003.jpg", "000011.jpg", "000017.jpg"):
        (tmp_path / "celeba" / "img_align_celeba" / name).unlink()
    with pytest.raises(DataError) as err:
        datamodule(tmp_path)
    msg = str(err.value)
    assert "3 of the 20 images listed in list_eval_partition.txt are missing" in msg
    assert "000003.jpg, 000011.jpg, 000017.jpg" in msg and "img_align_celeba.zip" in msg


def test_corrupt_images_are_reported_after_a_complete_build(tmp_path):
    make_celeba(tmp_path, n=20)
    image_dir = tmp_path / "celeba" / "img_align_celeba"
    truncated = image_dir / "000004.jpg"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (image_dir / "000009.jpg").write_text("not a JPEG")
    dm = datamodule(tmp_path, prepare=False)
    dm.prepare_data()  # the build itself does not crash
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "2 of the 20 images" in msg and "could not be decoded" in msg
    assert "000004.jpg (OSError" in msg and "000009.jpg (UnidentifiedImageError" in msg


def test_failed_download_says_what_to_get_and_where_to_unpack_it(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("<urlopen error [Errno 101] Network is unreachable>")

    monkeypatch.setattr(datasets.CelebA, "download", offline)  # never touch the network
    dm = CelebADataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "could not be downloaded (<urlopen error [Errno 101] Network is unreachable>)" in msg
    assert "Google Drive" in msg and "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in msg
    assert "Eval/list_eval_partition.txt" in msg and f"{tmp_path}/celeba/img_align_celeba/000001.jpg" in msg


def test_cache_dir_keeps_a_read_only_data_dir_untouched(celeba_dir, tmp_path):
    dm = datamodule(celeba_dir, cache_dir=str(tmp_path / "cache"), image_size=32)
    assert dm.image_cache().path.parent == tmp_path / "cache" and dm.image_cache().is_valid()
    assert not any("32px" in name for name in cache_files(celeba_dir / "celeba" / "cache"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="(?s)cannot write the image cache.*data.cache_dir"):
        datamodule(celeba_dir, cache_dir=str(blocker / "cache"), image_size=32)


def test_labels_attribute_choice_and_128px(tmp_path):
    make_celeba(tmp_path, n=20)
    table = (tmp_path / "celeba" / "list_attr_celeba.txt").read_text().splitlines()
    smiling = [int(line.split()[-1] == "1") for line in table[2:]]
    dm = datamodule(tmp_path, labels="Smiling", batch_size=4)
    rows = dm.splits["train"].rows
    assert dm.splits["train"].labels[torch.from_numpy(rows)].tolist() == [smiling[r] for r in rows]
    assert datamodule(tmp_path, labels=None, batch_size=4).splits["val"].labels.shape == (20, 0)
    with pytest.raises(ConfigError, match="unknown data.labels='Smilng'; valid: attributes, null, .*Smiling"):
        datamodule(tmp_path, labels="Smilng", batch_size=4)
    (tmp_path / "celeba" / "list_attr_celeba.txt").unlink()
    big = datamodule(tmp_path, image_size=128, batch_size=4)  # attributes are optional
    x, y = big.splits["train"].__getitems__([0, 1])
    assert x.shape == (2, 3, 128, 128) and y.shape == (2, 0) and big.image_shape == (3, 128, 128)


def test_hflip_mirrors_a_random_half_of_training_batches_only(celeba_dir):
    dm = datamodule(celeba_dir)
    x = dm.splits["train"].__getitems__(list(range(64)))[0]
    ref = x.float() / 255
    out = dm.preprocess(x, train=True)
    flipped = torch.tensor([torch.equal(o, r.flip(-1)) for o, r in zip(out, ref, strict=True)])
    same = torch.tensor([torch.equal(o, r) for o, r in zip(out, ref, strict=True)])
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54
    assert torch.equal(dm.preprocess(x, train=False), ref)


def test_memory_mapped_dataset_pickles_as_a_file_name(celeba_dir):
    ds = datamodule(celeba_dir).splits["train"]
    blob = pickle.dumps(ds)
    assert len(blob) < ds.images.nbytes / 20  # not the pixels: spawned workers re-open the file
    copy = pickle.loads(blob)
    assert isinstance(copy.images, np.memmap)
    assert all(
        torch.equal(a, b) for a, b in zip(copy.__getitems__([5, 2]), ds.__getitems__([5, 2]), strict=True)
    )


def celeba_cfg(tmp_path, data_dir, *overrides):
    """``conf/train.yaml`` with ``data=celeba`` and ``model=conv_vae``, shrunk to seconds."""
    tiny = [o for o in TINY if not o.startswith("data.val_size")]
    paths = [
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.output_dir={tmp_path}/run",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[*paths, *tiny, "data=celeba", "model=conv_vae", "trainer.max_epochs=1", "logger=csv"]
            + list(overrides),
        )


def test_binarised_eval_splits_are_fixed_draws(celeba_dir):
    a, b = datamodule(celeba_dir, binarize=True), datamodule(celeba_dir, binarize=True)
    val = a.splits["val"].images
    assert isinstance(val, torch.Tensor) and val.shape == (30, 3, 64, 64)  # drawn once, in memory
    assert set(val.unique().tolist()) == {0, 255} and torch.equal(val, b.splits["val"].images)
    assert not torch.equal(val, a.splits["test"].images[:30])


def test_conv_vae_trains_on_celeba_at_64x64x3(celeba_dir, tmp_path):
    if "logistic" not in LIKELIHOODS:
        pytest.skip("data=celeba defaults to model.likelihood=logistic, not in vae_lightning.likelihoods yet")
    cfg = celeba_cfg(tmp_path, celeba_dir, "data.num_workers=0", "model.eval_iw_samples=2")
    assert list(cfg.model.image_shape) == [3, 64, 64] and cfg.model.likelihood == "logistic"  # from data
    train(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nelbo"]) and math.isfinite(metrics["val/nelbo"])
