"""The part of the VAE system that keeps a long run going and resumable, whatever the
model: the step guard (skip non-finite steps, clip by the same norm), the random state
and skip count in checkpoints, and whole-run learning-rate schedules that follow a resumed
run's length. A mixin of ``vae_lightning.system.VAE``.
"""

import logging
from pathlib import Path
from typing import Any

import torch

from vae_lightning.building import build_from_config, short_run_schedule, stretch_schedule
from vae_lightning.stability import StepGuard, TrainingDiverged, rng_state, set_rng_state

log = logging.getLogger(__name__)
UNLOGGED_ROW = "unlogged_history_row"  # a step checkpoint's own line of history.jsonl
WHOLE_RUN_KEYS = ("total_steps", "T_max")  # scheduler lengths that "auto" sets to the whole run
LEGACY_PREFIXES = ("encoder.", "decoder.", "likelihood.")  # checkpoints from before the model split


def _by_norm(algorithm: str | None) -> bool:
    """Whether Lightning's gradient clipping is by norm (``None`` means norm there)."""
    return (algorithm or "norm") == "norm"


class TrainingState:
    """Hooks of a LightningModule with ``self.model`` and ``self.hparams.scheduler``."""

    def init_guard(self, skip_grad_norm: float | None, max_skipped_steps: int) -> None:
        self.guard = StepGuard(skip_grad_norm, max_skipped_steps)
        self._resumed_rng = None
        self._step_unlogged = False  # between a training step and Lightning's logging of it

    def _logging_step(self) -> bool:
        """Whether the loggers record this step. ``self.log`` costs ~2 ms a call in Lightning
        2.6 (more than a whole MLP step on a GPU), so train scalars are only given to it then;
        Lightning's own LearningRateMonitor asks the same question."""
        trainer = self._trainer
        if trainer is None:
            return False
        return trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step (gradients set to None) when its gradient is not finite; else clip
        to ``trainer.gradient_clip_val`` with the same norm (``configure_gradient_clipping``)."""
        clip = self.trainer.gradient_clip_val if _by_norm(self.trainer.gradient_clip_algorithm) else None
        # the optimizer's parameters: self.parameters() walks every submodule (~0.5 ms a step)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        try:
            norm, _ = self.guard.check(params, self.global_step, clip)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err}.\n  {self._save_last_good_state()}") from None
        if self._logging_step():
            self.log("train/grad_norm", norm)
            self.log("train/lr", optimizer.param_groups[0]["lr"])
            self.log("train/skipped_steps", float(self.guard.skipped))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if not _by_norm(gradient_clip_algorithm):  # clipping by norm: done by the guard, which has the norm
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _save_last_good_state(self) -> str:
        """Checkpoint the weights of the last good step (skipped steps changed nothing)."""
        callback = self.trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        if folder is None:
            return "No checkpoint was written (no checkpoint callback)."
        path = folder / "last.ckpt"
        self.trainer.save_checkpoint(path, weights_only=False)
        return f"The weights of the last good step are in {path}; resume with ckpt_path={path}"

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_unlogged = True

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._step_unlogged = False  # after every callback's on_train_batch_end (checkpoints)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.guard.skipped
        checkpoint["rng_state"] = rng_state()
        if self._step_unlogged and self._logging_step():
            # a step checkpoint is written before Lightning logs its step: keep that line
            trainer = self.trainer
            values = trainer._logger_connector.metrics["log"]  # what Lightning will log next
            checkpoint[UNLOGGED_ROW] = {
                "step": int(trainer.fit_loop.epoch_loop._batches_that_stepped),
                "epoch": float(trainer.current_epoch),
                **{key: float(value) for key, value in values.items()},
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the skip count and (when training starts) the random state; checkpoints of
        the flat VAE from before the model/system split name their weights ``encoder.*``
        where they are now ``model.encoder.*``."""
        self.guard.skipped = int(checkpoint.get("skipped_steps", 0))
        self._resumed_rng = checkpoint.get("rng_state")  # applied when training goes on
        state = checkpoint.get("state_dict", {})
        if any(key.startswith(LEGACY_PREFIXES) for key in state):
            checkpoint["state_dict"] = {
                f"model.{key}" if key.startswith(LEGACY_PREFIXES) else key: value
                for key, value in state.items()
            }

    def on_train_start(self) -> None:
        """After a resume: the random state of the checkpoint's step, set just before the
        first training batch (mid-epoch too: Lightning calls no epoch-start hook then), so
        the run draws what the uninterrupted run drew. A resumed run with another
        ``trainer.max_epochs``: the restored whole-run schedule is stretched to the new
        length (``building.stretch_schedule``)."""
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None
        if not any((self.hparams.scheduler or {}).get(key) == "auto" for key in WHOLE_RUN_KEYS):
            return
        total = int(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            if stretch_schedule(config.scheduler, total):
                log.info("model.scheduler: fitted to the run's %d steps", total)

    def with_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """What ``configure_optimizers`` returns: the optimizer and ``model.scheduler``, if any,
        stepped every optimizer step (``auto`` lengths: the whole fit)."""
        if not self.hparams.scheduler:
            return optimizer
        cfg = dict(self.hparams.scheduler)
        total = self.trainer.estimated_stepping_batches  # optimizer steps of the whole fit
        for key in WHOLE_RUN_KEYS:  # OneCycleLR, CosineAnnealingLR: the whole run
            if cfg.get(key) == "auto":
                cfg[key] = int(total)
        cfg = short_run_schedule(cfg, int(cfg.get("total_steps", total)))
        if cfg is None:
            return optimizer
        scheduler = build_from_config(
            cfg, torch.optim.lr_scheduler.LRScheduler, "model.scheduler", optimizer=optimizer
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
