"""Resume: the same run directory, and the same weights as a run that was not interrupted."""

import itertools
import json
from pathlib import Path

import pytest
import torch

from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.config import resume_in_run_dir
from vae_lightning.data.mnist import MNISTDataModule
from vae_lightning.training import train

RUN = ["test=false", "trainer.max_epochs=2", "data.batch_size=64"]


def history_steps(run: Path, key: str) -> list[int]:
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [row["step"] for row in lines if key in row]


def test_two_epochs_interrupted_after_one_equal_two_epochs(make_cfg, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(make_cfg(*RUN, f"paths.output_dir={whole}"))
    stop = "+callbacks.stop._target_=hooks.StopAfterEpochs"  # interrupted after epoch 1 of 2
    train(make_cfg(*RUN, f"paths.output_dir={parts}", stop, "+callbacks.stop.epochs=1"))
    train(make_cfg(*RUN, f"paths.output_dir={parts}", f"ckpt_path={parts}"))  # resumed in place
    a, b = (
        read_checkpoint(whole / "checkpoints" / "last.ckpt"),
        read_checkpoint(parts / "checkpoints" / "last.ckpt"),
    )
    assert a["global_step"] == b["global_step"] == 2 * 7
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # bit-identical on the CPU
    for key in ("train/loss", "val/nelbo"):  # curves go on without a gap or a repeated step
        assert history_steps(parts, key) == history_steps(whole, key)
    assert sorted(p.name for p in (parts / "checkpoints").glob("*.ckpt")) == sorted(
        p.name for p in (whole / "checkpoints").glob("*.ckpt")
    )


def test_a_resumed_run_can_train_longer_with_a_one_cycle_schedule(make_cfg, tmp_path):
    """The default MLP recipe's one-cycle LR spans the run; resuming with a larger
    trainer.max_epochs stretches it to the new length instead of failing."""
    run = tmp_path / "run"
    every = "trainer.log_every_n_steps=1"
    cfg = make_cfg("test=false", "trainer.max_epochs=1", "data.batch_size=64", every)
    max_lr = cfg.model.scheduler.max_lr
    train(cfg)
    first = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert first["lr_schedulers"][0]["total_steps"] == 7
    train(make_cfg("test=false", "trainer.max_epochs=3", "data.batch_size=64", every, f"ckpt_path={run}"))
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3 * 7 and last["lr_schedulers"][0]["total_steps"] == 3 * 7
    lrs = [
        json.loads(line)["train/lr"]
        for line in (run / "history.jsonl").read_text().splitlines()
        if "train/lr" in line
    ]
    assert max(lrs) <= max_lr * 1.0001 and lrs[-1] < max_lr / 10  # annealed towards 0 at the new end


def test_a_run_directory_as_ckpt_path_resumes_in_that_directory(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    argv = ["train.py", f"ckpt_path={run}", "trainer.max_epochs=4"]
    assert resume_in_run_dir(argv) == [*argv, f"hydra.run.dir={run.resolve()}"]
    for unchanged in (
        [*argv, "hydra.run.dir=/elsewhere"],
        [*argv, "train=false"],
        ["train.py", "-m", f"ckpt_path={run}"],
        ["train.py", f"ckpt_path={run}/checkpoints/last.ckpt"],
    ):
        assert resume_in_run_dir(unchanged) == unchanged


@pytest.mark.parametrize("on_device", [False, True])
def test_training_batches_resume_after_the_batches_taken(tiny_mnist, monkeypatch, on_device):
    """The train loader's state (Lightning's stateful-loader protocol, and the DataModule's
    checkpoint entry): a new loader given it yields exactly the batches that were left of
    that epoch, and the whole next epoch."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")

    def loader(state=None):
        dm = MNISTDataModule(str(tiny_mnist), batch_size=40, val_size=64, on_device=on_device)
        dm.setup("fit")
        if state is not None:
            dm.load_state_dict(state)
        return dm, dm.train_dataloader()

    dm, whole = loader()
    whole.sampler.set_epoch(1)
    batches = [y for _, y in whole]
    assert len(batches) == len(whole) == 12
    dm, first = loader()
    first.sampler.set_epoch(1)
    taken = [y for _, y in itertools.islice(first, 5)]
    state = dm.state_dict()
    assert state["train_batches"] == {
        "epoch": 1,
        "batches": 5,
        "batch_size": 40,
        "samples": 448,
        "seed": 3,
        "world_size": 1,
    }
    _, rest = loader(state)
    rest.sampler.set_epoch(1)
    resumed = [*taken, *(y for _, y in rest)]
    assert len(resumed) == len(batches) and all(map(torch.equal, resumed, batches))
    rest.sampler.set_epoch(2)  # the next epoch: from its first batch
    assert len(list(rest)) == 12
    _, other = loader(state)  # a state of epoch 1 does not shorten epoch 2
    other.sampler.set_epoch(2)
    assert len(list(other)) == 12
