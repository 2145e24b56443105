"""Wall time until the test IW-NLL (k = 100) first reaches a target (95 nats) on
dynamically binarised MNIST: the framework's default recipe (``python train.py``, the
whole of ``train(cfg)``: validation, image panels and checkpoints included) against a
bare PyTorch loop with the plain recipe (Adam 1e-3, batch 128, the same MLP).

After every epoch both are paused and evaluated the same way: −log p(x) estimated with
k importance samples (``vae_lightning.metrics.importance_weighted_nll``, fixed noise) on
the first ``--test-images`` images of the test set, binarised once with a fixed seed.
That evaluation is not counted in either time. Usage:

    VAE_DATA_DIR=../shared/data python benchmarks/time_to_quality.py [--target 95]
        [--test-images 2000] [--bare-epochs 40] [--threads 2] [--set trainer.max_epochs=12 ...]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks")]

from bare import batches, train_steps  # noqa: E402

from vae_lightning.metrics import importance_weighted_nll  # noqa: E402
from vae_lightning.training import train  # noqa: E402


class Evaluator:
    """IW-NLL (k samples, fixed noise) of a model on fixed test images; its own time."""

    def __init__(self, images: torch.Tensor, k: int):
        self.images, self.k, self.seconds = images, k, 0.0

    @torch.no_grad()
    def __call__(self, model) -> float:
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        x = self.images.to(model.device)
        generator = torch.Generator(device=model.device).manual_seed(1)
        nll = torch.cat(
            [importance_weighted_nll(model, b, self.k, generator=generator) for b in x.split(500)]
        ).mean()
        model.train(was_training)
        self.seconds += time.perf_counter() - start
        return float(nll)


class QualityClock(L.Callback):
    """Evaluates after every training epoch (validation included before it, as a user's run
    has it), records (epoch, seconds of training so far, nll) and stops at the target."""

    evaluator: Evaluator | None = None
    target = 95.0
    history: list[tuple[int, float, float]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        QualityClock.history = []
        self._start, self.evaluator.seconds = time.perf_counter(), 0.0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        elapsed = time.perf_counter() - self._start - self.evaluator.seconds
        nll = self.evaluator(pl_module)
        QualityClock.history.append((trainer.current_epoch + 1, elapsed, nll))
        print(f"framework epoch {trainer.current_epoch + 1}: {elapsed:.1f} s, IW-NLL {nll:.2f}", flush=True)
        if nll <= self.target:
            trainer.should_stop = True


def compose_cfg(out: Path, extra: list[str]):
    overrides = [
        f"paths.log_dir={out}",
        f"paths.output_dir={out}/run",
        "test=false",
        f"+callbacks.quality._target_={QualityClock.__module__}.QualityClock",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def bare_history(cfg, images: torch.Tensor, evaluator: Evaluator, args) -> list[tuple[int, float, float]]:
    """The plain recipe: the classic ReLU MLP 512-256 (z = 32), torch.optim.Adam(lr=1e-3) as
    a user writes it, batch 128, dynamic binarisation; evaluated after every epoch."""
    L.seed_everything(cfg.seed, verbose=False)
    plain = compose_cfg(Path(cfg.paths.log_dir), ["model=vae", "model.encoder.activation=relu"])
    vae = instantiate(plain.model)  # for its encoder and decoder, and to evaluate them
    model = vae.model
    optimizer = torch.optim.Adam([*model.encoder.parameters(), *model.decoder.parameters()], lr=1e-3)
    data = batches(images, 128, True, torch.Generator().manual_seed(cfg.seed))
    steps, history, seconds = len(images) // 128, [], 0.0
    for epoch in range(1, args.bare_epochs + 1):
        start = time.perf_counter()
        train_steps(model.encoder, model.decoder, optimizer, data, steps, "bernoulli", sync_after=(steps,))
        seconds += time.perf_counter() - start
        nll = evaluator(model)
        history.append((epoch, seconds, nll))
        print(f"bare epoch {epoch}: {seconds:.1f} s, IW-NLL {nll:.2f}", flush=True)
        if nll <= args.target:
            break
    return history


def reached(history: list[tuple[int, float, float]], target: float) -> tuple[int, float] | None:
    return next(((e, s) for e, s, nll in history if nll <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=95.0, help="IW-NLL to reach, nats")
    parser.add_argument("--k", type=int, default=100, help="importance samples")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--bare-epochs", type=int, default=40, help="the bare loop's limit")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--set", nargs="*", default=[], help="overrides of the framework's recipe")
    parser.add_argument("--skip-bare", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    if "VAE_DATA_DIR" not in os.environ:
        sys.exit("set VAE_DATA_DIR to the folder holding MNIST/raw/ (real MNIST is needed here)")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(Path(tmp), args.set)
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        test = dm.splits["test"].images[: args.test_images].float() / 255  # binarised once, fixed seed
        evaluator = Evaluator(test, args.k)
        QualityClock.evaluator, QualityClock.target = evaluator, args.target
        train(cfg)
        framework = QualityClock.history
        bare = [] if args.skip_bare else bare_history(cfg, dm.splits["train"].images, evaluator, args)

    print(f"\n{args.threads} torch threads; IW-NLL k={args.k} on {args.test_images} test images")
    print(f"framework recipe overrides: {args.set or '(the defaults)'}\n")
    print("| run | epochs | seconds | IW-NLL at the end |\n|---|---:|---:|---:|")
    for name, history in (
        ("framework default recipe", framework),
        ("bare: ReLU MLP, Adam 1e-3, batch 128", bare),
    ):
        if history:
            hit = reached(history, args.target)
            epochs, seconds = hit if hit else (history[-1][0], history[-1][1])
            note = "" if hit else f" (did not reach {args.target})"
            print(f"| {name} | {epochs} | {seconds:.1f}{note} | {history[-1][2]:.2f} |")
    fw_hit, bare_hit = reached(framework, args.target), reached(bare, args.target)
    if fw_hit and bare_hit:
        print(f"\nframework / bare time to {args.target} nats: {fw_hit[1] / bare_hit[1]:.2f}")


if __name__ == "__main__":
    main()
