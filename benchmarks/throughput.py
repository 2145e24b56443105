"""Training images/s: the framework (``train.py``'s own ``train(cfg)``: its Trainer,
DataModule, model, callbacks and default logger, from the real config) against a bare
PyTorch loop (``bare.py``) with the identical encoder, decoder, optimizer, batch size,
dynamic binarisation and thread count.

Runs alternate A B A B ... in one process, so both see the same machine load; each run
takes ``--warmup`` steps, then times ``--steps`` more (steady state: start-up, validation
and the first steps' allocations are left out of both). The table gives every pair's
images/s and the median of the per-pair ratios framework / bare.

Cases: ``mnist-vae`` (model=vae), ``mnist-conv`` (model=conv_vae) on MNIST from
``$VAE_DATA_DIR`` (synthetic MNIST-format digits when it is not set), and ``celeba-conv``
(model=conv_vae on a synthetic 64x64 CelebA cache, Gaussian likelihood so that the bare
loop's loss is a line of code). Usage:

    VAE_DATA_DIR=../shared/data python benchmarks/throughput.py [--cases mnist-vae mnist-conv]
        [--pairs 5] [--steps 200] [--threads 2] [--set data.on_device=true ...]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

from bare import batches, train_steps  # noqa: E402
from conftest import make_mnist  # noqa: E402
from synthetic_images import make_celeba  # noqa: E402

from vae_lightning.data.device import to_device  # noqa: E402
from vae_lightning.training import train  # noqa: E402

CASES = {
    "mnist-vae": ["model=vae", "data=mnist"],
    "mnist-conv": ["model=conv_vae", "data=mnist"],
    "celeba-conv": ["model=conv_vae", "data=celeba", "model.likelihood=gaussian", "data.num_workers=0"],
}


class StepClock(L.Callback):
    """Times every framework step and, right after it, one step of the bare loop (``bare``),
    so that the two alternate step by step and see the same machine at the same moment."""

    framework: list[float] = []  # seconds per step of the latest run (read by the script)
    bare: list[float] = []
    bare_step = None  # () -> None, set by the script before each run

    def on_train_start(self, trainer, pl_module) -> None:
        StepClock.framework, StepClock.bare = [], []
        self._resumed = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        end = _now(pl_module.device)
        if self._resumed is not None:
            StepClock.framework.append(end - self._resumed)
        start = _now(pl_module.device)
        StepClock.bare_step()
        self._resumed = _now(pl_module.device)
        StepClock.bare.append(self._resumed - start)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def images_per_s(seconds: list[float], warmup: int, steps: int, batch_size: int) -> float:
    if len(seconds) < warmup + steps:
        raise RuntimeError(f"only {len(seconds)} steps ran, {warmup + steps} needed")
    return steps * batch_size / sum(seconds[warmup : warmup + steps])


def config(case: str, data_dir: Path, out: Path, args: argparse.Namespace):
    overrides = [
        *CASES[case],
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={out}",
        f"paths.output_dir={out}/run",
        "trainer.max_epochs=1",
        f"++trainer.limit_train_batches={args.warmup + args.steps + 1}",
        "++trainer.limit_val_batches=2",  # the panels at the end of the epoch: not timed
        "test=false",
        f"+callbacks.clock._target_={StepClock.__module__}.StepClock",
        *args.set,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def bare_stepper(cfg, images: torch.Tensor, device: torch.device):
    """One step of the bare loop per call: the same networks and optimizer config, built
    fresh (``bare.train_steps`` for one step)."""
    model = instantiate(cfg.model)  # only for its encoder and decoder: plain nn.Modules
    encoder, decoder = model.encoder.to(device), model.decoder.to(device)
    optimizer = instantiate(cfg.model.optimizer)([*encoder.parameters(), *decoder.parameters()])
    data = batches(
        images.to(device), cfg.data.batch_size, cfg.data.binarize, torch.Generator().manual_seed(0)
    )
    return lambda: train_steps(encoder, decoder, optimizer, data, 1, cfg.model.likelihood)


def measure_pair(cfg, images: torch.Tensor, args) -> tuple[float, float]:
    """One framework run (``train(cfg)``) with a bare step after each of its steps:
    (framework images/s, bare images/s) over the timed steps."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    StepClock.bare_step = bare_stepper(cfg, images, device)
    train(cfg)
    batch = cfg.data.batch_size
    fw = images_per_s(StepClock.framework, args.warmup, args.steps, batch)
    return fw, images_per_s(StepClock.bare, args.warmup, args.steps, batch)


def training_images(cfg) -> torch.Tensor:
    """The training split as one uint8 tensor in memory: the bare loop's data."""
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    split = dm.splits["train"]
    return to_device(split.images, split.rows, torch.device("cpu"))


def data_folder(case: str, tmp: Path, steps: int) -> Path:
    """Real MNIST from $VAE_DATA_DIR (else synthetic digits); a synthetic CelebA whose
    training split (80 %) holds ``steps`` batches of 128."""
    if case.startswith("celeba"):
        return make_celeba(tmp / "celeba_data", n=int(steps * 128 / 0.8) + 200)
    real = os.environ.get("VAE_DATA_DIR")
    return Path(real) if real else make_mnist(tmp / "mnist_data", n_train=20000, n_test=1000)


def run_case(case: str, args: argparse.Namespace, tmp: Path) -> list[tuple[float, float]]:
    data_dir = data_folder(case, tmp, args.warmup + args.steps + 1)
    cfg = config(case, data_dir, tmp / case, args)
    images = training_images(cfg)
    pairs = []
    for i in range(args.pairs):
        cfg = config(case, data_dir, tmp / case / f"pair{i}", args)
        pairs.append(measure_pair(cfg, images, args))
        print(
            f"{case} pair {i + 1}: framework {pairs[-1][0]:,.0f} images/s, bare {pairs[-1][1]:,.0f}",
            flush=True,
        )
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", default=["mnist-vae", "mnist-conv", "celeba-conv"], choices=CASES
    )
    parser.add_argument("--pairs", type=int, default=5, help="alternating framework/bare pairs")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of each run")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu"], help="cpu: ignore a GPU")
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides for the framework")
    args = parser.parse_args()
    if args.device == "cpu":
        args.set.append("trainer.accelerator=cpu")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            results[case] = run_case(case, args, Path(tmp))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print(f"\n{device}, {args.threads} torch threads, torch {torch.__version__}, lightning {L.__version__}")
    print(
        f"{args.pairs} pairs x ({args.warmup} warm-up + {args.steps} timed steps); "
        f"overrides: {args.set or '-'}\n"
    )
    print(
        "| case | framework images/s (median) | bare images/s (median) | framework / bare (median of pairs) |"
    )
    print("|---|---:|---:|---:|")
    for case, pairs in results.items():
        fw, bare = zip(*pairs, strict=True)
        ratio = statistics.median(f / b for f, b in pairs)
        print(f"| {case} | {statistics.median(fw):,.0f} | {statistics.median(bare):,.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
