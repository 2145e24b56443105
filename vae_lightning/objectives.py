"""Training objectives: small configured callables that turn per-image terms into a loss.

All terms are nats per image, shape ``(B,)``; the batch mean is taken by the caller.
Whatever the objective optimises, the module also reports the true −ELBO
(``recon + kl`` with β = 1), so runs with different objectives stay comparable.
"""

import torch

from vae_lightning.errors import ConfigError


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per latent dimension, closed form, in nats: ``(B, D)``.

    KL = ½ (μ² + σ² − 1 − log σ²).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class ELBO:
    """β-weighted negative ELBO per image: −log p(x|z) + β · KL(q(z|x) ‖ p(z)).

    β = 1 is the evidence lower bound of Kingma & Welling (2014); β > 1 is the β-VAE of
    Higgins et al. (2017), which trades reconstruction for a more factorised posterior.
    """

    def __init__(self, beta: float = 1.0):
        if not beta >= 0:
            raise ConfigError(f"model.beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, recon: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        return recon + self.beta * kl

    def __repr__(self) -> str:
        return f"ELBO(beta={self.beta})"
