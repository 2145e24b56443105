"""A one-time cache of decoded images: every file decoded, centre-cropped and resized
once into a uint8 array ``(N, C, S, S)`` saved as ``.npy``, then memory-mapped by later
runs, which index whole batches of it instead of decoding JPEGs every epoch.

The cache file's name carries a hash of what it was built from (the relative file names,
their sizes and modification times, the crop, size and channels), so a changed image set
gets a new cache and an unchanged one is reused. The array is written under a temporary
name and renamed when complete; a JSON sidecar, written last, marks the cache as valid
and records the files that could not be decoded. An interrupted build therefore never
leaves a cache that looks valid. No Lightning here: numpy, PIL and a process pool.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vae_lightning.errors import DataError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the decoding below changes: old caches are then rebuilt
CHUNK = 64  # images per task sent to a worker process
MODES = {1: "L", 3: "RGB"}


def load_image(path: str | Path, size: int, channels: int = 3, crop: int | None = None) -> np.ndarray:
    """Decode one image file into uint8 ``(channels, size, size)``.

    The image is converted to RGB (``channels=3``) or grey (``channels=1``), cut to the
    centred ``crop`` x ``crop`` square (``None``, or a crop larger than the image: the
    largest centred square) and resized to ``size`` with PIL's antialiased bicubic filter.
    Raises whatever PIL raises for a file that is not a readable image.
    """
    with Image.open(path) as img:
        img = img.convert(MODES[channels])  # decodes the whole file: truncation raises here
    w, h = img.size
    side = min(crop or min(w, h), w, h)
    left, top = int(round((w - side) / 2)), int(round((h - side) / 2))
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(img, dtype=np.uint8)  # (S, S) or (S, S, 3)
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def _decode_chunk(
    root: str, names: list[str], size: int, channels: int, crop: int | None
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode ``names`` (runs in a worker process): images, and (position, reason) of the
    files that could not be decoded, whose rows stay black."""
    out = np.zeros((len(names), channels, size, size), np.uint8)
    failed = []
    for i, name in enumerate(names):
        try:
            out[i] = load_image(os.path.join(root, name), size, channels, crop)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            failed.append((i, f"{type(err).__name__}: {err}"))
    return out, failed


@dataclass(frozen=True)
class CacheContents:
    """An opened cache: ``images`` memory-mapped ``(N, C, S, S)`` uint8, row i from
    ``files[i]``; ``failed`` maps the row of each undecodable file to the reason."""

    path: Path
    images: np.ndarray
    files: list[str]
    failed: dict[int, str]


@dataclass(frozen=True)
class ImageCache:
    """The cache of ``root / name`` for each of ``files``, in that order, under ``directory``.

    ``prefix`` starts the file name (e.g. ``celeba``), so a folder of caches stays legible.
    """

    root: Path
    files: tuple[str, ...]
    directory: Path
    size: int
    channels: int = 3
    crop: int | None = None
    prefix: str = "images"

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the build parameters and of every file's name, size and mtime."""
        digest = hashlib.sha256(f"{FORMAT} {self.size} {self.channels} {self.crop}\n".encode())
        for name in self.files:
            st = os.stat(self.root / name)
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    @property
    def _stem(self) -> str:
        """The file name without the fingerprint: what the settings alone determine."""
        crop = f"crop{self.crop}" if self.crop else "square"
        return f"{self.prefix}_{crop}_{self.size}px_{MODES[self.channels].lower()}"

    @property
    def path(self) -> Path:
        return self.directory / f"{self._stem}_{self.fingerprint}.npy"

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def is_valid(self) -> bool:
        """True when a complete cache of exactly these files and settings is on disk."""
        try:
            meta = json.loads(self.sidecar.read_text())
            shape = np.load(self.path, mmap_mode="r").shape
        except (OSError, ValueError):
            return False
        return meta.get("format") == FORMAT and tuple(meta.get("shape", ())) == shape and "failed" in meta

    def open(self) -> CacheContents:
        """Memory-map a valid cache (``ensure`` it first); nothing is read until indexed."""
        if not self.is_valid():
            raise DataError(
                f"no complete image cache at {self.path}; it is built by the DataModule's "
                "prepare_data() (the Trainer calls it), so call prepare_data() before setup()."
            )
        meta = json.loads(self.sidecar.read_text())
        failed = {int(row): reason for row, _name, reason in meta["failed"]}
        return CacheContents(self.path, np.load(self.path, mmap_mode="r"), list(self.files), failed)

    def ensure(self, num_workers: int = 0, what: str = "images") -> None:
        """Build the cache unless a valid one exists."""
        if self.is_valid():
            log.info("Using the cache of %d %s: %s", len(self.files), what, self.path)
            return
        self._check_writable()
        remove_stale_partials(self.path)
        start = time.perf_counter()
        crop = f"crop {self.crop}" if self.crop else "largest square"
        log.info(
            "Caching %d %s (%s, %dx%d) in %s with %d process(es); this happens once",
            *(len(self.files), what, crop, self.size, self.size, self.path, max(num_workers, 1)),
        )
        failed = self._build(num_workers, what)
        seconds = time.perf_counter() - start
        log.info(
            "Cached %d %s in %.1f s (%.0f images/s)",
            len(self.files),
            what,
            seconds,
            len(self.files) / seconds,
        )
        meta = {"format": FORMAT, "shape": list(self._shape), "root": str(self.root), "failed": failed}
        _write_atomically(self.sidecar, json.dumps(meta, indent=1).encode())  # marks the cache valid
        self._remove_outdated()

    def _remove_outdated(self) -> None:
        """Delete caches with the same settings built from an earlier version of the files."""
        pattern = re.compile(rf"^{re.escape(self._stem)}_[0-9a-f]{{16}}\.(npy|json)$")
        for old in self.directory.glob(f"{self._stem}_*"):
            if pattern.match(old.name) and old.stem != self.path.stem:
                log.info("Removing %s: the image files changed since it was built", old)
                old.unlink(missing_ok=True)

    @property
    def _shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, self.size, self.size)

    def _check_writable(self) -> None:
        """Fail before decoding anything when the cache cannot be written."""
        nbytes = int(np.prod(self._shape))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.directory).free
            writable = os.access(self.directory, os.W_OK)
        except OSError as err:
            free, writable = 0, False
            log.debug("cache directory check failed: %s", err)
        if not writable:
            raise DataError(
                f"cannot write the image cache to {self.directory} (read-only or not creatable).\n"
                "  fix: set data.cache_dir=... to a writable folder (the images themselves are only read)."
            )
        if free < nbytes + (64 << 20):
            raise DataError(
                f"the image cache needs {nbytes / 1e9:.2f} GB but {self.directory} has "
                f"{free / 1e9:.2f} GB free.\n  fix: free some space or set data.cache_dir=... elsewhere."
            )

    def _build(self, num_workers: int, what: str) -> list[tuple[int, str, str]]:
        """Decode every file into a temporary ``.npy``, then rename it into place.
        Returns (row, name, reason) of the files that could not be decoded."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        failed: list[tuple[int, str, str]] = []
        try:
            with open(tmp, "wb") as f:
                header = {"descr": "|u1", "fortran_order": False, "shape": self._shape}
                np.lib.format.write_array_header_1_0(f, header)
                offset, row_bytes = f.tell(), int(np.prod(self._shape[1:]))
                with tqdm(total=len(self.files), desc=f"Caching {what}", unit="img", mininterval=1) as bar:
                    for start, images, bad in self._decode_all(num_workers):
                        f.seek(offset + start * row_bytes)
                        f.write(images.tobytes())
                        failed += [(start + i, self.files[start + i], reason) for i, reason in bad]
                        bar.update(len(images))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)  # only still there when the build failed
        return sorted(failed)

    def _decode_all(self, num_workers: int):
        """Yield (first row, images, failures) per chunk, in any order."""
        args = (str(self.root), self.size, self.channels, self.crop)
        starts = range(0, len(self.files), CHUNK)
        chunks = {start: list(self.files[start : start + CHUNK]) for start in starts}
        if num_workers <= 0:
            for start, names in chunks.items():
                yield start, *_decode_chunk(args[0], names, *args[1:])
            return
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            futures = {
                pool.submit(_decode_chunk, args[0], names, *args[1:]): s for s, names in chunks.items()
            }
            try:
                for future in as_completed(futures):
                    yield futures[future], *future.result()
            finally:
                for future in futures:
                    future.cancel()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_partials(path: Path) -> None:
    """Delete temporary files of earlier builds of ``path`` whose process is gone
    (killed runs); a build still running in another process keeps its file."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.tmp$")
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match and not _process_alive(int(match.group(1))):
            log.info("Removing %s, left by an interrupted cache build", candidate)
            candidate.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
