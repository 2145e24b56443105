"""Per data seen: train several recipes for the same number of epochs on real MNIST and
compare them on the same numbers. For each recipe: the wall time of ``train(cfg)`` (fit with
validation, panels and checkpoints; no test), val −ELBO of the best checkpoint, and on the
first ``--test-images`` test images (binarised once with the DataModule's fixed seed) the
−ELBO and the IW-NLL with k importance samples, fixed noise, of its evaluation weights
(the EMA copy where the recipe keeps one). Usage:

    VAE_DATA_DIR=../shared/data python benchmarks/compare_models.py --epochs 3 \\
        --experiments mnist_conv mnist_hvae [--k 100] [--test-images 2000] [--out DIR]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vae_lightning.checkpoints import load_vae, resolve_checkpoint
from vae_lightning.metrics import importance_weighted_nll
from vae_lightning.training import train

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def evaluate(model, images: torch.Tensor, k: int) -> tuple[float, float]:
    """(−ELBO, IW-NLL) in nats per image of a plain model on ``images``, fixed noise."""
    generator = torch.Generator().manual_seed(1)
    nelbo, nll = [], []
    for x in images.split(250):
        terms = model.terms(x, generator)
        nelbo.append(terms.recon + terms.kl.sum(1))
        nll.append(importance_weighted_nll(model, x, k, generator=generator))
    return float(torch.cat(nelbo).mean()), float(torch.cat(nll).mean())


def run(experiment: str, epochs: int, out: Path, extra: list[str]) -> dict:
    overrides = [
        f"experiment={experiment}",
        f"trainer.max_epochs={epochs}",
        "test=false",
        "logger=csv",
        f"paths.log_dir={out}",
        f"paths.output_dir={out / experiment}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / experiment / "metrics.json").read_text())
    return {"cfg": cfg, "seconds": seconds, "val/nelbo": metrics["val/nelbo"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["mnist_conv", "mnist_hvae"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--out", default="logs/compare")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every recipe")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    if "VAE_DATA_DIR" not in os.environ:
        sys.exit("set VAE_DATA_DIR to the folder holding MNIST/raw/ (real MNIST is needed here)")
    out, rows = Path(args.out), []
    for experiment in args.experiments:
        result = run(experiment, args.epochs, out, args.set)
        dm = instantiate(result["cfg"].data)
        dm.prepare_data()
        dm.setup("test")
        images = dm.splits["test"].images[: args.test_images].float() / 255  # binarised once, fixed seed
        model = load_vae(resolve_checkpoint(out / experiment)).eval_model
        nelbo, nll = evaluate(model, images, args.k)
        rows.append((experiment, result["seconds"], result["val/nelbo"], nelbo, nll))
        print(
            f"{experiment}: {result['seconds']:.0f} s, val -ELBO {result['val/nelbo']:.2f}, test -ELBO "
            f"{nelbo:.2f}, IW-NLL {nll:.2f}",
            flush=True,
        )
    print(
        f"\n{args.epochs} epochs each, {torch.get_num_threads()} torch threads; test numbers on the first "
        f"{args.test_images} test images, IW-NLL k={args.k}\n"
    )
    print(
        "| experiment | wall time (fit) | val −ELBO | test −ELBO | test IW-NLL |\n|---|---:|---:|---:|---:|"
    )
    for name, seconds, val, nelbo, nll in rows:
        print(f"| {name} | {seconds / 60:.1f} min | {val:.2f} | {nelbo:.2f} | {nll:.2f} |")


if __name__ == "__main__":
    main()
