"""Synthetic image data on disk for the data tests and benchmarks: a CelebA in the official
layout and small image files of every kind an image folder may hold."""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CELEBA_SIZE = (178, 218)  # (width, height) of img_align_celeba


def face_like(
    rng: np.random.Generator, size: tuple[int, int] = CELEBA_SIZE, mode: str = "RGB"
) -> Image.Image:
    """A smooth photo-like picture: a colour gradient, a few ellipses and mild noise, so
    that its JPEG is about as large (~10 KB) and as slow to decode as a CelebA image."""
    w, h = size
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0, 1, h)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(w, axis=1)  # (h, w, 3)
    img = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, w), rng.integers(0, h)
        rx, ry = rng.integers(2, max(w // 2, 3), size=2)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img, np.int16) + rng.integers(-6, 7, size=(h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).convert(mode)


def make_celeba(
    data_dir: Path,
    n: int = 300,
    splits: tuple[float, float] = (0.8, 0.1),
    attributes: bool = True,
    seed: int = 0,
    unique: int | None = None,
) -> Path:
    """``data_dir/celeba/`` in the official layout with ``n`` 178x218 JPEGs: the first
    ``splits[0]`` share is train (0), the next ``splits[1]`` valid (1), the rest test (2).
    ``unique``: only so many distinct pictures, the rest copies of them (fast for large n)."""
    folder = data_dir / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        if unique is not None and i >= unique:
            shutil.copyfile(images / names[i % unique], images / name)
        else:
            face_like(rng).save(images / name, quality=90)
    n_train, n_val = int(splits[0] * n), int(splits[1] * n)
    codes = [0] * n_train + [1] * n_val + [2] * (n - n_train - n_val)
    lines = [f"{name} {code}" for name, code in zip(names, codes, strict=True)]
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    if attributes:
        header = [f"Attr_{k:02d}" for k in range(39)] + ["Smiling"]
        values = rng.choice([-1, 1], size=(n, 40))
        rows = [
            f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values, strict=True)
        ]
        (folder / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(header)}\n" + "\n".join(rows) + "\n")
    return data_dir


def make_image_tree(root: Path) -> Path:
    """A folder of every kind of file an image folder may hold: RGB and grey JPEGs of odd
    sizes and upper-case extensions, PNGs (RGBA, palette, grey), WebP and BMP in two class
    sub-folders and at the top, plus a truncated JPEG and a text file named .png (both
    undecodable), a README.txt and a hidden folder (both ignored). 24 readable images."""
    rng = np.random.default_rng(0)
    files = {
        "cats/a.jpg": ((80, 60), "RGB"),
        "cats/b.JPG": ((64, 64), "RGB"),
        "cats/c.jpeg": ((50, 90), "L"),
        "cats/d.png": ((70, 70), "RGBA"),
        "cats/e.webp": ((66, 40), "RGB"),
        "cats/f.bmp": ((40, 66), "RGB"),
        "dogs/deep/g.PNG": ((32, 48), "P"),
        "top.jpg": ((100, 100), "L"),
    }
    files.update({f"cats/x{i}.jpg": ((72, 56), "RGB") for i in range(8)})
    files.update({f"dogs/y{i}.png": ((48, 48), "L") for i in range(8)})
    for name, (size, mode) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        face_like(rng, size, "RGB").convert(mode).save(path)
    truncated = root / "dogs" / "truncated.jpg"
    face_like(rng, (80, 80)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:1500])
    (root / "cats" / "not_an_image.png").write_text("these are notes, not pixels\n")
    (root / "README.txt").write_text("my photos\n")
    (root / ".thumbnails").mkdir()
    face_like(rng, (20, 20)).save(root / ".thumbnails" / "t.png")
    return root
