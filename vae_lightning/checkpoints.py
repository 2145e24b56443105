"""Write checkpoints that survive ``kill -9``, find a trained VAE and load it safely.

Writing: ``AtomicCheckpointIO`` (temporary file + fsync + rename) for every checkpoint the
Trainer saves, and the ``Checkpoint`` callback: the best checkpoint by ``val/nelbo`` each
epoch, ``last.ckpt`` each epoch and every ``every_n_train_steps`` steps.

``ckpt_path`` may be a ``.ckpt`` file, a run directory of ``train.py`` (its best
checkpoint ``checkpoints/epoch_*.ckpt``, else ``checkpoints/last.ckpt``) or a multirun job
directory (same layout). Files are read with ``torch.load(..., weights_only=True)``, which
only rebuilds tensors and plain Python values, so a malicious pickle cannot run code; the
classes a checkpoint names must be models, ``nn.Module``s or optimizers (``building.py``).
Every way a path can be wrong becomes a ``CheckpointError`` naming the file and the fix.
"""

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from vae_lightning.errors import CheckpointError, ConfigError
from vae_lightning.system import VAE

REQUIRED_HPARAMS = ("image_shape", "optimizer")  # what every vae_lightning.VAE saves, whatever its model
FIX = (
    "  fix: point ckpt_path at a .ckpt file written by train.py, or at its run directory "
    "(logs/train/runs/<time>/ or logs/train/multiruns/<time>/<job>/)."
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same directory, flushed to disk and
    renamed over the target: a killed process leaves either the old file or the new one,
    never half of one. Loading is always ``weights_only=True``: a checkpoint carrying a
    pickled callable is refused instead of run."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed process
            stale.unlink(missing_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``every_n_train_steps`` only refreshes ``last.ckpt``.

    The best checkpoints are still chosen once per validation (``monitor``), while
    ``last.ckpt`` is also rewritten every ``every_n_train_steps`` optimizer steps, so a
    killed run loses at most that many steps (``python train.py ckpt_path=<run_dir>``).
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ConfigError(
                f"callbacks.checkpoint.every_n_train_steps must be >= 0, got {every_n_train_steps}"
            )
        self.last_every_n_train_steps = int(every_n_train_steps or 0)
        self._last_step_saved = -1  # our own record: ModelCheckpoint's would skip the epoch-end save

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        every, step = self.last_every_n_train_steps, trainer.global_step
        if every and step and step % every == 0 and step != self._last_step_saved:
            path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(path, weights_only=False)  # full state: resumable
            self._last_step_saved = step
            self.last_model_path = str(path)  # ours: the epoch-end save rewrites it, no last-v1.ckpt
            if trainer.is_global_zero:  # as ModelCheckpoint does after each of its saves
                for logger in trainer.loggers:
                    logger.after_save_checkpoint(proxy(self))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` after every epoch, improved or not: Lightning 2.6 rewrites it only
        when a best checkpoint was saved at the same step, which left a run whose last epoch
        did not improve with a stale ``last.ckpt`` (and a resume that repeated epochs)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def run_dir_of(ckpt: Path) -> Path:
    """The run directory of a checkpoint in ``<run>/checkpoints/``, else the file's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _recorded_best(folder: Path) -> Path | None:
    """The best checkpoint that ModelCheckpoint recorded in ``last.ckpt``, if it still exists."""
    last = folder / "last.ckpt"
    try:
        state = read_checkpoint(last) if last.is_file() else {}
    except CheckpointError:
        return None
    callbacks = state.get("callbacks", {}) if isinstance(state, dict) else {}
    for value in callbacks.values() if isinstance(callbacks, dict) else ():
        if isinstance(value, dict) and "best_model_path" in value:
            best = folder / Path(str(value.get("best_model_path", ""))).name
            if best.suffix == ".ckpt" and best.is_file():
                return best
    return None


def _checkpoint_in(folder: Path) -> Path | None:
    """The best checkpoint in ``folder`` (any ``*.ckpt`` but ``last*.ckpt``), else ``last.ckpt``."""
    best = sorted(p for p in folder.glob("*.ckpt") if p.is_file() and not p.name.startswith("last"))
    if len(best) == 1:
        return best[0]
    if len(best) > 1:
        recorded = _recorded_best(folder)
        if recorded is None:
            names = ", ".join(p.name for p in best)
            raise CheckpointError(
                f"{folder} holds several checkpoints ({names}) and last.ckpt does not record which is best.\n"
                f"  fix: choose one, e.g. ckpt_path={best[0]}"
            )
        return recorded
    last = folder / "last.ckpt"
    return last if last.is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file that ``path`` (file, run directory or multirun job directory) means."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"ckpt_path={path} does not exist.\n{FIX}")
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"ckpt_path={path} is neither a file nor a directory.\n{FIX}")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = _checkpoint_in(folder)
    if found is not None:
        return found
    jobs = sorted(
        (p for p in path.iterdir() if (p / "checkpoints").is_dir()), key=lambda p: (len(p.name), p.name)
    )
    if jobs:
        raise CheckpointError(
            f"{path} is a multirun directory with {len(jobs)} jobs; choose one, e.g. ckpt_path={jobs[0]}"
        )
    raise CheckpointError(f"no checkpoint in {path} (expected checkpoints/epoch_*.ckpt or last.ckpt).\n{FIX}")


def _reason(err: Exception) -> str:
    """``Type: first sentence`` of an exception (plus the next line after a heading ``...:``)."""
    lines = [line.strip() for line in str(err).strip().splitlines()]
    text = lines[0].split(". ")[0] if lines else ""  # the first sentence says it
    if text.endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for VAE:"
        text = f"{text} {lines[1].split('. ')[0]}"
    text = text if len(text) <= 300 else text[:299] + "…"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_checkpoint(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; refusals and corrupt files
    become ``CheckpointError``s."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:  # weights_only refused to import a callable: the file wanted to run code
            raise CheckpointError(
                f"refused to load {path}: it holds a pickled Python object ({found.group(1)}) that could run "
                "code when loaded; checkpoints of train.py hold only tensors and plain values.\n"
                f"  fix: use a checkpoint from a source you trust, written by train.py."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({_reason(err)}).\n{FIX}") from None
    except Exception as err:  # truncated zip, text file, directory ...: anything torch cannot read
        what = "an empty file" if path.is_file() and path.stat().st_size == 0 else _reason(err)
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({what}); it may be truncated or another kind of "
            f"file.\n{FIX}"
        ) from None


def check_vae_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    """The VAE hyper_parameters of a loaded Lightning checkpoint; an error for anything else."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} holds a {type(ckpt).__name__}, not a Lightning checkpoint of a VAE.\n{FIX}"
        )
    if "state_dict" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(
                f"{path} is a plain state_dict (tensors only): it lacks the hyper_parameters that say which "
                f"model to build.\n{FIX}"
            )
        keys = ", ".join(map(str, list(ckpt)[:6])) or "none"
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict; keys: {keys}).\n{FIX}")
    hparams = ckpt.get("hyper_parameters")
    missing = (
        [k for k in REQUIRED_HPARAMS if k not in hparams] if isinstance(hparams, dict) else REQUIRED_HPARAMS
    )
    if missing:
        raise CheckpointError(
            f"{path} is a Lightning checkpoint of another model: its hyper_parameters lack "
            f"{', '.join(missing)}, which a vae_lightning.VAE saves.\n{FIX}"
        )
    return hparams


def build_vae(ckpt: dict[str, Any], path: Path, device: torch.device | str = "cpu") -> VAE:
    """The VAE that a checked checkpoint describes, with its weights, in eval mode on ``device``."""
    try:
        model = VAE(**ckpt["hyper_parameters"])
    except Exception as err:  # a ConfigError, an unknown hyper_parameter, a bad value ...
        raise CheckpointError(
            f"{path}: the VAE its hyper_parameters describe cannot be built ({_reason(err)}); it names "
            f"classes or values that this version of vae_lightning does not build.\n{FIX}"
        ) from None
    model.on_load_checkpoint(ckpt)  # what LightningModule.load_from_checkpoint does too
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: its weights do not fit the VAE its hyper_parameters describe ({_reason(err)}).\n{FIX}"
        ) from None
    return model.to(device).eval()


def load_vae(path: Path, device: torch.device | str = "cpu") -> VAE:
    """Read, check and build the VAE of checkpoint file ``path``."""
    ckpt = read_checkpoint(path)
    check_vae_checkpoint(ckpt, path)
    return build_vae(ckpt, path, device)
