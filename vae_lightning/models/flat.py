"""The flat VAE: one Gaussian latent z with a N(0, I) prior (Kingma & Welling, 2014).

q(z|x) = N(μ(x), σ²(x)) from the encoder, z = μ + σ·ε (reparameterised), p(x|z) from the
decoder through the likelihood. The encoder and decoder are plain ``nn.Module``s named by
config dicts (``vae_lightning/networks/``: MLP, conv, ResNet), so a checkpoint rebuilds its
networks from its hyper-parameters and nothing else.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.building import build_from_config
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import build_likelihood
from vae_lightning.models.base import LatentVariableModel, Noise, Terms, standard_noise, temperatures
from vae_lightning.objectives import gaussian_kl

LOGVAR_RANGE = (-30.0, 20.0)  # σ in [3e-7, 2e4]: wide, but exp() never overflows


class FlatVAE(LatentVariableModel):
    """Encoder -> (μ, log σ²) -> z -> decoder -> p(x|z).

    Args:
        image_shape: ``(C, H, W)`` of the data.
        encoder: config of an ``nn.Module`` mapping ``(B, *image_shape)`` to
            ``(B, 2 * latent_dim)``; ``image_shape`` and ``latent_dim`` are passed in.
        decoder: config of an ``nn.Module`` mapping ``(B, latent_dim)`` to the likelihood's
            parameters; ``image_shape``, ``latent_dim`` and ``out_channels`` are passed in.
        latent_dim: size of z.
        likelihood, likelihood_sigma, likelihood_mixtures: p(x|z) (``likelihoods.py``).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        latent_dim: int = 32,
        likelihood: str = "bernoulli",
        likelihood_sigma: float | str = 0.1,
        likelihood_mixtures: int = 1,
    ):
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {latent_dim}")
        self.image_shape, self.latent_dim = tuple(int(s) for s in image_shape), int(latent_dim)
        self.likelihood = build_likelihood(
            likelihood, self.image_shape, likelihood_sigma, likelihood_mixtures
        )
        net_args = {"image_shape": self.image_shape, "latent_dim": self.latent_dim}
        self.encoder = build_from_config(encoder, nn.Module, "model.encoder", **net_args)
        out_channels = self.image_shape[0] * self.likelihood.params_per_channel
        self.decoder = build_from_config(
            decoder, nn.Module, "model.decoder", out_channels=out_channels, **net_args
        )
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(self.latent_dim), persistent=False)

    # --- q(z|x), p(x|z), p(z) -----------------------------------------------------------
    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z|x), each ``(B, latent_dim)``."""
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)  # KL in float32 under mixed precision
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x) for images ``(B, C, H, W)`` in [0, 1]: batch ``(B,)``, event ``(latent_dim,)``."""
        mu, logvar = self.posterior_params(x)
        return Independent(Normal(mu, (0.5 * logvar).exp(), validate_args=False), 1)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z) for latents ``(B, latent_dim)``: batch ``(B,)``, event ``(C, H, W)``."""
        return self.likelihood(self.decoder(z).float())  # log p(x|z) in float32 under mixed precision

    def prior(self) -> Distribution:
        """p(z) = N(0, I), event ``(latent_dim,)``."""
        return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1)

    # --- the interface ------------------------------------------------------------------
    def terms(self, x: torch.Tensor, generator: torch.Generator | None = None, report: bool = True) -> Terms:
        """One reparameterised z per image; the KL in closed form, per dimension."""
        mu, logvar = self.posterior_params(x)
        kl_per_dim = gaussian_kl(mu, logvar)  # (B, D)
        eps = torch.randn_like(mu) if generator is None else standard_noise(generator, mu.shape, mu)
        z = mu + (0.5 * logvar).exp() * eps
        recon = self.likelihood.nll(self.decoder(z).float(), x)  # (B,) −log p(x|z), float32
        return Terms(recon, kl_per_dim, [(mu, kl_per_dim)] if report else [])

    def posterior_context(self, x: torch.Tensor) -> Distribution:
        return self.encode(x)

    def log_weight_terms(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.encode(x) if context is None else context
        if generator is None:
            z = q.rsample((k,))  # (k, B, D)
        else:
            loc, scale = q.base_dist.loc, q.base_dist.scale  # (B, D)
            z = loc + scale * standard_noise(generator, (k, *loc.shape), loc)
        px = self.decode(z.flatten(0, 1))  # batch (k * B,)
        log_px = px.log_prob(x.expand(k, *x.shape).flatten(0, 1)).view(k, len(x))
        return log_px + self.prior().log_prob(z) - q.log_prob(z), log_px

    def prior_noise(self, n: int, generator: torch.Generator | None = None) -> Noise:
        return standard_noise(generator, (n, self.latent_dim), self.prior_loc)

    def decode_noise(
        self, noise: Noise, temperature: float | list[float] = 1.0
    ) -> tuple[Distribution, torch.Tensor]:
        (t,) = temperatures(temperature, 1)
        pz = self.prior()
        z = pz.mean + t * pz.stddev * noise.to(pz.mean.device)
        return self.decode(z), z

    def reconstruct(self, x: torch.Tensor) -> Distribution:
        return self.decode(self.posterior_params(x)[0])
