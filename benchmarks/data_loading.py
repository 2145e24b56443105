"""Images/s of the cached CelebA loader vs decoding the JPEGs every epoch.

Builds a synthetic CelebA (178x218 JPEGs of about the real files' size) in a temporary
folder, then times epochs over the training split:

- jpeg: a per-sample Dataset as in most VAE code (PIL decode, CenterCrop(148),
  Resize(64, antialiased), ToTensor) behind a DataLoader with the same workers;
- cached: ``CelebADataModule``: the uint8 cache memory-mapped and indexed a batch at a
  time, including ``preprocess`` to floats in [0, 1] (and the random flip).

One warm-up epoch runs first (workers start, the page cache fills), so the numbers are
the steady state of a long training run. The main process uses one torch thread by
default (``--threads``): on a busy machine, intra-op threads that wait for a core make a
1.5 MB uint8 -> float conversion take 20 ms instead of 2, which measures the machine's
load, not the loader; in training on a GPU that conversion runs on the device. Usage:

    python benchmarks/data_loading.py [--images 2000] [--workers 2] [--epochs 2]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from synthetic_images import make_celeba  # noqa: E402

from vae_lightning.data import CelebADataModule  # noqa: E402


class JpegDataset(Dataset):
    """One JPEG per ``__getitem__``: decode, centre crop, resize, float tensor."""

    def __init__(self, paths: list[Path], size: int, crop: int):
        self.paths = paths
        self.transform = transforms.Compose(
            [transforms.CenterCrop(crop), transforms.Resize(size, antialias=True), transforms.ToTensor()]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as img:
            return self.transform(img.convert("RGB")), 0


def images_per_second(loader: DataLoader, epochs: int, preprocess=None) -> float:
    """Steady-state throughput: one warm-up epoch, then ``epochs`` timed ones."""
    for _ in loader:
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _y in loader:
            x = preprocess(x, train=True) if preprocess else x  # (B, 3, S, S) float in [0, 1]
            count += len(x)
    return count / (time.perf_counter() - start)


def measure(dm: CelebADataModule, workers: int, epochs: int) -> list[tuple[str, float]]:
    """(loader, images/s) over the training split of a set-up DataModule."""
    paths = [dm.image_dir / dm.image_cache().files[row] for row in dm.splits["train"].rows]
    jpeg = DataLoader(
        JpegDataset(paths, dm.image_size, dm.crop),
        batch_size=dm.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    rows = [(f"JPEG decode + crop + resize every epoch ({workers} workers)", images_per_second(jpeg, epochs))]
    for n in (workers, 0):
        dm.num_workers = n
        speed = images_per_second(dm.train_dataloader(), epochs, dm.preprocess)
        rows.append((f"cached uint8 memmap, batch-indexed ({n} workers)", speed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic CelebA images")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader and cache-building processes")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the main process (workers use 1 each)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_celeba(Path(tmp), n=args.images)
        print(f"synthetic CelebA: {args.images} JPEGs in {time.perf_counter() - start:.1f} s")
        dm = CelebADataModule(
            tmp, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers
        )
        start = time.perf_counter()
        dm.prepare_data()
        build = args.images / (time.perf_counter() - start)
        dm.setup("fit")
        rows = measure(dm, args.workers, args.epochs)

    size = f"{args.image_size}x{args.image_size}"
    print(
        f"\n{len(dm.splits['train'])} training images, {size}, batch {args.batch_size}, {args.epochs} epochs"
    )
    print(f"one-time cache build: {build:,.0f} images/s ({args.workers} processes)")
    print(f"main process: {torch.get_num_threads()} torch thread(s)\n")
    print("| loader | images/s |\n|---|---:|")
    for name, speed in rows:
        print(f"| {name} | {speed:,.0f} |")
    print(f"\ncached / JPEG, same {args.workers} workers: {rows[1][1] / rows[0][1]:.1f}x")
    print(f"cached (0 workers) / JPEG ({args.workers} workers): {rows[2][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
