"""The one interface every probabilistic model implements, so that the Lightning system
(``vae_lightning.system.VAE``), the metrics, the objectives and the generation functions
work with any of them: flat VAEs (one Gaussian z) and top-down hierarchies alike.

A model is a plain ``nn.Module`` (no Lightning, no Hydra) that owns its networks and its
likelihood p(x|z). Images are floats ``(B, C, H, W)`` in [0, 1]; every number is in nats
per image. What a model must provide:

- ``terms(x, generator, report)``: a one-sample −ELBO split into per-image terms (``Terms``);
- ``log_weight_terms(x, k, generator, context)``: log importance weights (k, B), the IWAE
  objective's and the IW-NLL's input; ``log_weights`` (here) chunks it over k;
- ``posterior_context(x)``: the bottom-up pass, run once for all k samples;
- ``prior_noise(n, generator)`` / ``decode_noise(noise, temperature)``: prior samples from
  noise drawn up front, so that a batch of samples does not depend on how it is split;
- ``reconstruct(x)``: p(x | ẑ) at the posterior mean(s);
- the latent tools' view, one Gaussian latent of ``latent_dim`` (flat: z; hierarchical: its
  top group): ``encode(x)`` -> q, ``decode(z)`` -> p(x|z), ``prior()`` -> p(z).
"""

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributions import Distribution

from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import Likelihood

Noise = torch.Tensor | list[torch.Tensor]  # ε of prior samples: one tensor, or one per latent group


class Terms(NamedTuple):
    """Per-image terms of a one-sample −ELBO estimate, nats per image."""

    recon: torch.Tensor  # (B,) −log p(x|z) at the sampled z
    kl: torch.Tensor  # (B, U) KL(q‖p) per free-bits unit: a latent dimension (flat) or group (hierarchy)
    groups: list[tuple[torch.Tensor, torch.Tensor]]  # per latent group: posterior mean (B, D_l) and
    # KL per latent unit (B, D_l), for statistics; empty unless asked for (``report``)


def standard_noise(generator: torch.Generator | None, shape: tuple[int, ...], like: torch.Tensor):
    """ε ~ N(0, I) of ``shape`` on ``like``'s device and dtype: from ``generator`` when one is
    given (evaluation, sampling), else from torch's global RNG (training)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return eps.to(like.device)


def temperatures(temperature: float | list[float], groups: int) -> list[float]:
    """One temperature per latent group from a float or a list (of 1 or ``groups`` values)."""
    values = list(temperature) if isinstance(temperature, list | tuple) else [temperature]
    if len(values) == 1:
        values = values * groups
    if len(values) != groups or any(not float(t) >= 0 for t in values):
        raise ConfigError(
            f"temperature must be a number >= 0 or a list of {groups} such numbers (one per latent "
            f"group), got {temperature}"
        )
    return [float(t) for t in values]


class LatentVariableModel(nn.Module):
    """Base class of the probabilistic models; subclasses set ``image_shape``,
    ``likelihood``, ``latent_dim`` and ``num_groups`` and implement the methods below."""

    image_shape: tuple[int, int, int]
    likelihood: Likelihood
    latent_dim: int  # the latent the latent tools use (flat: z; hierarchical: the top group)
    num_groups: int = 1  # latent groups (free-bits units of a hierarchy; 1 for a flat VAE)

    # --- to implement -------------------------------------------------------------------
    def terms(self, x: torch.Tensor, generator: torch.Generator | None = None, report: bool = True) -> Terms:
        raise NotImplementedError

    def posterior_context(self, x: torch.Tensor) -> Any:
        """The bottom-up pass over ``x``, shared by all importance samples."""
        raise NotImplementedError

    def log_weight_terms(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log w, log p(x|z)), each ``(k, B)``: log w = log p(x, z) − log q(z|x) for k draws
        z ~ q(z|x) per image, reparameterised (differentiable: the IWAE objective)."""
        raise NotImplementedError

    def prior_noise(self, n: int, generator: torch.Generator | None = None) -> Noise:
        raise NotImplementedError

    def decode_noise(
        self, noise: Noise, temperature: float | list[float] = 1.0
    ) -> tuple[Distribution, torch.Tensor]:
        """p(x|z) for z drawn from the prior at ``temperature`` with noise ``noise``, and the
        latent of the latent tools ``(n, latent_dim)``."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> Distribution:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> Distribution:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> Distribution:
        raise NotImplementedError

    def prior(self) -> Distribution:
        raise NotImplementedError

    def networks(self) -> list[nn.Module]:
        """The modules that ``model.compile`` compiles and ``model.channels_last`` converts."""
        return [m for m in self.children() if not isinstance(m, Likelihood)]

    # --- shared -------------------------------------------------------------------------
    @property
    def group_sizes(self) -> list[int]:
        """Latent units per group (D_l) for the statistics; a flat VAE is one group."""
        return [self.latent_dim]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def log_weights(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, max_images: int | None = None
    ) -> torch.Tensor:
        """log p(x, z) − log q(z|x) for z ~ q(z|x), ``(k, B)``. The bottom-up pass runs once;
        the k draws go through the top-down pass / decoder at most ``max_images`` images at a
        time (chunks of k), so memory stays bounded for any k."""
        if k < 1:
            raise ValueError(f"the number of importance samples must be >= 1, got {k}")
        context = self.posterior_context(x)
        chunk = k if max_images is None else max(1, max_images // len(x))
        parts = [
            self.log_weight_terms(x, min(chunk, k - s), generator, context)[0] for s in range(0, k, chunk)
        ]
        return torch.cat(parts)

    def split_noise(self, noise: Noise, size: int) -> list[Noise]:
        """``noise`` in batches of at most ``size`` samples."""
        if isinstance(noise, torch.Tensor):
            return list(noise.split(size))
        return [list(parts) for parts in zip(*(eps.split(size) for eps in noise), strict=True)]

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float | list[float] = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [0, 1]: the mean of p(x|z), z from the prior at
        ``temperature`` (a float, or one per latent group)."""
        px, _ = self.decode_noise(self.prior_noise(n, generator), temperature)
        return px.mean.clamp(0, 1)
