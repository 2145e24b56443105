"""``train(cfg)``: instantiate data, model, callbacks, loggers and trainer from the
composed config, fit, test the best checkpoint, write ``metrics.json``."""

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from vae_lightning.checkpoints import (
    AtomicCheckpointIO,
    check_vae_checkpoint,
    load_vae,
    read_checkpoint,
    resolve_checkpoint,
)
from vae_lightning.config import binarize_for
from vae_lightning.distributed import ddp_job, ddp_strategy, requested_devices
from vae_lightning.errors import ConfigError
from vae_lightning.loggers import finish_wandb, scrub
from vae_lightning.report import MetricHistory, write_report
from vae_lightning.training_state import UNLOGGED_ROW

log = logging.getLogger(__name__)


class _DropAdvertisements(logging.Filter):
    """Lightning prints a tip about a cloud logger at every Trainer start: noise in our logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertisements())


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every entry with a ``_target_`` in a config group such as ``callbacks`` or ``logger``."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def write_json(path: Path, values: dict[str, float]) -> None:
    """Write ``values`` to ``path`` atomically: a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _numbers(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if key.startswith(prefix)}


def check_devices(trainer: DictConfig) -> None:
    """A clear error when ``trainer.devices`` / ``trainer.accelerator`` ask for GPUs that
    this machine does not have (instead of Lightning's, or of silently running N CPU
    processes because ``accelerator=auto`` found no GPU)."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    wanted = requested_devices(trainer.get("devices", "auto"))  # None: all there are
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False).\n  fix: trainer=cpu, or trainer.accelerator=auto"
        )
    if accelerator in ("gpu", "cuda", "auto") and wanted is not None and wanted > max(gpus, 1):
        have = f"only {gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "no GPU"
        raise ConfigError(
            f"trainer.devices={wanted} asks for {wanted} devices, but this machine has {have}.\n"
            f"  fix: trainer.devices={max(gpus, 1)}, or trainer.accelerator=cpu trainer.devices={wanted} "
            f"to run DDP over {wanted} CPU processes"
        )


def build_trainer(config: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """The Trainer of ``config`` (the ``trainer`` group) with the project's DDP settings for
    more than one process; a value Lightning refuses is one clear error."""
    try:
        return instantiate(
            config,
            callbacks=callbacks,
            logger=loggers,
            plugins=[AtomicCheckpointIO()],
            strategy=ddp_strategy(config),
        )
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, MisconfigurationException | ValueError | TypeError):
            raise ConfigError(
                f"Lightning's Trainer refused the trainer settings: {cause}\n"
                "  fix: check the trainer.* values (conf/trainer/default.yaml lists them with "
                "their defaults; Lightning's Trainer documentation says what each accepts)"
            ) from None
        raise


def instantiate_data(data: DictConfig, likelihood: str) -> Any:
    """The DataModule of ``data`` for a model with this ``likelihood``: binarised pixels for
    a Bernoulli p(x|z), the real 8-bit values otherwise (``data.binarize`` follows the
    likelihood, also the one of an evaluated checkpoint); an explicit ``data.binarize=true``
    for another likelihood is an error, since its numbers (bits/dim) would mean nothing."""
    if OmegaConf.is_interpolation(data, "binarize"):  # the default: ${binarize_for:...}
        return instantiate(data, binarize=binarize_for(likelihood))
    if data.get("binarize") and not binarize_for(likelihood):
        raise ConfigError(
            f"data.binarize=true turns the pixels into 0/1, but model.likelihood={likelihood} models "
            "8-bit values: its log-likelihood and bits/dim on binary data mean nothing.\n"
            "  fix: leave data.binarize out (it follows the likelihood), or use model.likelihood=bernoulli"
        )
    return instantiate(data)


def resume_checkpoint(path: str) -> tuple[str, int, dict[str, float] | None]:
    """The file to resume from: ``path`` itself, or a run directory's ``checkpoints/last.ckpt``;
    checked to be a VAE checkpoint (a clear error) before Lightning reads it. Also its global
    step and the history line it carries (``UNLOGGED_ROW``), not the whole checkpoint: the
    fit would hold a second copy of the weights."""
    last = Path(path).expanduser() / "checkpoints" / "last.ckpt"
    file = last if last.is_file() else resolve_checkpoint(path)
    checkpoint = read_checkpoint(file)
    check_vae_checkpoint(checkpoint, file)
    return str(file), int(checkpoint.get("global_step", 0)), checkpoint.get(UNLOGGED_ROW)


def train(cfg: DictConfig) -> float | None:
    """Train and test as ``cfg`` says; return ``val/nelbo`` of the best checkpoint (what a
    sweeper minimises), or None when there was no validation. ``train=false`` evaluates the
    model of ``ckpt_path`` (built from its own hyper-parameters). Every run ends its W&B run
    and writes ``report.png``, also when it fails."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    fit, ckpt_path = cfg.get("train", True), cfg.get("ckpt_path")
    if not fit and not ckpt_path:
        raise ConfigError("train=false evaluates a trained model: give ckpt_path=<checkpoint or run dir>")
    check_devices(cfg.trainer)
    model = instantiate(cfg.model) if fit else load_vae(resolve_checkpoint(ckpt_path))
    datamodule = instantiate_data(cfg.data, model.model.likelihood.name)
    callbacks, loggers = _instantiate_all(cfg.get("callbacks")), _instantiate_all(cfg.get("logger"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    run_dir = Path(cfg.paths.output_dir)
    for logger in loggers:  # the whole composed config, without secrets
        logger.log_hyperparams(scrub(OmegaConf.to_container(cfg, resolve=True)))
    trainer = build_trainer(cfg.trainer, callbacks, [*loggers, MetricHistory(str(run_dir))])
    failed = True
    try:
        with ddp_job():  # DDP processes join this run (and multirun job) directory
            metrics = _fit_and_test(cfg, trainer, model, datamodule, fit, ckpt_path)
        failed = False
    finally:
        finish_wandb(loggers, failed)
        if trainer.is_global_zero:
            _write_report(run_dir)
    return metrics.get("val/nelbo")


def _fit_and_test(cfg, trainer, model, datamodule, fit: bool, ckpt_path: str | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    best = ""
    if fit:
        resume = None
        if ckpt_path:
            resume, step, unlogged = resume_checkpoint(ckpt_path)
            for logger in trainer.loggers:  # the resumed run logs from the checkpoint's step on
                if isinstance(logger, MetricHistory):
                    logger.resume_at(step, unlogged)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        metrics.update(_numbers(trainer.callback_metrics, "val/"))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:  # every val/* number of the checkpoint that is tested, not of the last epoch
        loggers, trainer.loggers = trainer.loggers, []  # not a new point on the curves
        trainer.validate(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        trainer.loggers = loggers
        metrics.update(_numbers(trainer.callback_metrics, "val/"))
    if cfg.get("test", True):
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(_numbers(trainer.callback_metrics, "test/"))
    if trainer.is_global_zero:
        path = Path(cfg.paths.output_dir) / "metrics.json"
        write_json(path, metrics)
        log.info("Best checkpoint: %s", best or "(none)")
        summary = {k: v for k, v in metrics.items() if "/kl_per_dim/" not in k}  # 2 x latent_dim more
        per_dim = len(metrics) - len(summary)
        log.info(
            "Final metrics (nats per image) in %s%s:\n%s",
            path,
            f" (also {per_dim} */kl_per_dim/* entries)" if per_dim else "",
            json.dumps(summary, indent=2),
        )
    return metrics


def _write_report(run_dir: Path) -> None:
    """report.png; a failure to draw it is a warning, never the run's error."""
    try:
        log.info("Report: %s", write_report(run_dir))
    except Exception as err:  # matplotlib missing, disk full ...
        log.warning("could not write %s/report.png: %s", run_dir, err)
