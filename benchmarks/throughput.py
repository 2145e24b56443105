"""Training images/s: the framework (``train.py``'s own ``train(cfg)``: its Trainer,
DataModule, model, callbacks and default logger, from the real config) against a bare
PyTorch loop (``bare.py``) with the identical encoder, decoder, optimizer, learning-rate
schedule, gradient clipping, batch size, dynamic binarisation and thread count.

Runs alternate A B A B ... in one process, so both see the same machine load; each run
takes ``--warmup`` steps, then times ``--steps`` more (steady state: start-up, validation
and the first steps' allocations are left out of both). The table gives every pair's
images/s and the median of the per-pair ratios framework / bare.

Two clocks (``--clock``): ``interleave`` (the default on CPU) runs one bare step right
after every framework step and times each step alone, so that the two see the same
machine at the same moment -- on a noisy 2-core VM run-level A/B varied by 25 %.
``window`` (the default on a GPU, where a per-step clock would add a host sync to every
step) times the ``--steps`` steps as one window, synchronising only at its two ends, for
a whole framework run and then a whole bare run. It also times the bare loop reading its
gradient norm on the host every step (``bare+sync``): what the framework's step guard does.

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
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

from bare import batches, train_steps  # noqa: E402
from conftest import make_mnist  # noqa: E402
from synthetic_images import make_celeba  # noqa: E402

from vae_lightning.data.device import to_device  # noqa: E402
from vae_lightning.training import train  # noqa: E402
from vae_lightning.training_state import WHOLE_RUN_KEYS  # noqa: E402

COLUMNS = ("framework", "bare", "bare+sync")
CASES = {
    "mnist-vae": ["model=vae", "data=mnist"],
    "mnist-conv": ["model=conv_vae", "data=mnist"],
    "celeba-conv": ["model=conv_vae", "data=celeba", "model.likelihood=gaussian", "data.num_workers=0"],
}


class StepClock(L.Callback):
    """``interleave`` (``bare_loop_for`` set): times every framework step and, right after
    it, one step of the bare loop, so that the two alternate step by step. ``window``
    (``bare_loop_for`` None): times steps ``[window[0], window[1])`` of the framework as one
    interval."""

    framework: list[float] = []  # seconds per step of the latest run (read by the script)
    bare: list[float] = []
    bare_loop_for = None  # (the run's optimizer steps) -> a function running one bare step
    window = (0, 0)

    def on_train_start(self, trainer, pl_module) -> None:
        StepClock.framework, StepClock.bare = [], []
        self._resumed = None
        loop_for = StepClock.bare_loop_for  # a bare schedule as long as the framework's run
        self._bare_step = loop_for(int(trainer.estimated_stepping_batches)) if loop_for else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._bare_step is None and batch_idx == StepClock.window[0]:  # one epoch: step = batch
            self._resumed = _now(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bare_step is None:
            if batch_idx == StepClock.window[1] - 1:
                StepClock.framework.append(_now(pl_module.device) - self._resumed)
            return
        end = _now(pl_module.device)
        if self._resumed is not None:
            StepClock.framework.append(end - self._resumed)
        start = _now(pl_module.device)
        self._bare_step()
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


def bare_loop(cfg, images: torch.Tensor, device: torch.device, total_steps: int) -> dict:
    """The bare loop's arguments of ``bare.train_steps`` (all but ``steps``): the same
    networks and optimizer config, built fresh, its endless batches, and the rest of the
    config's recipe -- clipping to ``trainer.gradient_clip_val`` and the learning-rate
    schedule over the run's ``total_steps`` -- so that both loops do the same arithmetic."""
    model = instantiate(cfg.model).model  # the flat model, only for its encoder and decoder
    encoder, decoder = model.encoder.to(device), model.decoder.to(device)
    optimizer = instantiate(cfg.model.optimizer)([*encoder.parameters(), *decoder.parameters()])
    scheduler = None
    if cfg.model.get("scheduler"):
        spec = OmegaConf.to_container(cfg.model.scheduler, resolve=True)
        spec.update({key: total_steps for key in WHOLE_RUN_KEYS if spec.get(key) == "auto"})
        scheduler = instantiate(spec, optimizer=optimizer)
    by_norm = (cfg.trainer.get("gradient_clip_algorithm") or "norm") == "norm"
    data = batches(
        images.to(device), cfg.data.batch_size, cfg.data.binarize, torch.Generator().manual_seed(0)
    )
    return {
        "encoder": encoder,
        "decoder": decoder,
        "optimizer": optimizer,
        "data": data,
        "likelihood": cfg.model.likelihood,
        "clip_norm": cfg.trainer.get("gradient_clip_val") if by_norm else None,
        "scheduler": scheduler,
    }


def bare_window(cfg, images: torch.Tensor, device: torch.device, args, read_norm: bool) -> float:
    """Seconds of steps ``[warmup, warmup + steps)`` of a fresh bare run (``read_norm``: the
    gradient norm read on the host after every step, as the framework's guard does)."""
    end = args.warmup + args.steps
    loop = bare_loop(cfg, images, device, end + 1)
    stamps = train_steps(steps=end, sync_after=(args.warmup, end), read_norm=read_norm, **loop)
    return stamps[end - 1] - stamps[args.warmup - 1]


def measure_pair(cfg, images: torch.Tensor, args) -> tuple[float, ...]:
    """(framework images/s, bare images/s[, bare+sync images/s]) over the timed steps: one
    framework run (``train(cfg)``), with a bare step after each of its steps (interleave) or
    followed by whole bare runs (window)."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    batch = cfg.data.batch_size
    if args.clock == "window":
        StepClock.bare_loop_for, StepClock.window = None, (args.warmup, args.warmup + args.steps)
        train(cfg)
        if not StepClock.framework:
            raise RuntimeError(f"the framework run ended before step {args.warmup + args.steps}")
        seconds = [StepClock.framework[0]]
        seconds += [bare_window(cfg, images, device, args, read_norm) for read_norm in (False, True)]
        return tuple(args.steps * batch / s for s in seconds)

    def bare_loop_for(total_steps: int):
        loop = bare_loop(cfg, images, device, total_steps)
        return lambda: train_steps(steps=1, **loop)

    StepClock.bare_loop_for = bare_loop_for
    train(cfg)
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
        n = int(steps * 128 / 0.8) + 200
        folder = tmp / f"celeba_data_{n}"
        if (folder / "celeba" / "list_eval_partition.txt").is_file():  # from an earlier run (--workdir)
            return folder
        return make_celeba(folder, n=n, unique=min(n, 2000))
    real = os.environ.get("VAE_DATA_DIR")
    return Path(real) if real else make_mnist(tmp / "mnist_data", n_train=20000, n_test=1000)


def run_case(case: str, args: argparse.Namespace, tmp: Path) -> list[tuple[float, float]]:
    data_dir = data_folder(case, tmp, args.warmup + args.steps + 1)
    runs = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=tmp))  # a fresh folder for this call's runs
    cfg = config(case, data_dir, runs, args)
    images = training_images(cfg)
    pairs = []
    for i in range(args.pairs):
        cfg = config(case, data_dir, runs / f"pair{i}", args)
        pairs.append(measure_pair(cfg, images, args))
        rates = ", ".join(f"{name} {v:,.0f}" for name, v in zip(COLUMNS, pairs[-1], strict=False))
        print(f"{case} pair {i + 1} (images/s): {rates}", flush=True)
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
    parser.add_argument(
        "--workdir", help="keep the synthetic data (and its CelebA cache) here for the next call"
    )
    parser.add_argument("--clock", default="auto", choices=["auto", "interleave", "window"])
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides for the framework")
    args = parser.parse_args()
    if args.device == "cpu":
        args.set.append("trainer.accelerator=cpu")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    gpu = torch.cuda.is_available() and args.device != "cpu"
    if args.clock == "auto":
        args.clock = "window" if gpu else "interleave"
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in args.cases:
            results[case] = run_case(case, args, work)
    device = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"\n{device}, {args.threads} torch threads, torch {torch.__version__}, lightning {L.__version__}")
    print(
        f"{args.pairs} pairs x ({args.warmup} warm-up + {args.steps} timed steps), {args.clock} clock; "
        f"overrides: {args.set or '-'}\n"
    )
    columns = COLUMNS[: len(next(iter(results.values()))[0])]
    print("| case | " + " | ".join(f"{c} images/s (median)" for c in columns) + " | framework / bare |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for case, pairs in results.items():
        medians = [statistics.median(column) for column in zip(*pairs, strict=True)]
        ratio = statistics.median(p[0] / p[1] for p in pairs)  # the median of the pairs' ratios
        print(f"| {case} | " + " | ".join(f"{m:,.0f}" for m in medians) + f" | {ratio:.3f} |")


if __name__ == "__main__":
    main()
