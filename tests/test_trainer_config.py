"""The trainer group: Lightning's common arguments work without "+", short runs work with
every shipped schedule, and every run with more than one process gets the project's DDP."""

import json

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from vae_lightning.building import short_run_schedule
from vae_lightning.distributed import ddp_strategy, process_count
from vae_lightning.training import train


def one_cycle(total: int, pct_start: float = 0.1) -> dict | None:
    cfg = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 1e-2, "total_steps": total}
    return short_run_schedule({**cfg, "pct_start": pct_start}, total)


@pytest.mark.parametrize("total", [3, 5, 10, 19])
def test_a_run_too_short_for_the_warm_up_steps_through_a_whole_cycle(total):
    cfg = one_cycle(total)
    assert cfg["pct_start"] == pytest.approx(2 / total)  # warm-up over two steps
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, **kwargs)
    lrs = []
    for _ in range(total):  # unchanged, pct_start=0.1 raises ZeroDivisionError at 10 steps
        lrs.append(optimizer.param_groups[0]["lr"])  # the rate of this step
        optimizer.step()
        scheduler.step()
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] < 1e-4


def test_schedules_that_fit_are_left_alone():
    assert one_cycle(20)["pct_start"] == 0.1
    assert one_cycle(2) is None and one_cycle(1) is None  # no cycle in 2 steps: constant rate
    cosine = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 3}
    assert short_run_schedule(cosine, 3) is cosine


@pytest.mark.parametrize("batches", [10, 2])
def test_limit_train_batches_needs_no_plus_and_a_smoke_run_of_the_default_model_trains(
    make_cfg, tmp_path, batches
):
    cfg = make_cfg("trainer.max_epochs=1", f"trainer.limit_train_batches={batches}")
    assert cfg.model.scheduler._target_.endswith("OneCycleLR")  # the default model's schedule
    train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == batches
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/nelbo"] < 543  # below the untrained model's ~543 nats


@pytest.mark.parametrize(
    "trainer, processes",
    [
        ({"devices": 1}, 1),
        ({"devices": 4, "num_nodes": 2}, 8),
        ({"devices": "2"}, 2),
        ({"devices": [0, 1, 2]}, 3),
        ({"devices": "0,1"}, 2),
        ({"devices": "auto", "accelerator": "cpu"}, 1),
    ],
)
def test_process_count(trainer, processes):
    assert process_count(OmegaConf.create(trainer)) == processes


def test_every_run_with_several_processes_gets_the_projects_ddp():
    for trainer in (
        {"devices": 2, "accelerator": "cpu"},
        {"devices": 1, "num_nodes": 2},
        {"strategy": "ddp"},
    ):
        strategy = ddp_strategy(OmegaConf.create({"strategy": "auto", **trainer}))
        assert isinstance(strategy, DDPStrategy)
        assert strategy._ddp_kwargs == {"broadcast_buffers": False}  # no buffer sync per forward
    assert ddp_strategy(OmegaConf.create({"strategy": "auto", "devices": 1})) == "auto"
    assert ddp_strategy(OmegaConf.create({"strategy": "fsdp", "devices": 2})) == "fsdp"  # asked for
