"""Training that survives non-finite steps and kill -9 (issue: reliability)."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from vae_lightning.checkpoints import AtomicCheckpointIO, check_vae_checkpoint, read_checkpoint
from vae_lightning.errors import ConfigError
from vae_lightning.stability import StepGuard, TrainingDiverged, poison_if_nonfinite
from vae_lightning.training import train

QUIET = ["test=false", "data.batch_size=32", "trainer.max_epochs=1"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_poison_leaves_a_finite_loss_bit_for_bit_and_turns_any_nonfinite_one_to_nan(bad):
    w = torch.nn.Parameter(torch.tensor([0.3, -1.7, 2.9]))
    loss = (w * torch.tensor([1.1, 0.2, 3.3])).sum()
    poisoned = poison_if_nonfinite(loss)
    poisoned.backward()
    assert torch.equal(poisoned.detach(), loss.detach())
    assert torch.equal(w.grad, torch.tensor([1.1, 0.2, 3.3]))
    w.grad = None
    poisoned = poison_if_nonfinite((w * torch.tensor([1.0, 0.0, bad])).sum())
    poisoned.backward()
    assert math.isnan(poisoned.item()) and torch.isnan(w.grad).all()


def test_poisoned_loss_makes_every_gradient_nan_and_the_guard_skips_it():
    w = torch.nn.Parameter(torch.ones(3))
    poison_if_nonfinite((w * torch.tensor([1.0, 0.0, math.inf])).sum()).backward()
    assert torch.isnan(w.grad).all()  # even the entry whose own gradient would be 0
    guard = StepGuard(max_skipped_steps=2)
    norm, skipped = guard.check([w], step=7)
    assert skipped and w.grad is None and guard.skipped == 1 and math.isnan(norm)
    w.grad = torch.full((3,), 2.0)
    norm, skipped = guard.check([w], step=8)
    assert not skipped and norm == pytest.approx(math.sqrt(12)) and guard.consecutive == 0
    limited = StepGuard(skip_grad_norm=1.0)
    w.grad = torch.full((3,), 2.0)
    assert limited.check([w], step=9)[1] and w.grad is None
    for _ in range(2):
        w.grad = torch.full((3,), math.nan)
        try:
            guard.check([w], step=10)
        except TrainingDiverged as err:
            assert "2 consecutive steps had a non-finite loss or gradient" in str(err)
    assert guard.consecutive == 2
    with pytest.raises(ConfigError, match="model.max_skipped_steps must be >= 1"):
        StepGuard(max_skipped_steps=0)
    with pytest.raises(ConfigError, match="model.skip_grad_norm must be > 0"):
        StepGuard(skip_grad_norm=-1.0)


def test_a_skip_limit_below_every_norm_stops_with_the_unit_of_the_limit():
    """A per-dimension threshold used for a per-image loss skips every step: the run stops
    with a message that names the limit, the last norm and the unit, not a silent stall."""
    w = torch.nn.Parameter(torch.zeros(3))
    guard = StepGuard(skip_grad_norm=400.0, max_skipped_steps=3)
    with pytest.raises(TrainingDiverged) as err:
        for step in range(3):
            w.grad = torch.full((3,), 1000.0)  # finite, far above the limit
            guard.check([w], step=step)
    message = str(err.value)
    assert "3 consecutive steps had a gradient norm above model.skip_grad_norm=400.0" in message
    assert "(the last: 1732)" in message and "nats per image" in message


def test_a_nan_step_is_skipped_exactly_like_a_dropped_step(make_cfg, tmp_path):
    """Same seed, same data: injecting NaN at step 3 ends with the same weights as a run
    in which step 3 ran but updated nothing; the optimizer state is not corrupted."""
    runs = {}
    for name, hook in (("nan", "InjectNonFinite"), ("reference", "DropStep")):
        out = tmp_path / name
        train(
            make_cfg(
                *QUIET,
                f"paths.output_dir={out}",
                f"+callbacks.hook._target_=hooks.{hook}",
                "+callbacks.hook.step=3",
            )
        )
        runs[name] = read_checkpoint(out / "checkpoints" / "last.ckpt")
    nan, ref = runs["nan"], runs["reference"]
    assert nan["global_step"] == ref["global_step"] > 3
    assert nan["skipped_steps"] == 1 and ref["skipped_steps"] == 0
    for key, value in ref["state_dict"].items():
        assert torch.isfinite(nan["state_dict"][key]).all(), key
        assert torch.equal(nan["state_dict"][key], value), key  # CPU, one process: bit-identical
    adam_nan, adam_ref = nan["optimizer_states"][0]["state"], ref["optimizer_states"][0]["state"]
    for index, state in adam_ref.items():
        assert torch.equal(adam_nan[index]["exp_avg_sq"], state["exp_avg_sq"])
        assert float(adam_nan[index]["step"]) == float(state["step"]) == ref["global_step"] - 1


def test_too_many_skips_stop_with_a_message_and_the_last_good_weights(make_cfg, tmp_path):
    cfg = make_cfg(
        *QUIET,
        "+callbacks.hook._target_=hooks.InjectNonFinite",
        "+callbacks.hook.step=2",
        "+callbacks.hook.forever=true",
        "model.max_skipped_steps=3",
        "callbacks.checkpoint.every_n_train_steps=1",
    )
    with pytest.raises(TrainingDiverged) as err:
        train(cfg)
    message = str(err.value)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert "training stopped at step 4: 3 consecutive steps had a non-finite loss" in message
    assert f"The weights of the last good step are in {last}" in message
    saved = read_checkpoint(last)
    check_vae_checkpoint(saved, last)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    # the steps after step 2 changed nothing: equal to what the step-2 checkpoint had
    assert saved["skipped_steps"] == 3


def test_checkpoint_write_interrupted_midway_keeps_the_old_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    before = target.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # like a kill during the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary left over
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(2))


def run_train(*overrides: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, by its path of keys."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = (
        tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    )
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def history_rows(run: Path) -> list[tuple[int, str]]:
    """(step, key) of every value in history.jsonl, in the order written; but ``epoch``,
    which Lightning adds to every line, and the wall-clock ``train/images_per_s``, which a
    (re)started process measures from its second step on."""
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    skip = ("step", "epoch", "train/images_per_s")
    return [(row["step"], key) for row in lines for key in sorted(row) if key not in skip]


def resume_overrides(data: Path, tmp_path: Path, batch_size: int, every: int) -> list[str]:
    """A 2-epoch CPU run with a step checkpoint every ``every`` steps, logging every step."""
    return [
        f"paths.data_dir={data}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "data.val_size=64",
        f"data.batch_size={batch_size}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "model.eval_iw_samples=4",
        f"callbacks.checkpoint.every_n_train_steps={every}",
        "trainer.log_every_n_steps=1",
        "logger=csv",
    ]


def test_kill_9_mid_epoch_then_resume_and_finish(tiny_mnist, tmp_path):
    """Killed mid-epoch, after a step checkpoint: the resumed run trains on exactly the
    batches that were left, with the random draws of the uninterrupted run, and ends with
    the same tensors bit for bit (weights, optimizer, EMA, schedule) and the same history."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    common = resume_overrides(tiny_mnist, tmp_path, batch_size=8, every=5)  # 56 steps per epoch
    slow = ["+callbacks.slow._target_=hooks.SlowSteps", "+callbacks.slow.seconds=0.05"]
    proc = run_train(*common, f"hydra.run.dir={run}", *slow)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not last.exists():
        proc.kill()
        pytest.fail(f"no step checkpoint within 240 s: {proc.communicate()[1][-3000:]}")
    time.sleep(random.uniform(0.1, 0.6))  # somewhere in the next steps, maybe during a save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = read_checkpoint(last)  # complete: never half a file
    check_vae_checkpoint(saved, last)
    killed_at = saved["global_step"]
    assert 5 <= killed_at < 56 and killed_at % 5 == 0  # a step checkpoint, mid-epoch
    resumed = run_train(*common, f"hydra.run.dir={run}", f"ckpt_path={run}")
    reference = run_train(*common, f"hydra.run.dir={whole}", *slow)  # uninterrupted
    for proc in (resumed, reference):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "dataloader is not resumable" not in err
    assert (run / "metrics.json").is_file()
    final, expected = read_checkpoint(last), read_checkpoint(whole / "checkpoints" / "last.ckpt")
    # it went on from the step checkpoint: 2 epochs of 56 steps in all, not 2 more epochs
    assert final["epoch"] == expected["epoch"] == 1 and final["global_step"] == 2 * 56
    ours = {key.replace(str(run), "<run>"): value for key, value in tensors(final).items()}
    theirs = {key.replace(str(whole), "<run>"): value for key, value in tensors(expected).items()}
    assert sorted(ours) == sorted(theirs) and any(k.startswith("/state_dict/") for k in ours)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key  # bit-identical on the CPU
    rows = history_rows(run)
    assert len(rows) == len(set(rows))  # no step logged twice
    assert rows == history_rows(whole)  # none missing either
    assert not list(last.parent.glob(".*.tmp"))  # a temporary of the killed save is cleaned up


def test_killed_between_a_step_checkpoint_and_its_log_line_resumes_with_the_whole_history(
    tiny_mnist, tmp_path
):
    """The worst moment: a step checkpoint is on disk, Lightning has not yet logged its step
    (it logs after every on_train_batch_end, where checkpoints are written). The resumed run
    does not train that step again, so its line comes from the checkpoint."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    common = resume_overrides(tiny_mnist, tmp_path, batch_size=32, every=4)  # 14 steps per epoch
    killed = run_train(
        *common, f"hydra.run.dir={run}", "+logger.kill._target_=hooks.KillAfterSave", "+logger.kill.step=20"
    )
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 20  # mid-epoch 2
    assert max(step for step, _ in history_rows(run)) == 18  # the line of step 19 is not written
    for proc in (
        run_train(*common, f"hydra.run.dir={run}", f"ckpt_path={run}"),
        run_train(*common, f"hydra.run.dir={whole}"),
    ):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert history_rows(run) == history_rows(whole)
    final, expected = (read_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (run, whole))
    for key, value in expected.items():
        assert torch.equal(final[key], value), key
