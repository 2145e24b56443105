"""Real training runs composed from conf/train.yaml, on tiny synthetic MNIST files."""

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, REPO

from vae_lightning import VAE
from vae_lightning.training import train

KEYS = {"val/nelbo", "test/nelbo", "test/recon", "test/kl", "test/nll", "test/loss"}


def val_curve(run: Path) -> list[float]:
    rows = csv.DictReader(open(run / "csv" / "metrics.csv"))
    return [float(r["val/nelbo"]) for r in rows if r.get("val/nelbo")]


def test_train_writes_run_dir_and_metrics(make_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vae_lightning.training")
    cfg = make_cfg("trainer.max_epochs=3")
    value = train(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = [p for p in (run / "checkpoints").glob("epoch_*.ckpt")]
    assert len(best) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert KEYS <= metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values())
    curve = val_curve(run)  # 3 epochs; validating the best checkpoint again adds no point
    assert len(curve) == 3 and curve[2] < curve[0] < 543.5 + 1  # 784·ln 2 = 543.4 at random init
    assert value == metrics["val/nelbo"] == min(curve)  # evaluation is deterministic
    for stage in ("val", "test"):  # all numbers of one stage describe the same checkpoint
        total = metrics[f"{stage}/recon"] + metrics[f"{stage}/kl"]
        assert metrics[f"{stage}/nelbo"] == pytest.approx(total, rel=1e-5)
    assert metrics["test/nll"] <= metrics["test/nelbo"]
    final = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Final metrics"))
    assert '"test/nll"' in final and "/kl_per_dim/0" not in final  # the console gets the summary
    assert "also 64 */kl_per_dim/* entries" in final  # val and test, 32 latents each


def test_checkpoint_loads_on_cpu_and_samples(make_cfg, tmp_path):
    train(make_cfg("trainer.max_epochs=1", "test=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu")  # nothing else needed
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain types only
    assert raw["hyper_parameters"]["latent_dim"] == 32
    imgs = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (5, 1, 28, 28) and 0 <= imgs.min() and imgs.max() <= 1
    assert imgs.std() > 0


def test_conv_vae_trains(make_cfg, tmp_path):
    train(make_cfg("model=conv_vae", "trainer.max_epochs=1"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert KEYS <= metrics.keys() and all(math.isfinite(v) for v in metrics.values())


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


SMOKE = ["trainer.max_epochs=1", "trainer.limit_train_batches=10"]  # shorter than any schedule's warm-up
EVAL_SMOKE = [
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=4",
    *("callbacks.images.n_samples=4", "callbacks.images.n_pairs=1", "callbacks.images.n_dims=2"),
]


@pytest.mark.parametrize("experiment", EXPERIMENTS)  # batches of 4: the GPU recipes are wide
def test_every_experiment_runs_a_10_batch_smoke_run(make_cfg, tmp_path, experiment):
    if experiment.startswith("celeba"):  # 40 synthetic faces in the official layout
        cfg = make_cfg(f"experiment={experiment}", *SMOKE, *EVAL_SMOKE, "data.batch_size=2", mnist_like=False)
    else:
        cfg = make_cfg(f"experiment={experiment}", *SMOKE, *EVAL_SMOKE)
    if experiment in ("mnist_hvae_large", "celeba_hvae"):  # GPU-sized: their depth, a CPU's width
        cfg.model.width = 16
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(metrics["test/nll"])
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10


@pytest.mark.parametrize("model", ["conv_vae", "resnet_vae", "hvae"])  # model=vae: test_trainer_config
def test_every_model_runs_a_10_batch_smoke_run(make_cfg, tmp_path, model):
    train(make_cfg(f"model={model}", *SMOKE, *EVAL_SMOKE))
    assert math.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["test/nll"])


def test_fast_dev_run(make_cfg, tmp_path):
    train(make_cfg("debug=fdr"))
    assert math.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["test/nll"])


def run_train(*overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_cli_missing_data_is_one_message_without_traceback(tmp_path):
    proc = run_train(
        f"paths.data_dir={tmp_path / 'empty'}",
        "data.download=false",
        f"paths.log_dir={tmp_path / 'logs'}",
        "trainer.accelerator=cpu",
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: MNIST was not found in" in proc.stderr
    assert "data.download=true" in proc.stderr and "VAE_DATA_DIR" in proc.stderr


def test_cli_trains_and_bad_value_lists_valid_names(tiny_mnist, tmp_path):
    common = [
        f"paths.data_dir={tiny_mnist}",
        "data.val_size=64",
        "data.batch_size=32",
        "model.eval_iw_samples=4",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = run_train(*common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.json").is_file()
    bad = run_train(*common[:-1], f"hydra.run.dir={tmp_path / 'bad'}", "model.likelihood=bernouli")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown model.likelihood='bernouli'; valid: bernoulli" in bad.stderr


def test_null_group_override_means_no_entry(tmp_path):
    from vae_lightning.config import null_group_overrides

    argv = ["train.py", "logger=null", "model.beta=null", "callbacks=null", "data=mnist"]
    expected = ["train.py", "~logger", "model.beta=null", "~callbacks", "data=mnist"]
    assert null_group_overrides(argv) == expected


def test_evaluate_a_checkpoint_and_resume_a_run(make_cfg, tmp_path):
    from vae_lightning.errors import CheckpointError, ConfigError

    train(make_cfg("model=conv_vae", "trainer.max_epochs=1", "test=false"))
    run = tmp_path / "run"
    first = json.loads((run / "metrics.json").read_text())
    # train=false builds the checkpoint's own model (conv), whatever cfg.model says (MLP)
    train(make_cfg("train=false", f"ckpt_path={run}", "paths.output_dir=" + str(tmp_path / "eval")))
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert math.isfinite(evaluated["test/nll"]) and "val/nelbo" not in evaluated
    # resume the run directory from its last.ckpt for one more epoch
    train(make_cfg("model=conv_vae", "trainer.max_epochs=2", f"ckpt_path={run}", "test=false"))
    rows = csv.DictReader(open(run / "csv" / "metrics.csv"))
    epochs = [int(r["epoch"]) for r in rows if r.get("val/nelbo")]
    assert epochs[0] == 1  # it went on from epoch 1, it did not start over
    assert json.loads((run / "metrics.json").read_text()) != first
    with pytest.raises(ConfigError, match="train=false evaluates a trained model"):
        train(make_cfg("train=false"))
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        train(make_cfg(f"ckpt_path={tmp_path / 'notes.ckpt'}"))
