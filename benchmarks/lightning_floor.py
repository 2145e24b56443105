"""Lightning's own cost per training step: a LightningModule whose step does almost no
work (one 4-parameter product, fused Adam), trained by a bare ``lightning.Trainer`` --
no logger, checkpointing, progress bar or model summary, none of this project's code --
against the same step in a plain PyTorch loop. The difference is the floor under any
LightningModule's overhead on this machine: ``throughput.py``'s framework / bare ratio
cannot exceed ``step / (step + floor)``.

    python benchmarks/lightning_floor.py [--steps 1000] [--repeats 3] [--threads 2]
"""

import argparse
import statistics
import time

import lightning as L
import torch


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


class Clock(L.Callback):
    """Seconds for steps ``[warmup, warmup + steps)`` (read by the script)."""

    def __init__(self, warmup: int, steps: int):
        self.window, self.seconds = (warmup, warmup + steps), 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.window[0]:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.window[1] - 1:
            self.seconds = time.perf_counter() - self._start


def lightning_ms(batches: list[torch.Tensor], warmup: int, steps: int) -> float:
    clock = Clock(warmup, steps)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(Nearly(), torch.utils.data.DataLoader(batches, batch_size=None))
    return clock.seconds / steps * 1e3


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="alternating Lightning / bare pairs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
