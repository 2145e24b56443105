"""Objects built from config dicts that a checkpoint stores (networks, optimizer,
scheduler): only subclasses of an expected base class, with errors that name the keys."""

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from vae_lightning.errors import ConfigError

log = logging.getLogger(__name__)


def plain_config(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists, so checkpoints load with weights_only=True."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build_from_config(
    cfg: Mapping[str, Any], base: type, what: str, target_key: str | None = None, **kwargs: Any
) -> Any:
    """Construct ``cfg["_target_"]`` with the other keys plus ``kwargs``; errors name the
    keys as ``<what>.<key>`` (the target as ``target_key``, default ``<what>._target_``).

    Only subclasses of ``base`` are built: a checkpoint names its classes as strings, and
    loading one must never call an arbitrary function.
    """
    target = str(cfg.get("_target_"))
    target_key = target_key or f"{what}._target_"
    module_name, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{target_key}={target!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{target_key}={target!r} is not a {base.__module__}.{base.__name__}")
    args = {key: value for key, value in cfg.items() if not key.startswith("_")}
    try:
        return cls(**args, **kwargs)
    except (TypeError, ValueError) as err:  # "Invalid learning rate: -1", an unknown keyword ...
        if isinstance(err, ConfigError):
            raise
        keys = ", ".join(f"{what}.{key}" for key in args) or "none"
        raise ConfigError(f"{what} ({name}) rejected its settings: {err}; check {keys}") from None


def short_run_schedule(cfg: dict[str, Any], total_steps: int) -> dict[str, Any] | None:
    """A one-cycle ``model.scheduler`` config that ``total_steps`` optimizer steps can hold.

    OneCycleLR divides by the length of its warm-up (``pct_start`` x total steps, minus one),
    so a run shorter than two warm-up steps (10 steps at pct_start 0.1: ``limit_train_batches``
    smoke runs) stops with a ZeroDivisionError. Such a run warms up over two steps instead;
    a run of one or two steps cannot hold a cycle and trains at the optimizer's constant
    rate (None: no scheduler). Either way the log says so in one line. Other configs pass."""
    target = str(cfg.get("_target_", ""))
    if not target.endswith("OneCycleLR") or total_steps <= 0:
        return cfg
    pct = float(cfg.get("pct_start", 0.3))
    if pct * total_steps >= 2:
        return cfg
    if total_steps <= 2:
        log.info(
            "model.scheduler: %d steps cannot hold a one-cycle schedule; constant learning rate", total_steps
        )
        return None
    log.info(
        "model.scheduler: %d steps are too few for a warm-up of pct_start=%g; warming up over 2 steps",
        total_steps,
        pct,
    )
    return {**cfg, "pct_start": 2 / total_steps}


def stretch_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, total_steps: int) -> bool:
    """Fit a restored whole-run schedule (OneCycleLR, CosineAnnealingLR) to a run of
    ``total_steps`` optimizer steps, when a resumed run has another trainer.max_epochs: the
    schedule keeps its shape over the new length and goes on from the step it is at.
    Without this, a one-cycle schedule stops the longer run with "Tried to step N times".
    Returns whether anything changed."""
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.total_steps != total_steps:
        old = scheduler.total_steps
        for phase in scheduler._schedule_phases:  # end_step = fraction x total_steps - 1
            phase["end_step"] = (phase["end_step"] + 1) * total_steps / old - 1
        scheduler.total_steps = total_steps
        return True
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max != total_steps:
        scheduler.T_max = total_steps
        return True
    return False
