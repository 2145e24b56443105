"""sample.py: every mode through the real entry config (conf/sample.yaml composed, then the
``generate`` that sample.py calls), two runs of the script itself, and every kind of bad
checkpoint path, on tiny models trained once per module on synthetic MNIST files."""

import io
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from torchvision.utils import make_grid

from vae_lightning import sampling
from vae_lightning.checkpoints import load_vae, resolve_checkpoint
from vae_lightning.data import MNISTDataModule
from vae_lightning.errors import report_user_errors
from vae_lightning.generate import generate
from vae_lightning.images import encode_png, grid_uint8
from vae_lightning.training import train

CELL = 28 + 2  # grid cell: image plus padding
TRAIN_TINY = [  # one quick epoch on conftest's 512 + 128 synthetic images
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "data.val_size=64",
    "data.batch_size=32",
    "test=false",
    "~logger",  # no metric files needed
]


def train_run(run: Path, data_dir: Path, *overrides: str) -> Path:
    """Train a tiny VAE for one epoch into ``run`` and save its config as Hydra does."""
    paths = [f"paths.data_dir={data_dir}", f"paths.log_dir={run.parent / 'logs'}", f"paths.output_dir={run}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*paths, *TRAIN_TINY, *overrides])
    train(cfg)
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # unresolved, like Hydra's copy
    return run


@pytest.fixture(scope="module")
def run32(tmp_path_factory, tiny_mnist) -> Path:
    return train_run(tmp_path_factory.mktemp("run32") / "run", tiny_mnist)


@pytest.fixture(scope="module")
def run2d(tmp_path_factory, tiny_mnist) -> Path:
    return train_run(tmp_path_factory.mktemp("run2d") / "run", tiny_mnist, "model.latent_dim=2")


def sample_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("sample", overrides=["device=cpu", *overrides])


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def user_error(capsys, *overrides: str) -> str:
    """Run ``generate`` as sample.py does; assert exit status 2 and return the message."""
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        generate(sample_cfg(*overrides))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


# --- every mode ---------------------------------------------------------------------------
MODES = [  # mode, overrides, number of images, grid columns
    ("prior", ["n=12"], 12, 4),
    ("reconstruct", ["n=5"], 10, 10),
    ("interpolate", ["n=2", "steps=5", "path=slerp"], 10, 5),
    ("traverse", ["n=2", "dims=3", "steps=4"], 24, 4),
    ("manifold", ["steps=6"], 36, 6),
]


@pytest.mark.parametrize(("mode", "overrides", "count", "columns"), MODES, ids=[m[0] for m in MODES])
def test_every_mode_writes_grid_and_images(run32, run2d, tmp_path, mode, overrides, count, columns):
    run = run2d if mode == "manifold" else run32
    written = generate(sample_cfg(f"ckpt_path={run}", f"mode={mode}", f"out_dir={tmp_path}", *overrides))
    files = sorted((tmp_path / mode).glob("*.png"))
    assert written.grid == tmp_path / f"{mode}.png" and written.images == files
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(count)]
    images = [read_png(f) for f in files]
    assert all(a.shape == (28, 28) and a.dtype == np.uint8 and a.std() > 0 for a in images)
    grid = read_png(written.grid)
    rows = -(-count // columns)
    assert grid.shape == (rows * CELL + 2, columns * CELL + 2) and grid.std() > 0  # grey, like the data


def test_reconstruct_shows_test_images_beside_reconstructions(run32, tiny_mnist, tmp_path):
    generate(sample_cfg(f"ckpt_path={run32}", "mode=reconstruct", "indices=[3,7]", f"out_dir={tmp_path}"))
    dm = MNISTDataModule(str(tiny_mnist), val_size=64, batch_size=32)
    dm.setup("test")
    expected = dm.splits["test"].images[[3, 7], 0].numpy()  # binarised once, as in evaluation
    files = sorted((tmp_path / "reconstruct").glob("*.png"))
    assert len(files) == 4
    assert np.array_equal(read_png(files[0]), expected[0]) and np.array_equal(read_png(files[2]), expected[1])


def test_reconstruct_from_image_files(run32, tmp_path):
    """Files are converted to 1 channel, resized to 28x28 and binarised (seeded draw)."""
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    rgb = np.zeros((56, 56, 3), np.uint8)
    rgb[10:46, 20:36] = (255, 200, 220)
    Image.fromarray(rgb).save(a)
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(b)
    generate(
        sample_cfg(f"ckpt_path={run32}", "mode=reconstruct", f"inputs=[{a},{b}]", f"out_dir={tmp_path / 'o'}")
    )
    first, second = (read_png(tmp_path / "o" / "reconstruct" / f"{i:06d}.png") for i in (0, 2))
    assert first.shape == second.shape == (28, 28)
    assert set(np.unique(first)) == {0, 255} and set(np.unique(second)) == {0, 255}
    assert 0.3 < (second == 255).mean() < 0.7  # grey 128: about half the pixels on


# --- determinism and temperature ------------------------------------------------------------
def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_is_not(run32, tmp_path):
    common = [f"ckpt_path={run32}", "n=20", "draw=true", "save_tensors=true"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate(sample_cfg(*common, f"seed={seed}", f"out_dir={tmp_path / name}"))
    a, b, c = (all_bytes(tmp_path / name) for name in "abc")
    assert len(a) == 20 + 2 and "prior.npz" in a and a == b
    assert a["prior.png"] != c["prior.png"] and a["prior.npz"] != c["prior.npz"]
    with np.load(tmp_path / "a" / "prior.npz") as npz:
        assert npz["images"].shape == (20, 1, 28, 28) and npz["latents"].shape == (20, 32)
        assert set(np.unique(npz["images"])) == {0.0, 1.0}  # draw=true: Bernoulli draws


def test_temperature_zero_decodes_z_zero_for_every_image(run32, tmp_path):
    generate(sample_cfg(f"ckpt_path={run32}", "n=6", "temperature=0", f"out_dir={tmp_path}"))
    model = load_vae(resolve_checkpoint(run32))
    with torch.no_grad():
        mean = model.decode(torch.zeros(1, model.latent_dim)).mean[0, 0]
    expected = mean.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy().astype(int)
    for path in sorted((tmp_path / "prior").glob("*.png")):
        assert np.abs(read_png(path).astype(int) - expected).max() <= 1


def test_grid_layout_matches_torchvision_and_pngs_decode():
    images = torch.randint(
        0, 256, (7, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    arrays = images.permute(0, 2, 3, 1).numpy()
    ours = grid_uint8(arrays, nrow=3, padding=2, pad_value=128)
    theirs = make_grid(images, nrow=3, padding=2, pad_value=128).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, theirs)
    for array in (ours, arrays[0, :, :, :1]):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(array))))
        assert np.array_equal(decoded.reshape(array.shape), array)


# --- the pure functions ---------------------------------------------------------------------
def test_interpolation_paths_and_traversal_ranking(run32):
    z_a, z_b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    for path in sampling.PATHS:
        z = sampling.interpolate_latents(z_a, z_b, 5, path)[0]
        assert torch.allclose(z[0], z_a[0]) and torch.allclose(z[-1], z_b[0], atol=1e-6)
    assert torch.allclose(sampling.interpolate_latents(z_a, z_b, 5, "slerp").norm(dim=-1), torch.tensor(3.0))
    model = load_vae(resolve_checkpoint(run32)).model  # the plain model, as sample.py passes it
    x = torch.rand(8, 1, 28, 28).round()
    order, kl = sampling.rank_latent_dims(model, x)
    assert sorted(order) == list(range(32)) and kl[order[0]] >= kl[order[-1]] >= 0
    panel = sampling.traversals(model, x[:1], order[:2], steps=3, radius=2.0)
    mu = sampling.posterior_means(model, x[:1])[0]
    assert torch.allclose(panel.latents[0, order[0]], mu[order[0]] - 2) and panel.images.shape[0] == 6


# --- the script itself ----------------------------------------------------------------------
def run_sample(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "sample.py"), "device=cpu", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_writes_into_the_run_dir_and_leaves_cwd_alone(run32, tmp_path):
    proc = run_sample(f"ckpt_path={run32}", "n=8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grids = list((run32 / "samples").glob("prior_*/prior.png"))
    assert len(grids) == 1 and f"grid:    {grids[0]}" in proc.stdout
    assert len(list((grids[0].parent / "prior").glob("*.png"))) == 8
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log files


def evil_checkpoint(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    torch.save({"state_dict": {}, "hyper_parameters": Evil()}, path)


def test_cli_refuses_a_pickled_callable_without_running_it(tmp_path):
    evil, marker = tmp_path / "evil.ckpt", tmp_path / "PWNED"
    evil_checkpoint(evil, marker)
    proc = run_sample(f"ckpt_path={evil}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        f"error: refused to load {evil}: it holds a pickled Python object (posix.system)"
    )
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the fixture really is malicious: an unsafe load runs it
    assert marker.exists()


# --- bad inputs -----------------------------------------------------------------------------
def bad_files(run: Path, folder: Path) -> dict[str, Path]:
    ckpt = resolve_checkpoint(run)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    files = {
        name: folder / f"{name}.ckpt"
        for name in ("text", "empty", "truncated", "state_dict", "other", "no_hp")
    }
    files["text"].write_text("hello, not a checkpoint\n")
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save(raw["state_dict"], files["state_dict"])
    torch.save({**raw, "hyper_parameters": {"lr": 0.1, "hidden": 64}}, files["other"])
    torch.save({k: v for k, v in raw.items() if k != "hyper_parameters"}, files["no_hp"])
    hp = raw["hyper_parameters"]
    files["resized"], files["os_target"] = folder / "resized.ckpt", folder / "os_target.ckpt"
    torch.save({**raw, "hyper_parameters": {**hp, "latent_dim": 16}}, files["resized"])
    evil_hp = {**hp, "encoder": {"_target_": "os.system", "command": "true"}}
    torch.save(
        {**raw, "hyper_parameters": evil_hp}, files["os_target"]
    )  # plain strings, but names a function
    return files


EXPECTED = {
    "text": " is not a readable PyTorch checkpoint",
    "empty": " is not a readable PyTorch checkpoint (an empty file)",
    "truncated": " is not a readable PyTorch checkpoint (RuntimeError: PytorchStreamReader failed",
    "state_dict": " is a plain state_dict (tensors only)",
    "other": " is a Lightning checkpoint of another model: its hyper_parameters lack image_shape, optimizer",
    "no_hp": " is a Lightning checkpoint of another model: its hyper_parameters lack image_shape, optimizer",
    "resized": ": its weights do not fit the VAE its hyper_parameters describe (RuntimeError",
    "os_target": ": the VAE its hyper_parameters describe cannot be built (ConfigError",
}


def test_bad_checkpoints_give_one_message_and_status_2(run32, tmp_path, capsys):
    for name, path in bad_files(run32, tmp_path).items():
        err = user_error(capsys, f"ckpt_path={path}")
        assert f"{path}{EXPECTED[name]}" in err, err
        assert "fix: point ckpt_path at" in err, (name, err)
    err = user_error(capsys, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    assert f"error: ckpt_path={tmp_path / 'nope.ckpt'} does not exist" in err
    (tmp_path / "empty_dir").mkdir()
    assert "no checkpoint in" in user_error(capsys, f"ckpt_path={tmp_path / 'empty_dir'}")
    assert "ckpt_path is required" in user_error(capsys)


def test_other_user_errors(run32, tmp_path, capsys):
    run = [f"ckpt_path={run32}", f"out_dir={tmp_path}"]
    assert "needs a 2-D latent space, but this model has latent_dim=32" in user_error(
        capsys, *run, "mode=manifold"
    )
    assert "unknown mode='dream'; valid: prior, reconstruct" in user_error(capsys, *run, "mode=dream")
    assert "out of range: the test split has 128 images" in user_error(
        capsys, *run, "mode=reconstruct", "indices=[500]"
    )
    assert "pairs its inputs" in user_error(capsys, *run, "mode=interpolate", "indices=[1,2,3]")
    assert "does not exist" in user_error(capsys, *run, "mode=traverse", f"inputs=[{tmp_path / 'x.png'}]")
    err = user_error(capsys, *run, "mode=reconstruct", f"data_dir={tmp_path / 'moved'}")
    assert "MNIST was not found in" in err and "for sample.py: pass data_dir=" in err


def test_run_dirs_resolve_to_the_best_checkpoint(run32, tmp_path):
    sweep = tmp_path / "multirun"
    for job, names in (("0", ["epoch_004.ckpt", "last.ckpt"]), ("1", ["last.ckpt"])):
        for name in names:
            (sweep / job / "checkpoints").mkdir(parents=True, exist_ok=True)
            (sweep / job / "checkpoints" / name).touch()
    assert resolve_checkpoint(sweep / "0") == sweep / "0" / "checkpoints" / "epoch_004.ckpt"
    assert resolve_checkpoint(sweep / "1") == sweep / "1" / "checkpoints" / "last.ckpt"
    with pytest.raises(Exception, match="is a multirun directory with 2 jobs; choose one"):
        resolve_checkpoint(sweep)
    copy = tmp_path / "copy"
    shutil.copytree(run32 / "checkpoints", copy / "checkpoints")
    best = resolve_checkpoint(run32)
    shutil.copy(best, copy / "checkpoints" / "epoch_009.ckpt")  # two candidates: last.ckpt says which
    assert resolve_checkpoint(copy) == copy / "checkpoints" / best.name
