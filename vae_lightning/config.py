"""Config plumbing for ``conf/``: the ``repo_root`` resolver (registered when ``vae_lightning``
is imported), ``logger=null`` overrides and the Hydra callback that checks the run directory."""

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def binarize_for(likelihood: str) -> bool:
    """Whether pixels are binarised for ``likelihood``: a Bernoulli p(x|z) models 0/1 pixels;
    the discretised logistic and the Gaussian model the real 8-bit values."""
    return str(likelihood) == "bernoulli"


def register_resolvers() -> None:
    """``${repo_root:}``: the checkout that holds ``conf/`` (where ``logs/`` and ``data/`` go);
    ``${binarize_for:LIKELIHOOD}``: the data configs' default ``binarize``."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("binarize_for"):
        OmegaConf.register_new_resolver("binarize_for", binarize_for)


def null_group_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """``logger=null`` (any config group set to null) -> ``~logger``: Hydra 1.3 refuses a
    null override of a group that has a default, but deleting the entry means the same."""
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} if conf_dir.is_dir() else set()
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out.append(f"~{key}" if sep and value == "null" and key in groups else arg)
    return out


def resume_in_run_dir(argv: list[str]) -> list[str]:
    """``ckpt_path=<run dir>`` (training, not ``-m``) -> also ``hydra.run.dir=<run dir>``: a
    resumed run goes on in its own directory (checkpoints, history, images, W&B run)."""
    args = dict(arg.partition("=")[::2] for arg in argv[1:] if "=" in arg)
    ckpt = args.get("ckpt_path", "")
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    if not ckpt or multirun or "hydra.run.dir" in args or args.get("train", "true").lower() == "false":
        return argv
    run_dir = Path(ckpt).expanduser()
    if (run_dir / ".hydra").is_dir() and (run_dir / "checkpoints").is_dir():
        return [*argv, f"hydra.run.dir={run_dir.resolve()}"]
    return argv


class OutputDirCheck(Callback):
    """Hydra callback: create the run (or sweep) directory before anything else, so that an
    unwritable ``hydra.run.dir`` / ``paths.log_dir`` is one clear error, not a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _make_output_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _make_output_dir(config.hydra.sweep.dir, "hydra.sweep.dir")


def _make_output_dir(path: str, key: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe = Path(path) / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        print(
            f"error: cannot write the run directory {path} ({err.strerror or err}).\n"
            f"  fix: choose a writable place with paths.log_dir=/some/writable/dir (or {key}=...)",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2) from None
