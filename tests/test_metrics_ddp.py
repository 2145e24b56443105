"""Metric states reduce as sums and counts: 2 processes with uneven shards give the
single-process value (gloo on the CPU)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vae_lightning.metrics import LatentStatistics, PerImageMean

VALUES = torch.arange(10, dtype=torch.float32) ** 2  # per-image values
MU = torch.linspace(-2, 2, 40).view(10, 4) * torch.tensor([1.0, 0.01, 2.0, 0.0])
KL = torch.rand(10, 4, generator=torch.Generator().manual_seed(0))
SHARDS = [slice(0, 3), slice(3, 10)]  # uneven: 3 and 7 images


def compute(parts):
    mean, stats = PerImageMean(), LatentStatistics(4)
    for part in parts:
        mean.update(VALUES[part])
        stats.update(MU[part], KL[part])
    out = stats.compute()
    return {"mean": mean.compute(), "kl_per_dim": out["kl_per_dim"], "active": out["active_units"]}


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    result = compute([SHARDS[rank]])  # torchmetrics syncs the states across ranks in compute()
    if rank == 0:
        torch.save(result, out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_reduction_equals_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp, single = torch.load(out), compute(SHARDS)
    assert single["mean"].item() == VALUES.mean().item()  # 28.5, not the mean of shard means
    assert ddp["mean"].item() == single["mean"].item()
    torch.testing.assert_close(ddp["kl_per_dim"], single["kl_per_dim"])
    assert ddp["active"].item() == single["active"].item() == 2  # dims 0 and 2 vary enough
