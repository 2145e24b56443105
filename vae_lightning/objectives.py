"""Training objectives: small configured callables that turn per-image terms into a loss.

Terms are nats per image. Whatever the objective optimises (β, warm-up, free bits,
IWAE), the module also reports the true −ELBO (``recon + kl`` with β = 1), so runs with
different objectives stay comparable.
"""

import math

import torch

from vae_lightning.errors import ConfigError


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per latent dimension, closed form, in nats: ``(B, D)``.

    KL = ½ (μ² + σ² − 1 − log σ²).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class Objective:
    """The training loss, averaged over the batch (nats per image).

    - ``beta``: weight of the KL term (β-VAE, Higgins et al., 2017); β = 1 is the ELBO.
    - ``kl_warmup_steps``: β ramps linearly from 0 to ``beta`` over this many steps
      (Bowman et al., 2016; Sønderby et al., 2016).
    - ``free_bits``: λ nats, a floor on the batch-averaged KL of each free-bits unit,
      Σ_u max(λ, mean_batch KL_u) (Kingma et al., 2016): a latent dimension of a flat VAE,
      a latent group of a hierarchy (the model's ``Terms.kl`` columns).
    - ``iw_samples``: k > 1 trains the importance-weighted bound (IWAE, Burda et al.,
      2016), which has no β, warm-up or free bits.
    """

    def __init__(
        self, beta: float = 1.0, kl_warmup_steps: int = 0, free_bits: float = 0.0, iw_samples: int = 1
    ):
        checks = {
            "beta": (beta, beta >= 0, ">= 0"),
            "kl_warmup_steps": (kl_warmup_steps, kl_warmup_steps >= 0, ">= 0"),
            "free_bits": (free_bits, free_bits >= 0, ">= 0"),
            "iw_samples": (iw_samples, iw_samples >= 1, ">= 1"),
        }
        for key, (value, ok, rule) in checks.items():
            if not ok:
                raise ConfigError(f"model.{key} must be {rule}, got {value}")
        if iw_samples > 1 and (beta != 1 or kl_warmup_steps or free_bits):
            raise ConfigError(
                f"model.iw_samples={iw_samples} trains the IWAE bound, which has no β, KL warm-up or "
                "free bits: set model.beta=1 model.kl_warmup_steps=0 model.free_bits=0, or iw_samples=1"
            )
        self.beta, self.kl_warmup_steps = float(beta), int(kl_warmup_steps)
        self.free_bits, self.iw_samples = float(free_bits), int(iw_samples)

    def beta_at(self, step: int) -> float:
        """β after ``step`` optimiser steps (the warm-up ramp)."""
        if self.kl_warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)

    def kl_penalty(self, kl: torch.Tensor) -> torch.Tensor:
        """The KL term as optimised, batch-averaged: Σ_u max(λ, mean_b KL_bu); ``kl``: ``(B, U)``."""
        if self.free_bits > 0:
            return kl.mean(0).clamp(min=self.free_bits).sum()
        return kl.sum(1).mean()

    def elbo_loss(self, recon: torch.Tensor, kl: torch.Tensor, step: int) -> torch.Tensor:
        """β-weighted −ELBO with warm-up and free bits, averaged over the batch; ``recon``
        ``(B,)``, ``kl`` ``(B, U)`` per free-bits unit."""
        beta = self.beta_at(step)
        penalty = self.kl_penalty(kl)
        return recon.mean() + (penalty if beta == 1 else beta * penalty)  # β = 1: no op (exact)

    @staticmethod
    def iwae_loss(log_w: torch.Tensor) -> torch.Tensor:
        """−log (1/k) Σᵢ wᵢ averaged over the batch; ``log_w``: ``(k, B)``."""
        return -(torch.logsumexp(log_w, dim=0) - math.log(len(log_w))).mean()

    def __repr__(self) -> str:
        return (
            f"Objective(beta={self.beta}, kl_warmup_steps={self.kl_warmup_steps}, "
            f"free_bits={self.free_bits}, iw_samples={self.iw_samples})"
        )
