"""W&B (offline, read back with W&B's own reader), TensorBoard, image panels, report.png
and the multirun comparison, through train.py itself."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

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
