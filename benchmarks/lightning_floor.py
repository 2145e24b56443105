"""Lightning's own cost per training step, and the ceiling it puts on ``throughput.py``.

1. The floor: a LightningModule whose step does almost no work (one 4-parameter product,
   fused Adam), trained by a bare ``lightning.Trainer`` -- no logger, checkpointing,
   progress bar or model summary, none of this project's code -- against the same step in
   a plain PyTorch loop. The difference is Lightning's own cost per step.
2. The ceiling (``--ceiling``): the bare loop's own step for ``model=vae`` on MNIST (the
   same networks, loss, optimizer, schedule, clipping and batches as ``throughput.py``'s
   bare loop) inside a minimal LightningModule, with automatic and with manual
   optimization, against the bare loop, one step of each in turn (``throughput.py``'s
   interleave clock). No LightningModule around that model can beat this ratio here.

    python benchmarks/lightning_floor.py [--steps 1000] [--repeats 3] [--threads 2]
    VAE_DATA_DIR=../shared/data python benchmarks/lightning_floor.py --ceiling [--repeats 5]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks")]

from bare import clip, negative_elbo, train_steps  # noqa: E402
from throughput import CASES, StepClock, bare_loop, data_folder, images_per_s, training_images  # noqa: E402


class Nearly(L.LightningModule):
    """A training step of (almost) nothing: forward, backward and a fused Adam update of
    four parameters."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))

    def training_step(self, batch, batch_idx):
        return (self.w * batch).sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)


def bare_trainer() -> L.Trainer:
    """A ``lightning.Trainer`` for one epoch on the CPU with nothing but ``throughput``'s
    ``StepClock``: no logger, checkpointing, progress bar or model summary."""
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepClock()],
    )


def lightning_ms(batches: list[torch.Tensor], warmup: int, steps: int) -> float:
    StepClock.bare_loop_for, StepClock.window = None, (warmup, warmup + steps)  # window clock
    bare_trainer().fit(Nearly(), torch.utils.data.DataLoader(batches, batch_size=None))
    return StepClock.framework[0] / steps * 1e3


def bare_ms(batches: list[torch.Tensor], warmup: int, steps: int) -> float:
    model = Nearly()
    optimizer = model.configure_optimizers()
    for i, batch in enumerate(batches[: warmup + steps]):
        if i == warmup:
            start = time.perf_counter()
        loss = model.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


class MinimalVAE(L.LightningModule):
    """The bare loop's step (``bare.negative_elbo``, its networks, optimizer and schedule)
    as a LightningModule, and nothing more: no guard, metrics, logging or callbacks."""

    def __init__(self, loop: dict, manual: bool):
        super().__init__()
        self.encoder, self.decoder, self.loop = loop["encoder"], loop["decoder"], loop
        self.automatic_optimization = not manual

    def training_step(self, images, batch_idx):
        x = torch.bernoulli(images.float().div_(255))
        loss = negative_elbo(self.encoder, self.decoder, x, "bernoulli").mean()
        if self.automatic_optimization:
            return loss  # clipped in configure_gradient_clipping
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.configure_gradient_clipping(optimizer)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """As the bare loop clips (``bare.clip``; Lightning's own always rescales)."""
        if self.loop["clip_norm"] is not None:
            clip([p for group in optimizer.param_groups for p in group["params"]], self.loop["clip_norm"])

    def configure_optimizers(self):
        if self.loop["scheduler"] is None:
            return self.loop["optimizer"]
        schedule = {"scheduler": self.loop["scheduler"], "interval": "step"}
        return {"optimizer": self.loop["optimizer"], "lr_scheduler": schedule}


class Batches:
    """``n`` shuffled uint8 training batches: ``bare.batches`` before its float step."""

    def __init__(self, images: torch.Tensor, n: int, batch_size: int):
        self.images, self.n, self.batch_size = images, n, batch_size

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(1))
        b = self.batch_size
        return (self.images[order[i * b : (i + 1) * b]] for i in range(self.n))


def ceiling_ratio(cfg, images: torch.Tensor, manual: bool, warmup: int, steps: int) -> float:
    """Images/s of the minimal LightningModule / the bare loop over steps [warmup, warmup + steps)."""
    total, cpu, batch = warmup + steps + 1, torch.device("cpu"), cfg.data.batch_size

    def bare_loop_for(run_steps: int):  # StepClock's interleave clock: a bare step after each
        loop = bare_loop(cfg, images, cpu, run_steps)
        return lambda: train_steps(steps=1, **loop)

    StepClock.bare_loop_for = bare_loop_for
    bare_trainer().fit(MinimalVAE(bare_loop(cfg, images, cpu, total), manual), Batches(images, total, batch))
    lightning = images_per_s(StepClock.framework, warmup, steps, batch)
    return lightning / images_per_s(StepClock.bare, warmup, steps, batch)


def ceiling(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*CASES["mnist-vae"], f"paths.data_dir={data_folder('mnist-vae', Path(tmp), 0)}"]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        images = training_images(cfg)
        rows = []
        for i in range(args.repeats):
            rows.append([ceiling_ratio(cfg, images, m, args.warmup, args.steps) for m in (False, True)])
            print(f"repeat {i + 1}: automatic {rows[-1][0]:.3f}, manual {rows[-1][1]:.3f}", flush=True)
    print(f"\n{args.threads} torch threads, torch {torch.__version__}, lightning {L.__version__}")
    print(f"model=vae on MNIST, batch 128, {args.warmup} warm-up + {args.steps} timed steps, interleaved\n")
    print("| minimal LightningModule | images/s vs the bare loop (median) | runs |")
    print("|---|---:|---:|")
    names = ("automatic optimization", "manual optimization")
    for name, column in zip(names, zip(*rows, strict=True), strict=True):
        print(f"| {name} | {statistics.median(column):.3f} | {', '.join(f'{r:.3f}' for r in column)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="timed steps (default: 1000; --ceiling: 200)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 100; --ceiling: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating Lightning / bare pairs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ceiling", action="store_true", help="the ceiling on model=vae (see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ceiling:  # shorter defaults: an MLP step takes 14 ms, the floor's step 0.3 ms
        args.warmup, args.steps = args.warmup or 20, args.steps or 200
        return ceiling(args)
    args.warmup, args.steps = args.warmup or 100, args.steps or 1000
    batches = [torch.ones(4)] * (args.warmup + args.steps)
    pairs = [
        (lightning_ms(batches, args.warmup, args.steps), bare_ms(batches, args.warmup, args.steps))
        for _ in range(args.repeats)
    ]
    print(f"\n{args.threads} torch threads, torch {torch.__version__}, lightning {L.__version__}")
    print("| run | Lightning ms/step | bare ms/step | Lightning's own cost, ms/step |")
    print("|---|---:|---:|---:|")
    for i, (lit, bare) in enumerate(pairs, 1):
        print(f"| {i} | {lit:.3f} | {bare:.3f} | {lit - bare:.3f} |")
    median = statistics.median(lit - bare for lit, bare in pairs)
    print(f"\nmedian: {median:.3f} ms per step")


if __name__ == "__main__":
    main()
