"""Pictures of what the model learned, during training, for any logger.

``ImagePanels`` draws, every ``every_n_epochs`` validation epochs, on a fixed validation
batch and with fixed noise (so that panels are comparable across epochs): input vs
reconstruction, prior samples, interpolations between validation images, traversals of
the most informative latent dimensions, a 2-D map of the posterior means coloured by class
(labelled data), and the decoded manifold (2-D latent space). Every panel is written to
``<run_dir>/images/<panel>/epoch_NNN.png`` and sent to the W&B and TensorBoard loggers. All
generation goes through ``vae_lightning.sampling``, like ``sample.py``. Only rank 0 draws.

Also the training-time readouts that cost per step: ``Throughput`` (images/s) and
``ProgressBar`` (a tqdm bar redrawn on a clock, not every step).
"""

import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from vae_lightning import sampling
from vae_lightning.images import encode_png, grid_uint8, to_uint8

log = logging.getLogger(__name__)


def _rgb(grid: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 1 or 3)`` -> ``(H, W, 3)``: loggers and viewers all take RGB."""
    return np.repeat(grid, 3, axis=2) if grid.shape[2] == 1 else grid


def panel_image(panel: sampling.Panel) -> np.ndarray:
    """The grid of a ``sampling.Panel`` as one uint8 RGB image ``(H, W, 3)``."""
    return _rgb(grid_uint8(to_uint8(panel.images), panel.nrow))


def latent_map(z: torch.Tensor, labels: torch.Tensor, dims: tuple[int, int]) -> np.ndarray:
    """Scatter plot of posterior means ``z[:, dims]`` coloured by ``labels``, as uint8 RGB.
    ``z`` and ``labels`` may live on any device (the model's, the data's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = z[:, list(dims)].float().numpy(force=True)  # (N, 2) in host memory, for matplotlib
    classes = labels.numpy(force=True)  # (N,)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    points = ax.scatter(xy[:, 0], xy[:, 1], c=classes, cmap="tab10", s=6, alpha=0.8)
    ax.set_xlabel(f"z[{dims[0]}]")
    ax.set_ylabel(f"z[{dims[1]}]")
    ax.set_title("posterior means E[z|x], validation images")
    if len(np.unique(classes)) <= 20:
        fig.colorbar(points, ax=ax, label="class")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="rgba", dpi=100)
    width, height = fig.canvas.get_width_height()
    plt.close(fig)
    return np.frombuffer(buffer.getvalue(), np.uint8).reshape(height, width, 4)[..., :3].copy()


class ImagePanels(L.Callback):
    """See the module docstring. ``n_images`` validation images are reconstructed (the first
    ``2 * n_pairs`` of them are interpolated in pairs, the first one is traversed along the
    ``n_dims`` highest-KL dimensions); ``n_samples`` prior samples at each of
    ``temperatures`` (panel ``prior_samples`` at the first, ``prior_samples_t<T>`` at the
    others, from the same noise); up to ``map_points`` validation images go into the latent
    map. The model drawn is the system's ``eval_model`` (the EMA weights, if any)."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_images: int = 16,
        n_samples: int = 64,
        n_pairs: int = 4,
        steps: int = 10,
        n_dims: int = 8,
        map_points: int = 2000,
        seed: int = 0,
        out_dir: str | None = None,
        temperatures: Sequence[float] = (1.0,),
    ):
        if every_n_epochs < 1 or n_images < 2 or n_samples < 1 or steps < 2 or not temperatures:
            raise ValueError(
                "callbacks.images needs every_n_epochs >= 1, n_images >= 2, n_samples >= 1, steps >= 2 "
                "and at least one temperature"
            )
        self.temperatures = [float(t) for t in temperatures]
        self.every_n_epochs, self.n_images, self.n_samples = every_n_epochs, n_images, n_samples
        self.n_pairs, self.steps, self.n_dims = n_pairs, steps, n_dims
        self.map_points, self.seed = map_points, seed
        self.out_dir = Path(out_dir) if out_dir else None
        self._x: torch.Tensor | None = None  # the fixed validation images, on the CPU
        self._labels: torch.Tensor | None = None

    def _fixed_images(self, trainer: L.Trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``map_points`` preprocessed validation images and labels (read once)."""
        if self._x is None:
            with torch.random.fork_rng(devices=[]):  # reading a batch must not shift the run's RNG
                self._x, self._labels = self._read_images(trainer, device)
        return self._x, self._labels

    def _read_images(self, trainer: L.Trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The first validation batches, preprocessed as in validation."""
        dm = trainer.datamodule
        xs, ys, count = [], [], 0
        for batch in trainer.val_dataloaders:
            images, labels = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, device, 0), 0)
            xs.append(images.cpu())
            ys.append(labels.cpu())
            count += len(images)
            if count >= max(self.map_points, self.n_images):
                break
        return torch.cat(xs), torch.cat(ys)

    def _due(self, trainer: L.Trainer) -> bool:
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING  # not trainer.validate() after the fit
        if trainer.sanity_checking or not fitting or not trainer.is_global_zero or not self._due(trainer):
            return
        if not trainer.val_dataloaders or trainer.datamodule is None:
            return
        x, labels = self._fixed_images(trainer, pl_module.device)
        with torch.no_grad():
            panels = self.draw(pl_module.eval_model, x, labels)
        folder = self.out_dir or Path(trainer.default_root_dir) / "images"
        for name, image in panels.items():
            path = folder / name / f"epoch_{trainer.current_epoch:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_png(image))
        self._send(trainer, panels)

    def draw(self, model: Any, x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        """Every panel for ``model`` (a ``models.LatentVariableModel``), as uint8 RGB images
        keyed by panel name."""
        device = sampling.model_device(model)
        batch = x[: self.n_images]
        panels = {"reconstructions": panel_image(sampling.reconstructions(model, batch))}
        for i, t in enumerate(self.temperatures):
            generator = torch.Generator(device=device).manual_seed(self.seed)  # the same noise each time
            samples = sampling.prior_samples(model, self.n_samples, generator, temperature=t)
            panels["prior_samples" if i == 0 else f"prior_samples_t{t:g}"] = panel_image(samples)
        pairs = min(self.n_pairs, len(batch) // 2)
        if pairs:
            a, b = batch[:pairs], batch[pairs : 2 * pairs]
            panels["interpolations"] = panel_image(sampling.interpolations(model, a, b, self.steps))
        order, _ = sampling.rank_latent_dims(model, batch)
        dims = order[: min(self.n_dims, model.latent_dim)]
        panels["traversals"] = panel_image(sampling.traversals(model, batch[:1], dims, self.steps))
        if labels.dim() == 1 and len(torch.unique(labels)) > 1 and model.latent_dim >= 2:  # classes
            z = sampling.posterior_means(model, x)
            pair = (0, 1) if model.latent_dim == 2 else (order[0], order[1])
            panels["latent_map"] = latent_map(z, labels, pair)
        if model.latent_dim == 2:
            panels["manifold"] = panel_image(sampling.manifold(model, steps=self.steps * 2))
        return panels

    @staticmethod
    def _send(trainer: L.Trainer, panels: dict[str, np.ndarray]) -> None:
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # all panels at one W&B step
                import wandb

                logger.log_metrics({f"images/{n}": wandb.Image(image) for n, image in panels.items()}, step)
            elif isinstance(logger, TensorBoardLogger):
                for name, image in panels.items():
                    logger.experiment.add_image(f"images/{name}", image, step, dataformats="HWC")


class Throughput(L.Callback):
    """``train/images_per_s``: training images per second of wall time, measured over the
    steps between two logging points (no device sync: queued work is counted when it
    finishes, so the average over the interval is right)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images = None, 0  # validation time is not training time

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._start is None:
            self._start = now  # the first step includes warm-up: start the clock after it
            return
        self._images += len(batch[0])
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0 and now > self._start:
            pl_module.log("train/images_per_s", self._images / (now - self._start))
            self._start, self._images = now, 0


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, redrawn at most every ``min_interval`` seconds (and
    always at the last batch of a loop), whatever the speed of a step.

    A redraw reads the bar's metrics from Lightning and writes to the terminal (which W&B
    also captures): ~3 ms on 2 CPU cores. Every 10 steps (a fixed ``refresh_rate``) that
    was 2 % of the MLP's 17 ms step, and a 0.5 s conv step would still update only every
    5 s. On the clock, the bar costs at most 3 ms per ``min_interval``.
    """

    def __init__(self, min_interval: float = 0.5, process_position: int = 0, leave: bool = False):
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        if not min_interval >= 0:
            raise ValueError(f"callbacks.progress_bar.min_interval must be >= 0 seconds, got {min_interval}")
        self.min_interval = float(min_interval)
        self._drawn = -math.inf

    @property
    def refresh_rate(self) -> int:
        """1: every batch is a candidate, the clock decides (Lightning would otherwise change
        the rate for Colab or ``TQDM_MINITERS``, and skip batches the clock chose)."""
        return 1

    def _due(self, bar: Any, n: int) -> bool:
        """Whether to redraw ``bar`` at its ``n``-th batch (and, if so, start the clock). When
        not, the bar's count still moves (no redraw), so whatever redraws it next -- the
        epoch's end, an early stop, a loop of unknown length -- shows the right count."""
        now = time.monotonic()
        last = bar.total is not None and n >= bar.total  # None: a loop of unknown length
        if not last and now - self._drawn < self.min_interval:
            bar.n = n
            return False
        self._drawn = now
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(self.train_progress_bar, batch_idx + 1):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._due(self.val_progress_bar, batch_idx + 1):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._due(self.test_progress_bar, batch_idx + 1):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
