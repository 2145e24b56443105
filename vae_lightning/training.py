"""``train(cfg)``: instantiate data, model, callbacks, loggers and trainer from the
composed config, fit, test the best checkpoint, write ``metrics.json``."""

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


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


def train(cfg: DictConfig) -> float | None:
    """Train and test as ``cfg`` says; return ``val/nelbo`` of the best checkpoint (what a
    sweeper minimises), or None when there was no validation."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks, loggers = _instantiate_all(cfg.get("callbacks")), _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_numbers(trainer.callback_metrics, "val/"))
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if best and checkpoint.best_model_score is not None:
        metrics["val/nelbo"] = float(checkpoint.best_model_score)  # the model that is tested
    if cfg.get("test", True):
        test_ckpt = best or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
        metrics.update(_numbers(trainer.callback_metrics, "test/"))

    if trainer.is_global_zero:
        path = Path(cfg.paths.output_dir) / "metrics.json"
        write_json(path, metrics)
        log.info("Best checkpoint: %s", best or "(none)")
        log.info("Final metrics (nats per image) in %s:\n%s", path, json.dumps(metrics, indent=2))
    return metrics.get("val/nelbo")
