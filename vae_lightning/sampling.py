"""Pure generation functions, shared by ``sample.py`` and the training-time image panels.

Each takes a plain probabilistic model (``vae_lightning.models.LatentVariableModel``: a
flat VAE, or a hierarchy whose latent tools use its top group) and a generator;
all randomness comes from that generator, so the same model, arguments and seed give the
same images. Nothing here reads or writes
files. Every mode returns a ``Panel``: CPU images ``(N, C, H, W)`` in [0, 1], the row
length of their grid, and the latents that were decoded.

The image of a latent z is the mean of p(x|z) (``draw=False``, the usual picture) or
one draw from p(x|z) (``draw=True``, what the model actually generates).
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, kl_divergence

from vae_lightning.errors import ConfigError
from vae_lightning.models.base import temperatures

MODES = ("prior", "reconstruct", "interpolate", "traverse", "manifold")
PATHS = ("lerp", "slerp")
PAIRS_PER_ROW = 8  # reconstruct: input | reconstruction pairs in one grid row


class Panel(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) float in [0, 1], on the CPU
    nrow: int  # images per grid row
    latents: torch.Tensor  # (M, latent_dim) the z that were decoded, on the CPU


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _draw(px: Distribution, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One draw from ``px`` (on ``device``). Distributions take no generator, so the global
    RNG of ``device`` is forked, seeded from ``generator`` and restored afterwards."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return px.sample()


def _images(
    px_of, batches, generator: torch.Generator | None, draw: bool, device: torch.device
) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in [0, 1], on the CPU: for each batch the mean of ``px_of(batch)``,
    or one draw from it with ``draw``."""
    if draw and generator is None:
        raise ValueError("draw=True needs a generator")
    chunks = []
    for batch in batches:
        px = px_of(batch)
        x = _draw(px, generator, device) if draw else px.mean
        chunks.append(x.clamp(0, 1).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def decode_images(
    model,
    z: torch.Tensor,
    generator: torch.Generator | None = None,
    draw: bool = False,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in [0, 1], on the CPU, of latents ``(N, latent_dim)``,
    decoded ``batch_size`` at a time: the mean of p(x|z), or one draw with ``draw``."""
    device = model_device(model)
    return _images(lambda zb: model.decode(zb.to(device)), z.split(batch_size), generator, draw, device)


@torch.no_grad()
def posterior_means(model, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """E[q(z|x)] ``(N, latent_dim)`` on the model's device, for images ``(N, C, H, W)``."""
    device = model_device(model)
    return torch.cat([model.encode(xb.to(device)).mean for xb in x.split(batch_size)])


def grid_width(n: int) -> int:
    """Columns of a near-square grid of ``n`` images."""
    return max(1, math.ceil(math.sqrt(n)))


@torch.no_grad()
def prior_samples(
    model,
    n: int,
    generator: torch.Generator,
    temperature: float | list[float] = 1.0,
    draw: bool = False,
    batch_size: int = 1024,
) -> Panel:
    """``n`` images of z drawn from the prior at ``temperature`` (a float, or one per latent
    group of a hierarchy): z = μ + T·σ·ε (N(0, T² I) for the standard prior). The noise is
    drawn for all ``n`` first, so the images do not depend on ``batch_size``;
    ``temperature=0`` decodes the prior means."""
    temperatures(temperature, model.num_groups)  # a clear error before any work
    if n < 1:
        raise ConfigError(f"prior samples need n >= 1, got n={n}")
    device, latents = model_device(model), []

    def px_of(noise):
        px, z = model.decode_noise(noise, temperature)
        latents.append(z.cpu())
        return px

    images = _images(
        px_of, model.split_noise(model.prior_noise(n, generator), batch_size), generator, draw, device
    )
    return Panel(images, grid_width(n), torch.cat(latents))


@torch.no_grad()
def reconstructions(
    model,
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    draw: bool = False,
    batch_size: int = 1024,
) -> Panel:
    """Each input beside its reconstruction, the image of p(x | ẑ) at the posterior mean(s):
    x0, r0, x1, r1, ... (2N images)."""
    device = model_device(model)
    recon = _images(lambda xb: model.reconstruct(xb.to(device)), x.split(batch_size), generator, draw, device)
    pairs = torch.stack([x.float().cpu(), recon], dim=1).flatten(0, 1)  # (2N, C, H, W)
    return Panel(pairs, 2 * min(PAIRS_PER_ROW, len(x)), posterior_means(model, x, batch_size).cpu())


def interpolate_latents(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, path: str = "lerp") -> torch.Tensor:
    """``steps`` points from each ``z_a`` to its ``z_b`` (both ends included): ``(P, steps, D)``.

    ``lerp`` is the straight line; ``slerp`` the great circle (White, 2016), which keeps
    the norm typical of Gaussian samples; it falls back to the line for (anti)parallel pairs.
    """
    if path not in PATHS:
        raise ConfigError(f"unknown path={path!r}; valid: {', '.join(PATHS)}")
    if steps < 2:
        raise ConfigError(f"steps must be >= 2 to include both ends, got {steps}")
    t = torch.linspace(0, 1, steps, device=z_a.device)[None, :, None]  # (1, S, 1)
    a, b = z_a[:, None, :], z_b[:, None, :]  # (P, 1, D)
    line = a + (b - a) * t
    if path == "lerp":
        return line
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(cos)  # (P, 1, 1) angle between the pair
    sin = torch.sin(omega)
    arc = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin.clamp_min(1e-6)
    return torch.where(sin > 1e-6, arc, line)


@torch.no_grad()
def interpolations(
    model,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    path: str = "lerp",
    draw: bool = False,
    batch_size: int = 1024,
) -> Panel:
    """One grid row per pair: ``steps`` images along ``path`` between the posterior means
    of ``x_a[i]`` and ``x_b[i]`` (the row's ends are their reconstructions)."""
    if len(x_a) != len(x_b) or len(x_a) == 0:
        raise ConfigError(f"interpolation needs pairs of inputs, got {len(x_a)} and {len(x_b)}")
    z_a, z_b = posterior_means(model, x_a, batch_size), posterior_means(model, x_b, batch_size)
    z = interpolate_latents(z_a, z_b, steps, path).flatten(0, 1)  # (P * S, D)
    return Panel(decode_images(model, z, generator, draw, batch_size), steps, z.cpu())


@torch.no_grad()
def latent_kl(model, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Mean over the images ``x`` of KL(q(z_d|x) ‖ p(z_d)) per latent dimension, ``(D,)`` nats."""
    device, total = model_device(model), None
    prior = model.prior().base_dist  # factorised: event dims are independent
    for xb in x.split(batch_size):
        kl = kl_divergence(model.encode(xb.to(device)).base_dist, prior).sum(0)  # (D,)
        total = kl if total is None else total + kl
    return total.cpu() / len(x)


def rank_latent_dims(model, x: torch.Tensor, batch_size: int = 1024) -> tuple[list[int], torch.Tensor]:
    """Latent dimensions, most informative first (highest mean KL over ``x``), and the KL."""
    kl = latent_kl(model, x, batch_size)
    order = sorted(range(len(kl)), key=lambda d: (-float(kl[d]), d))  # ties: lower index first
    return order, kl


def check_dims(dims: Sequence[int], latent_dim: int) -> list[int]:
    bad = [d for d in dims if not 0 <= int(d) < latent_dim]
    if not dims or bad:
        raise ConfigError(f"dims must name latent dimensions in 0..{latent_dim - 1}, got {list(dims)}")
    return [int(d) for d in dims]


@torch.no_grad()
def traversals(
    model,
    x: torch.Tensor,
    dims: Sequence[int],
    steps: int,
    radius: float = 3.0,
    generator: torch.Generator | None = None,
    draw: bool = False,
    batch_size: int = 1024,
) -> Panel:
    """For each input and each of ``dims``, one grid row: z_d swept over
    μ_d + linspace(-radius, radius, steps) with the other dims at the posterior mean μ."""
    dims = check_dims(dims, model.latent_dim)
    if steps < 2 or radius <= 0:
        raise ConfigError(f"traversal needs steps >= 2 and radius > 0, got steps={steps}, radius={radius}")
    mu = posterior_means(model, x, batch_size)  # (N, D)
    offsets = torch.linspace(-radius, radius, steps, device=mu.device)  # (S,)
    z = mu[:, None, None, :].repeat(1, len(dims), steps, 1)  # (N, K, S, D)
    for k, d in enumerate(dims):
        z[:, k, :, d] += offsets
    z = z.flatten(0, 2)  # (N * K * S, D)
    return Panel(decode_images(model, z, generator, draw, batch_size), steps, z.cpu())


@torch.no_grad()
def manifold(
    model,
    steps: int = 20,
    generator: torch.Generator | None = None,
    draw: bool = False,
    batch_size: int = 1024,
) -> Panel:
    """The decoded ``steps`` x ``steps`` grid over a 2-D latent space (Kingma & Welling, 2014):
    evenly spaced quantiles (i + 0.5) / steps mapped through the prior's inverse normal CDF.
    z_1 grows left to right, z_2 bottom to top."""
    if model.latent_dim != 2:
        raise ConfigError(
            f"the manifold grid needs a 2-D latent space, but this model has latent_dim={model.latent_dim}. "
            "Train one with model.latent_dim=2, or sweep chosen dimensions with mode=traverse."
        )
    if steps < 2:
        raise ConfigError(f"the manifold grid needs steps >= 2 per axis, got {steps}")
    pz = model.prior()
    q = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    values = torch.special.ndtri(q).float().to(pz.mean.device)  # (S,) inverse standard normal CDF
    rows, cols = torch.meshgrid(values.flip(0), values, indexing="ij")  # (S, S) z_2 top-down, z_1
    z = pz.mean + pz.stddev * torch.stack([cols, rows], dim=-1).flatten(0, 1)  # (S * S, 2)
    return Panel(decode_images(model, z, generator, draw, batch_size), steps, z.cpu())
