"""Images/s of prior sampling (``VAE.sample``: z ~ N(0, I), decode, the mean of p(x|z)),
the work behind ``sample.py mode=prior`` and the image panels.

The model comes from a checkpoint (``--ckpt``) or, by default, is built from the config
(``model=vae`` and ``model=conv_vae`` for MNIST; ``conv_vae`` for 64x64 RGB images):
the decoder's cost does not depend on its weights. Each batch size is timed over
``--repeats`` calls after one warm-up call. Usage:

    python benchmarks/sampling.py [--batch-sizes 64 1024] [--ckpt path/to/last.ckpt]
"""

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vae_lightning.checkpoints import load_vae

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "mnist vae (MLP)": ["model=vae"],
    "mnist conv_vae": ["model=conv_vae"],
    "64x64 RGB conv_vae": ["model=conv_vae", "data=celeba"],
}


def build(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=.", "paths.data_dir=."])
    return instantiate(cfg.model)


def images_per_s(model, n: int, repeats: int) -> float:
    generator = torch.Generator(device=model.device).manual_seed(0)
    model.sample(n, generator=generator)  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        images = model.sample(n, generator=generator)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    assert images.shape[0] == n and 0 <= images.min() and images.max() <= 1
    return n * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ckpt", help="a trained checkpoint instead of the configs' models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    models = {Path(args.ckpt).name: None} if args.ckpt else MODELS
    print(f"{args.device}, {torch.get_num_threads()} torch threads\n")
    print("| model | " + " | ".join(f"batch {n}" for n in args.batch_sizes) + " |")
    print("|---|" + "---:|" * len(args.batch_sizes))
    for name, overrides in models.items():
        model = load_vae(Path(args.ckpt)) if args.ckpt else build(overrides)
        model = model.to(args.device).eval()
        speeds = [images_per_s(model, n, args.repeats) for n in args.batch_sizes]
        print(f"| {name} | " + " | ".join(f"{s:,.0f} images/s" for s in speeds) + " |")


if __name__ == "__main__":
    main()
