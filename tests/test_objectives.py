"""Objectives (β, warm-up, free bits, IWAE) and the importance-weighted NLL estimator."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from vae_lightning.errors import ConfigError
from vae_lightning.metrics import importance_weighted_nll
from vae_lightning.models import FlatVAE, LatentVariableModel
from vae_lightning.objectives import Objective, gaussian_kl


def test_kl_warmup_ramps_beta_linearly():
    obj = Objective(beta=4.0, kl_warmup_steps=100)
    assert [obj.beta_at(s) for s in (0, 25, 100, 500)] == [0.0, 1.0, 4.0, 4.0]
    assert Objective(beta=2.0).beta_at(0) == 2.0


def test_free_bits_floor_each_dimension_of_the_batch_mean_kl():
    mu, logvar = torch.randn(16, 6) * 0.3, torch.randn(16, 6) * 0.1
    kl = gaussian_kl(mu, logvar)
    recon = torch.rand(16) * 100
    lam = 0.5
    obj = Objective(free_bits=lam)
    direct = recon.mean().item() + sum(max(lam, kl[:, d].mean().item()) for d in range(6))
    assert obj.elbo_loss(recon, kl, step=0).item() == pytest.approx(direct, rel=1e-6)
    # without free bits: the plain β-ELBO
    assert Objective(beta=2.0).elbo_loss(recon, kl, 0).item() == pytest.approx(
        (recon + 2 * kl.sum(1)).mean().item(), rel=1e-6
    )
    # KL against torch.distributions, the floor applied to it
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    p = Independent(Normal(torch.zeros(6), torch.ones(6)), 1)
    torch.testing.assert_close(kl.sum(1), torch.distributions.kl_divergence(q, p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": -1}, "model.beta must be >= 0"),
        ({"free_bits": -0.1}, "model.free_bits must be >= 0"),
        ({"kl_warmup_steps": -5}, "model.kl_warmup_steps must be >= 0"),
        ({"iw_samples": 0}, "model.iw_samples must be >= 1"),
        ({"iw_samples": 5, "beta": 4}, "trains the IWAE bound, which has no β"),
    ],
)
def test_bad_objective_values_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Objective(**kwargs)


def test_iwae_loss_with_one_sample_is_the_negative_log_weight():
    log_w = torch.randn(1, 7)
    assert Objective.iwae_loss(log_w).item() == pytest.approx(-log_w.mean().item(), rel=1e-6)
    log_w = torch.zeros(50, 3)  # equal weights: log mean exp = 0
    assert Objective.iwae_loss(log_w).item() == pytest.approx(0.0, abs=1e-6)


class LinearGaussianVAE(LatentVariableModel):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ² I): log p(x) = log N(x; b, WWᵀ + σ² I) is known.
    q(z|x) is deliberately not the true posterior, so the ELBO has a gap to close. Its
    importance weights are the flat VAE's own code (``FlatVAE.log_weight_terms``)."""

    posterior_context = FlatVAE.posterior_context
    log_weight_terms = FlatVAE.log_weight_terms

    def __init__(self, d_x=6, d_z=3, sigma=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W, self.b, self.sigma = torch.randn(d_x, d_z, generator=g), torch.randn(d_x, generator=g), sigma
        self.post_cov = torch.linalg.inv(torch.eye(d_z) + self.W.T @ self.W / sigma**2)
        self.d_z = d_z

    def encode(self, x):
        """The true posterior's mean, shifted by 0.3, with a diagonal 1.5x too wide."""
        mean = (x - self.b) @ self.W @ self.post_cov.T / self.sigma**2 + 0.3
        std = self.post_cov.diagonal().sqrt() * 1.5
        return Independent(Normal(mean, std.expand_as(mean)), 1)

    def decode(self, z):
        return Independent(Normal(z @ self.W.T + self.b, torch.full((len(z), len(self.b)), self.sigma)), 1)

    def prior(self):
        return Independent(Normal(torch.zeros(self.d_z), torch.ones(self.d_z)), 1)

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b))
        return MultivariateNormal(self.b, cov).log_prob(x)


def test_iw_estimate_closes_the_gap_to_the_true_log_likelihood():
    model = LinearGaussianVAE()
    torch.manual_seed(0)
    x = model.decode(model.prior().sample((8,))).sample()  # data from the model itself
    true_nll = -model.log_marginal(x)
    estimates = {
        k: torch.stack([importance_weighted_nll(model, x, k) for _ in range(20)]).mean(0)
        for k in (1, 10, 5000)
    }
    gap = {k: (estimates[k] - true_nll).mean().item() for k in estimates}
    assert gap[1] > gap[10] > gap[5000] >= -0.05  # a bound that tightens with k
    assert gap[1] > 1.0, gap  # the imperfect encoder leaves a real ELBO gap
    assert abs(gap[5000]) < 0.05, gap  # k = 5000 lands within 0.05 nats of −log p(x)
    assert math.isfinite(gap[5000])
