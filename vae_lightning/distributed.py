"""DDP under Hydra: one run directory per run (and per multirun job), whatever the number
of processes.

Lightning starts the other DDP processes by running the script again with the original
command line plus ``hydra.run.dir=<run dir>``. Under ``-m`` that command line is the whole
sweep, so every process would start the sweep again (Lightning #11300). Instead, the other
processes here compose the job's own saved config (``<job dir>/.hydra/config.yaml``, which
Hydra writes before the job starts) with ``hydra.run.dir=<job dir>`` and no ``.hydra/`` of
their own: same config, same directory, one job.
"""

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
import lightning.pytorch.strategies.launchers.subprocess_script as trainer_launcher
import torch


def job_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command and working directory of DDP process ``local_rank`` of this Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += [
        "--config-path",
        str(job_dir / hc.output_subdir),
        "--config-name",
        "config",
        f"hydra.run.dir={job_dir}",
        "hydra.output_subdir=null",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
    ]
    return command, get_original_cwd()


def use_job_config_for_ddp_processes() -> None:
    """Make Lightning start DDP processes with ``job_child_command`` when this process runs
    inside a Hydra job that saved its config (otherwise Lightning's own command is kept)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return
    saved = Path(hc.runtime.output_dir) / (hc.output_subdir or "") / "config.yaml"
    if hc.output_subdir is not None and saved.is_file():
        for launcher in (fabric_launcher, trainer_launcher):  # each holds its own reference
            launcher._hydra_subprocess_cmd = job_child_command


def requested_devices(devices: Any) -> int | None:
    """How many devices per node ``trainer.devices`` names: an int, a list of ids or a
    comma-separated string of them; None for ``auto`` and -1 (every device there is)."""
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int):
        return devices if devices >= 0 else None
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return None


def process_count(trainer: Any) -> int:
    """How many processes ``trainer`` (the config's ``trainer`` group) starts: devices per
    node (``auto`` / -1: every GPU there is, or 1 CPU process) times ``num_nodes``."""
    per_node = requested_devices(trainer.get("devices", "auto"))
    if per_node is None:
        accelerator = str(trainer.get("accelerator", "auto")).lower()
        gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
        per_node = max(gpus, 1)
    return per_node * int(trainer.get("num_nodes", 1) or 1)


def ddp_strategy(trainer: Any) -> Any:
    """The strategy of every run with more than one process, whatever asked for it
    (``trainer.devices=N``, ``num_nodes``, ``trainer=ddp``, a SLURM allocation): DDP without
    a buffer broadcast per forward (``broadcast_buffers=False``: evaluation shards may differ
    in length, and a rank with one batch more would issue an extra collective). A strategy
    set explicitly in the config is kept; one process keeps Lightning's ``auto``."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.get("strategy", "auto")
    if strategy not in (None, "auto", "ddp") or process_count(trainer) <= 1 and strategy != "ddp":
        return strategy
    return DDPStrategy(broadcast_buffers=False)


DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK")


@contextmanager
def ddp_job() -> Iterator[None]:
    """One training job's DDP lifetime: its processes join its run directory
    (``use_job_config_for_ddp_processes``); at the end its process group is closed and the
    environment variables Lightning set to start its processes are put back, so that the
    next job of a multirun, in this same process, starts DDP afresh."""
    before = {key: os.environ.get(key) for key in DDP_ENV}
    use_job_config_for_ddp_processes()
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
