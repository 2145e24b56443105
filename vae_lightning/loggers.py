"""Weights & Biases with nothing to set up.

``wandb_logger`` runs online when credentials exist (``WANDB_API_KEY`` or ``wandb login``)
and the W&B server answers; otherwise it logs offline into the run directory and says once
how to upload later (``wandb sync``). Each run — also each job of a multirun — is its own W&B
run: the job's overrides name it, the sweep's folder groups it, and its id is saved in the
run directory so that a resumed run continues the same W&B run. ``finish_wandb`` ends it
(also after an exception), so the next job of a multirun never reuses it.
"""

import logging
import netrc
import os
import re
import secrets
import socket
import string
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import WandbLogger

from vae_lightning.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
RUN_ID_FILE = "wandb_run_id"  # in the run directory
SECRET = re.compile(r"(api[_-]?key|token|secret|password)", re.IGNORECASE)
_told_offline = False


def new_run_id() -> str:
    """8 random lowercase letters and digits, like W&B's own run ids."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def has_credentials() -> bool:
    """``WANDB_API_KEY`` is set, or ``wandb login`` stored a key in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the W&B server opens within ``timeout`` seconds."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` with credentials and a reachable server, else ``offline``.
    The ``WANDB_MODE`` environment variable, when set, wins over ``auto``."""
    if mode not in MODES:
        raise ConfigError(f"unknown logger.wandb.mode={mode!r}; valid: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled", "dryrun"):
        return "offline" if os.environ["WANDB_MODE"] == "dryrun" else os.environ["WANDB_MODE"]
    return "online" if has_credentials() and server_reachable() else "offline"


def job_identity() -> tuple[str | None, str | None]:
    """(name, group) from Hydra: a multirun job is named by its overrides and grouped by
    its sweep folder; a single run is named by its run folder. (None, None) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    if hc.mode == RunMode.MULTIRUN:
        swept = swept_keys(sys.argv[1:])
        chosen = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
        name = ",".join(chosen) or hc.job.override_dirname or f"job{hc.job.num}"
        return name, Path(hc.sweep.dir).name
    return Path(hc.run.dir).name, None


def swept_keys(argv: list[str]) -> set[str]:
    """Keys that a multirun command line sweeps (``a=1,2``, ``a=range(…)``, ``a=choice(…)``)."""
    keys = set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        depth, comma = 0, False
        for char in value:  # a comma outside brackets separates sweep values
            if char in "[({":
                depth += 1
            elif char in "])}":
                depth -= 1
            elif char == "," and depth == 0:
                comma = True
        if sep and (comma or value.startswith(("range(", "choice(", "interval("))):
            keys.add(key.lstrip("+~"))
    return keys


def scrub(value: Any) -> Any:
    """A config without values whose key looks like a secret (api_key, token, password ...)."""
    if isinstance(value, dict):
        return {k: ("<hidden>" if SECRET.search(str(k)) else scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def wandb_logger(
    save_dir: str,
    project: str = "vae-lightning",
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str = "auto",
    log_model: bool = False,
) -> WandbLogger:
    """A ``WandbLogger`` writing under ``save_dir`` (the run directory); see the module doc."""
    global _told_offline
    mode = resolve_mode(mode)
    run_dir = Path(save_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / RUN_ID_FILE
    resumed = id_file.is_file()
    run_id = id_file.read_text().strip() if resumed else new_run_id()
    job_name, job_group = job_identity()
    if mode == "offline" and not _told_offline:
        _told_offline = True
        why = (
            "WANDB_MODE=offline"
            if os.environ.get("WANDB_MODE")
            else ("the W&B server cannot be reached" if has_credentials() else "no W&B credentials")
        )
        log.warning(
            "W&B logs offline (%s). Upload later with: wandb sync %s/wandb/offline-run-*  "
            "(credentials: wandb login, or WANDB_API_KEY)",
            why,
            run_dir,
        )
    logger = WandbLogger(
        save_dir=str(run_dir),
        project=project,
        entity=entity,
        name=name or job_name,
        group=group or job_group,
        tags=list(tags or []),
        mode=mode,
        id=run_id,
        resume="allow" if resumed else None,
        log_model=log_model,
    )
    if not resumed and rank_zero_only.rank == 0:
        id_file.write_text(run_id + "\n")
    return logger


def finish_wandb(loggers: list[Any], failed: bool) -> None:
    """End the W&B run of each ``WandbLogger`` (exit code 1 after an exception)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)
