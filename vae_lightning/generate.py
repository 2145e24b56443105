"""``generate(cfg)``: what ``sample.py`` does. Find and load the checkpoint, collect the
input images a mode needs, run that mode of ``vae_lightning.sampling``, write the files
and print their paths. Options are documented in ``conf/sample.yaml``.
"""

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vae_lightning import sampling
from vae_lightning.checkpoints import load_vae, resolve_checkpoint, run_dir_of
from vae_lightning.errors import ConfigError, UserError
from vae_lightning.images import Written, write_panel
from vae_lightning.inputs import load_inputs

DEFAULT_N = {"prior": 64, "reconstruct": 32, "interpolate": 8, "traverse": 1}  # manifold: steps x steps
DEFAULT_STEPS = {"interpolate": 10, "traverse": 9, "manifold": 20}


@dataclass(frozen=True)
class Request:
    """The options of one ``sample.py`` call, checked and as plain Python values."""

    ckpt_path: str
    mode: str
    n: int
    steps: int
    temperature: float | list[float]
    seed: int
    draw: bool
    batch_size: int
    indices: list[int] | None
    inputs: list[str] | None
    path: str
    dims: int | list[int]
    radius: float
    save_tensors: bool
    out_dir: str | None
    device: str
    data_dir: str | None


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple) else [value]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_inputs(raw: dict[str, Any]) -> tuple[list[int] | None, list[str] | None]:
    indices, inputs = _as_list(raw.get("indices")), _as_list(raw.get("inputs"))
    if indices is not None and inputs is not None:
        raise ConfigError("set either indices (test images) or inputs (image files), not both")
    if (indices is not None or inputs is not None) and raw["mode"] in ("prior", "manifold"):
        raise ConfigError(
            f"mode={raw['mode']} decodes latents only; indices and inputs are for the other modes"
        )
    if indices is not None and not all(isinstance(i, int) for i in indices):
        raise ConfigError(f"indices must be integers, got {indices}")
    return indices, inputs


def _check_numbers(raw: dict[str, Any]) -> dict[str, Any]:
    mode, dims = raw["mode"], raw["dims"]
    counts = {
        "n": raw["n"] if raw["n"] is not None else DEFAULT_N.get(mode, 1),
        "steps": raw["steps"] if raw["steps"] is not None else DEFAULT_STEPS.get(mode, 2),
        "batch_size": raw["batch_size"],
    }
    for key, value in counts.items():
        least = 2 if key == "steps" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}")
    named = isinstance(dims, list) and all(isinstance(d, int) for d in dims)
    if not (named or isinstance(dims, int) and dims >= 1):
        raise ConfigError(f"dims must be a count >= 1 or a list of latent dimensions, got {dims!r}")
    if not isinstance(raw["seed"], int):
        raise ConfigError(f"seed must be an integer, got {raw['seed']!r}")
    temperature, radius = raw["temperature"], raw["radius"]
    values = temperature if isinstance(temperature, list) and temperature else [temperature]
    if not all(_is_number(t) and t >= 0 for t in values):
        raise ConfigError(
            "temperature must be a number >= 0, or a list of them (one per latent group), "
            f"got {temperature!r}"
        )
    if not _is_number(radius) or radius <= 0:
        raise ConfigError(f"radius must be a number > 0, got {radius!r}")
    if raw["path"] not in sampling.PATHS:
        raise ConfigError(f"unknown path={raw['path']!r}; valid: {', '.join(sampling.PATHS)}")
    return counts


def read_request(cfg: DictConfig) -> Request:
    """Check ``cfg`` (composed ``conf/sample.yaml``); a ConfigError names the bad key."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError("ckpt_path is required: python sample.py ckpt_path=<checkpoint or run directory>")
    raw = OmegaConf.to_container(cfg, resolve=True)
    if raw["mode"] not in sampling.MODES:
        raise ConfigError(f"unknown mode={raw['mode']!r}; valid: {', '.join(sampling.MODES)}")
    for flag in ("draw", "save_tensors"):
        if not isinstance(raw[flag], bool):
            raise ConfigError(f"{flag} must be true or false, got {raw[flag]!r}")
    indices, inputs = _check_inputs(raw)
    counts = _check_numbers(raw)
    plain = {
        k: raw[k] for k in Request.__dataclass_fields__ if k not in counts and k not in ("indices", "inputs")
    }
    return Request(**plain, **counts, indices=indices, inputs=inputs)


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; otherwise the device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device={name!r}; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is available; use device=auto or device=cpu")
    return device


def default_out_dir(ckpt: Path, mode: str) -> Path:
    """``<run_dir>/samples/<mode>_<timestamp>/``, with a suffix if that folder exists."""
    base = run_dir_of(ckpt) / "samples" / f"{mode}_{datetime.now():%Y-%m-%d_%H-%M-%S}"
    out, k = base, 0
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}_{k}")
    return out


def _inputs(req: Request, ckpt: Path, model, count: int) -> torch.Tensor:
    x = load_inputs(ckpt, model, count, req.indices, req.inputs, req.seed, req.data_dir)
    if req.mode == "interpolate" and len(x) % 2:
        raise ConfigError(
            f"interpolate pairs its inputs (1st with 2nd, 3rd with 4th ...); got {len(x)} inputs"
        )
    return x


def _traverse_dims(req: Request, model, x: torch.Tensor) -> list[int]:
    """The dims named, or the ``dims`` most informative ones (printed with their mean KL)."""
    if isinstance(req.dims, list):
        return sampling.check_dims(req.dims, model.latent_dim)
    order, kl = sampling.rank_latent_dims(model, x, req.batch_size)
    dims = order[: req.dims]
    print("traversed dims (mean KL over the inputs, nats): " + ", ".join(f"{d} ({kl[d]:.2f})" for d in dims))
    return dims


def run_mode(req: Request, ckpt: Path, vae, generator: torch.Generator) -> sampling.Panel:
    """The images of ``req.mode``: one call into ``vae_lightning.sampling`` with the plain
    model of the ``VAE`` system (its EMA weights, if it has them)."""
    model = vae.eval_model
    common = {"generator": generator, "draw": req.draw, "batch_size": req.batch_size}
    if req.mode == "prior":
        return sampling.prior_samples(model, req.n, temperature=req.temperature, **common)
    if req.mode == "manifold":
        return sampling.manifold(model, req.steps, **common)
    x = _inputs(req, ckpt, vae, 2 * req.n if req.mode == "interpolate" else req.n)
    if req.mode == "reconstruct":
        return sampling.reconstructions(model, x, **common)
    if req.mode == "interpolate":
        return sampling.interpolations(model, x[0::2], x[1::2], req.steps, path=req.path, **common)
    dims = _traverse_dims(req, model, x)
    return sampling.traversals(model, x, dims, req.steps, req.radius, **common)


def generate(cfg: DictConfig) -> Written:
    """Run ``sample.py`` as ``cfg`` says; return the paths written (also printed)."""
    req = read_request(cfg)
    device = resolve_device(req.device)
    ckpt = resolve_checkpoint(req.ckpt_path)
    model = load_vae(ckpt, device)
    print(f"checkpoint: {ckpt} (latent_dim={model.latent_dim}, device={device})")
    start = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(req.seed)
    panel = run_mode(req, ckpt, model, generator)
    out_dir = Path(req.out_dir).expanduser() if req.out_dir else default_out_dir(ckpt, req.mode)
    tensors = {"images": panel.images, "latents": panel.latents} if req.save_tensors else None
    try:
        written = write_panel(panel.images, panel.nrow, out_dir, req.mode, tensors)
    except OSError as err:
        raise UserError(f"cannot write to out_dir={out_dir} ({err}); choose another out_dir=...") from None
    seconds = time.perf_counter() - start
    _report(written, seconds)
    return written


def _report(written: Written, seconds: float) -> None:
    images = written.images
    print(f"{len(images)} images generated and written in {seconds:.2f} s")
    print(f"grid:    {written.grid}")
    print(f"images:  {images[0]} … {images[-1].name} ({len(images)} files)")
    if written.tensors is not None:
        print(f"tensors: {written.tensors}")
