"""DDP for real: 2 CPU processes (gloo) through train.py, alone and inside a multirun."""

import json

import lightning as L
import pytest
from hydra.utils import instantiate
from test_logging import train_py, wandb_records

from vae_lightning.checkpoints import load_vae
from vae_lightning.training import train

TINY_DDP = [
    "trainer=ddp_sim",
    "data.val_size=64",
    "data.batch_size=48",  # 128 test images: batches of 48, 48, 32 -> rank 0 gets 2, rank 1 gets 1
    "trainer.max_epochs=1",
    "model.eval_iw_samples=8",
    "++trainer.enable_progress_bar=false",
]
# the headline command's shape (trainer.devices=N, no trainer=ddp), with a validation split
# of one batch: the second process has no batch of its own there
MISSION_DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "data.val_size=40", *TINY_DDP[2:]]


def test_ddp_run_has_one_directory_and_the_numbers_of_one_process(tiny_mnist, tmp_path, make_cfg):
    logs = tmp_path / "logs"
    train_py(
        f"paths.data_dir={tiny_mnist}", f"paths.log_dir={logs}", *MISSION_DDP, "logger=csv", cwd=tmp_path
    )
    (run,) = (logs / "train" / "runs").iterdir()  # one run directory, not one per process
    assert [p.parent for p in tmp_path.rglob(".hydra")] == [run]
    assert [p.name for p in tmp_path.rglob("metrics.json")] == ["metrics.json"]
    assert (run / "train_rank1.log").is_file()  # the second process wrote into the same directory
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list(run.glob("checkpoints/epoch_*.ckpt"))) == 1
    assert (run / "report.png").is_file() and (run / "images" / "reconstructions" / "epoch_000.png").is_file()
    ddp = json.loads((run / "metrics.json").read_text())
    # the same checkpoint evaluated by one process: every image once, the same noise per batch
    train(make_cfg("train=false", f"ckpt_path={run}", "data.batch_size=48", "model.eval_iw_samples=8"))
    single = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test/nelbo", "test/recon", "test/kl", "test/nll", "test/active_units"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-5), key
    # validation (one batch of 40 images on 2 processes) against one process's
    cfg = make_cfg("data.batch_size=48", "data.val_size=40")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (val,) = trainer.validate(load_vae(ddp_best(run)), datamodule=instantiate(cfg.data), verbose=False)
    for key in ("val/nelbo", "val/recon", "val/kl", "val/active_units"):
        assert ddp[key] == pytest.approx(val[key], rel=1e-5, abs=1e-5), key


def ddp_best(run):
    (best,) = run.glob("checkpoints/epoch_*.ckpt")
    return best


def test_multirun_of_ddp_jobs(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    train_py(
        "-m",
        f"paths.data_dir={tiny_mnist}",
        f"hydra.sweep.dir={sweep}",
        *TINY_DDP,
        "model.latent_dim=2,3",
        cwd=tmp_path,
    )
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    runs = []
    for job in ("0", "1"):
        folder = sweep / job
        assert (folder / ".hydra" / "config.yaml").is_file() and (folder / "metrics.json").is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "report.png").is_file()
        assert (folder / "train_rank1.log").is_file()  # its second process ran in the job's directory
        (record,) = [r["run"] for r in wandb_records(folder) if r.get("type") == "run"]
        runs.append(record)
    assert [r["display_name"] for r in runs] == ["model.latent_dim=2", "model.latent_dim=3"]
    assert runs[0]["run_group"] == runs[1]["run_group"] and runs[0]["run_id"] != runs[1]["run_id"]
    assert len(list(tmp_path.rglob(".hydra"))) == 2
