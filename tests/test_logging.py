"""W&B (offline, read back with W&B's own reader), TensorBoard, image panels, report.png
and the multirun comparison, through train.py itself; the panels also from a model and data
on a (pretend) accelerator."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from hydra.utils import instantiate
from PIL import Image
from torch.distributions import Independent, Normal

SECRET_KEY = "0123456789abcdef0123456789abcdef01234567"  # looks like a W&B key; no network here
TINY_RUN = [
    "data.val_size=64",
    "data.batch_size=32",  # 448 training images: 14 steps per epoch
    "model.eval_iw_samples=8",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=2",
    "++trainer.enable_progress_bar=false",
]


def train_py(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**environment, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's offline .wandb log, read by `wandb leet inspect --json`."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    wandb = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(offline)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def history_values(records: list[dict], key: str) -> list[float]:
    items = [r["history"]["item"] for r in records if r.get("type") == "history"]
    return [item[key] for item in items if key in item]


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), np.float32)


@pytest.fixture(scope="module")
def logged_run(tiny_mnist, tmp_path_factory) -> Path:
    """Two epochs with logger=many (W&B + CSV + TensorBoard) and an API key in the
    environment, on a machine where the W&B server cannot be reached."""
    tmp = tmp_path_factory.mktemp("logged")
    run = tmp / "run"
    train_py(
        f"paths.data_dir={tiny_mnist}",
        f"hydra.run.dir={run}",
        *TINY_RUN,
        "trainer.max_epochs=2",
        "logger=many",
        cwd=tmp,
        env={"WANDB_API_KEY": SECRET_KEY, "WANDB_BASE_URL": "http://127.0.0.1:9"},  # refused at once
    )
    return run


def test_wandb_offline_run_has_the_curves_and_the_images(logged_run):
    records = wandb_records(logged_run)
    losses = history_values(records, "train/loss")
    steps = 2 * 14
    assert len(losses) == steps // 2 and all(np.isfinite(losses))  # every log_every_n_steps=2
    assert len(history_values(records, "val/nelbo")) == 2  # one per epoch, no extra point
    for panel in ("reconstructions", "prior_samples", "interpolations", "traversals", "latent_map"):
        files = history_values(records, f"images/{panel}.path")
        assert len(files) == 2 and all(f.endswith(".png") for f in files), panel
        assert all((next(logged_run.glob("wandb/offline-run-*")) / "files" / f).is_file() for f in files)
    config = json.dumps([r for r in records if r.get("type") == "config"])
    assert '"latent_dim"' in config and '"max_epochs"' in config  # the composed config is the run config
    assert (logged_run / "wandb_run_id").read_text().strip() in str(
        next(logged_run.glob("wandb/offline-run-*"))
    )


def test_no_api_key_in_any_file_of_the_run(logged_run):
    files = [p for p in logged_run.rglob("*") if p.is_file()]
    assert len(files) > 20
    leaked = [str(p) for p in files if SECRET_KEY.encode() in p.read_bytes()]
    assert leaked == []


def test_tensorboard_csv_history_panels_and_report(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/beta", "val/nelbo", "test/nll"} <= scalars
    assert len(events.Scalars("val/nelbo")) == 2
    assert "images/reconstructions" in events.Tags()["images"]
    rows = list(csv.DictReader(open(logged_run / "csv" / "metrics.csv")))
    assert sum(1 for r in rows if r.get("train/images_per_s")) >= 10
    history = [json.loads(line) for line in (logged_run / "history.jsonl").read_text().splitlines()]
    assert sum("train/loss" in h for h in history) == 14 and sum("val/nelbo" in h for h in history) == 2
    for panel in ("reconstructions", "prior_samples", "interpolations", "traversals", "latent_map"):
        files = sorted((logged_run / "images" / panel).glob("epoch_*.png"))
        assert [f.name for f in files] == ["epoch_000.png", "epoch_001.png"], panel
        assert png_pixels(files[-1]).var() > 0, panel
    report = png_pixels(logged_run / "report.png")
    assert report.shape[0] >= 600 and report.var() > 0


def test_multirun_jobs_are_separate_wandb_runs_and_the_report_compares_them(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    train_py(
        "-m",
        f"paths.data_dir={tiny_mnist}",
        f"hydra.sweep.dir={sweep}",
        *TINY_RUN,
        "trainer.max_epochs=1",
        "model.eval_iw_samples=2",
        "model.latent_dim=2,3",
        cwd=tmp_path,
    )
    runs = []
    for job in ("0", "1"):
        (record,) = [r["run"] for r in wandb_records(sweep / job) if r.get("type") == "run"]
        runs.append(record)
    assert [r["display_name"] for r in runs] == ["model.latent_dim=2", "model.latent_dim=3"]
    assert runs[0]["run_group"] == runs[1]["run_group"] == sweep.name
    assert runs[0]["run_id"] != runs[1]["run_id"]
    assert (sweep / "0" / "images" / "manifold" / "epoch_000.png").is_file()  # the 2-D latent job only
    assert not (sweep / "1" / "images" / "manifold").exists()
    out = subprocess.run(
        [sys.executable, "-m", "vae_lightning.report", str(sweep)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(open(sweep / "runs.csv")))
    assert [r["run"] for r in table] == ["model.latent_dim=2", "model.latent_dim=3"]
    assert all(float(r["test/nll"]) > 0 for r in table)
    assert "| model.latent_dim=2 |" in (sweep / "runs.md").read_text()
    assert png_pixels(sweep / "runs.png").var() > 0 and (sweep / "1" / "report.png").is_file()


class OnDevice(torch.Tensor):
    """A tensor on a pretend accelerator, for CPU-only tests: torch computes with it as usual
    (results stay ``OnDevice``), but numpy, and so matplotlib and PIL, refuse it with CUDA's
    error until it is copied to host memory by ``.cpu()``, ``.to("cpu")`` or ``.numpy(force=True)``."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert device tensor to numpy. Use Tensor.cpu() to copy it to host memory.")

    def numpy(self, *, force: bool = False) -> np.ndarray:
        if not force:
            self.__array__()
        return self.cpu().numpy(force=True)

    def cpu(self, *args, **kwargs) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).cpu(*args, **kwargs)

    def to(self, *args, **kwargs) -> torch.Tensor:
        moved = super().to(*args, **kwargs)
        target = kwargs.get("device", args[0] if args else None)
        to_host = isinstance(target, str | torch.device) and torch.device(target).type == "cpu"
        return moved.cpu() if to_host else moved


class ModelOnDevice(torch.nn.Module):
    """A flat model's interface (``models.LatentVariableModel``) with every output on the
    pretend accelerator, as a model on a GPU gives."""

    def __init__(self, model):
        super().__init__()
        self.model, self.latent_dim, self.num_groups = model, model.latent_dim, model.num_groups
        self.split_noise = model.split_noise

    def encode(self, x: torch.Tensor):
        return self.model.encode(x.as_subclass(OnDevice))

    def decode(self, z: torch.Tensor):
        return self.model.decode(z.as_subclass(OnDevice))

    def reconstruct(self, x: torch.Tensor):
        return self.model.reconstruct(x.as_subclass(OnDevice))

    def prior(self):
        p = self.model.prior().base_dist
        return Independent(Normal(p.loc.as_subclass(OnDevice), p.scale.as_subclass(OnDevice)), 1)

    def prior_noise(self, n, generator=None):
        return self.model.prior_noise(n, generator).as_subclass(OnDevice)

    def decode_noise(self, noise, temperature=1.0):
        _, z = self.model.decode_noise(noise, temperature)
        return self.decode(z), z.as_subclass(OnDevice)


def test_image_panels_of_a_model_and_data_on_an_accelerator():
    """On a GPU, with ``data.on_device``, the latent map once handed CUDA posterior means to
    matplotlib ("can't convert cuda:0 device type tensor to numpy"). Every panel must come out
    the same whether the model, images and labels live in host memory or on a device."""
    from vae_lightning import VAE
    from vae_lightning.callbacks import ImagePanels
    from vae_lightning.images import to_uint8

    torch.manual_seed(0)
    mlp = {"hidden_dims": [32]}
    vae = VAE(
        encoder={"_target_": "vae_lightning.networks.MLPEncoder", **mlp},
        decoder={"_target_": "vae_lightning.networks.MLPDecoder", **mlp},
        image_shape=[1, 28, 28],
        latent_dim=2,  # every panel, the manifold included
    ).eval()
    x = torch.bernoulli(torch.full((40, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 4
    callback = ImagePanels(n_images=4, n_samples=4, n_pairs=1, steps=3, n_dims=2)
    on_host = callback.draw(vae.model, x, labels)
    on_device = callback.draw(ModelOnDevice(vae.model), x.as_subclass(OnDevice), labels.as_subclass(OnDevice))
    names = {"reconstructions", "prior_samples", "interpolations", "traversals", "latent_map", "manifold"}
    assert set(on_host) == set(on_device) == names
    for name, image in on_host.items():
        assert type(on_device[name]) is np.ndarray and image.dtype == np.uint8 and image.shape[2] == 3, name
        np.testing.assert_array_equal(on_device[name], image, err_msg=name)
    np.testing.assert_array_equal(to_uint8(x.as_subclass(OnDevice)), to_uint8(x))  # the numpy boundary


def test_the_progress_bar_redraws_on_a_clock_and_at_the_last_batch(monkeypatch):
    """A redraw costs ~3 ms: at most one per min_interval seconds, plus the last batch of a
    loop (so the bar ends at 100 %)."""
    import time
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import TQDMProgressBar

    from vae_lightning.callbacks import ProgressBar

    drawn = []
    record = lambda self, trainer, module, outputs, batch, i: drawn.append(i + 1)  # noqa: E731
    monkeypatch.setattr(TQDMProgressBar, "on_train_batch_end", record)
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    bar = ProgressBar(min_interval=0.5)
    assert bar.refresh_rate == 1  # the clock decides, whatever Lightning's environment rules say
    bar.train_progress_bar = SimpleNamespace(total=10, n=0)
    for batch_idx in range(10):  # a step every 0.2 s
        bar.on_train_batch_end(None, None, None, None, batch_idx)
        if batch_idx == 8:  # not redrawn, but counted: an early stop or the epoch's end shows 9
            assert bar.train_progress_bar.n == 9
        clock[0] += 0.2
    assert drawn == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="min_interval must be >= 0"):
        ProgressBar(min_interval=-1)


def test_the_default_progress_bar_shows_training_validation_and_test(make_cfg, capsys):
    """The configured bar (conf/callbacks/default.yaml) runs through a whole fit and test and
    ends every loop at 100 %."""
    from vae_lightning.callbacks import ProgressBar
    from vae_lightning.training import train

    cfg = make_cfg("trainer.max_epochs=1", "++trainer.enable_progress_bar=true")
    assert isinstance(instantiate(cfg.callbacks.progress_bar), ProgressBar)
    train(cfg)
    shown = capsys.readouterr().out  # Lightning's bars write to stdout
    assert "Epoch 0: 100%" in shown and "Testing DataLoader 0: 100%" in shown, shown[-2000:]
