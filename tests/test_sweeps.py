"""Optuna search and the cluster launchers (the [sweep] extra)."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import CONF_DIR, REPO
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies import DDPStrategy

from vae_lightning.distributed import ddp_strategy

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='needs pip install -e ".[sweep]"')


def test_optuna_search_saves_the_best_trial(tiny_mnist, tmp_path):
    sweep = tmp_path / "optuna"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep}",
            f"paths.data_dir={tiny_mnist}",
            "data.val_size=64",
            "data.batch_size=64",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "test=false",
            "logger=csv",
            "callbacks.images=null",
            "++trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"model.optimizer.lr", "model.beta", "model.latent_dim"}
    trials = [json.loads((sweep / job / "metrics.json").read_text())["val/nelbo"] for job in ("0", "1", "2")]
    assert results["best_value"] == pytest.approx(min(trials), rel=1e-6)  # what train.py returned
    best = trials.index(min(trials))
    overrides = yaml.safe_load((sweep / str(best) / ".hydra" / "overrides.yaml").read_text())
    assert f"model.latent_dim={results['best_params']['model.latent_dim']}" in overrides


def test_slurm_launcher_takes_its_sizes_from_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install -e ".[sweep]"')
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    strategy = ddp_strategy(cfg.trainer)  # 8 processes: the project's DDP settings
    assert isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs["broadcast_buffers"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        joblib = compose("train", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")
