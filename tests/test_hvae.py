"""Tests of the VDVAE-style hierarchical VAE (``vae_lightning.models.hierarchical``) and of
the importance-weighted estimator it feeds (``LatentVariableModel.log_weights``), the
latter against a linear-Gaussian hierarchy whose log p(x) is known in closed form."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence
from torch.utils.flop_counter import FlopCounterMode

from vae_lightning.errors import ConfigError
from vae_lightning.models.base import LatentVariableModel, standard_noise
from vae_lightning.models.hierarchical import HierarchicalVAE, gaussian_kl

TINY = dict(width=8, latent_channels=2, encoder_blocks="28x1,14x1,7x1,1x1", decoder_blocks="1x1,7x2,14x1")


def tiny(seed: int = 0, **overrides) -> HierarchicalVAE:
    torch.manual_seed(seed)
    return HierarchicalVAE((1, 28, 28), **{**TINY, **overrides})


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` binary 28x28 images, one filled rectangle each: structure a VAE can learn."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    corners = torch.randint(2, 16, (n, 2), generator=g)
    sizes = torch.randint(6, 12, (n, 2), generator=g)
    for i, ((r, c), (h, w)) in enumerate(zip(corners.tolist(), sizes.tolist(), strict=True)):
        x[i, 0, r : r + h, c : c + w] = 1
    return x


def perturb(model: torch.nn.Module, scale: float = 0.2, seed: int = 1) -> None:
    """Random weights everywhere, so that the priors are no longer N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nll_estimate(log_w: torch.Tensor) -> torch.Tensor:
    """−log (1/k) Σ_i w_i per image, from log w (k, B)."""
    return -(torch.logsumexp(log_w, 0) - math.log(len(log_w)))


@torch.no_grad()
def test_shapes():
    model, x = tiny(), binary_images(5)
    t = model.terms(x, gen(0))
    assert t.recon.shape == (5,) and t.kl.shape == (5, 4) and model.num_groups == 4
    dims = [2 * 1, 2 * 49, 2 * 49, 2 * 196]  # latent_channels * R² per group
    assert [(m.shape, k.shape) for m, k in t.groups] == [((5, d), (5, d)) for d in dims]
    assert model.terms(x, report=False).groups == []
    assert torch.allclose(t.kl.sum(1), sum(k.sum(1) for _, k in t.groups))
    assert model.latent_dim == 2
    assert model.encode(x).batch_shape == (5,) and model.encode(x).event_shape == (2,)
    assert model.prior().event_shape == (2,)
    assert model.decode(torch.randn(3, 2)).event_shape == (1, 28, 28)
    assert model.reconstruct(x).batch_shape == (5,)
    samples = model.sample(6, generator=gen(0))
    assert samples.shape == (6, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    noise = model.prior_noise(6, gen(0))
    assert [e.shape for e in noise] == [(6, 2, 1, 1), (6, 2, 7, 7), (6, 2, 7, 7), (6, 2, 14, 14)]
    px, z_top = model.decode_noise(noise)
    assert z_top.shape == (6, 2) and px.batch_shape == (6,)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 28, 28\)"):
        model.terms(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        model.decode(torch.randn(3, 5))


def test_flops_can_be_counted_in_eval():
    """FlopCounterMode's module hooks fail on a parameter's expand() under no_grad."""
    model, x = tiny(), binary_images(2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.terms(x)
        model.encode(x)
    assert counter.get_total_flops() > 0


def test_gaussian_kl_matches_torch():
    q = Normal(torch.randn(100), torch.rand(100) + 0.1)
    p = Normal(torch.randn(100), torch.rand(100) + 0.1)
    assert torch.allclose(gaussian_kl(q.loc, q.scale, p.loc, p.scale), kl_divergence(q, p), atol=1e-5)


@torch.no_grad()
def test_priors_start_standard_and_kl_matches_torch():
    model, x = tiny(), binary_images(6)
    for block in model.decoder.groups:  # the zero-initialised prior net: N(0, I), no state update
        mean, std, delta, *_ = block(torch.randn(3, 8, block.resolution, block.resolution))
        assert mean.abs().max() == 0 and delta.abs().max() == 0
        assert torch.allclose(std, torch.ones_like(std), atol=1e-6)
    for perturbed in (False, True):
        if perturbed:
            perturb(model)
            assert model.prior().base_dist.scale.sub(1).abs().max() > 0.01
        expected = kl_divergence(model.encode(x), model.prior())  # the top group, independently
        assert torch.allclose(model.terms(x, gen(0)).kl[:, 0], expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_log_weights_match_terms():
    model, x = tiny(), binary_images(4)
    perturb(model)
    t = model.terms(x, gen(3))
    log_w, log_px = model.log_weight_terms(x, 1, gen(3))
    assert log_w.shape == log_px.shape == (1, 4)
    assert torch.allclose(log_px[0], -t.recon, rtol=1e-6, atol=1e-4)  # the same draws
    # E[log w] = E[−(recon + Σ KL)]; with common draws (terms on x repeated k times draws
    # the same ε as k importance samples) the difference Σ_l log p/q + KL_l has mean 0
    k = 256
    log_w, _ = model.log_weight_terms(x, k, gen(4))
    t = model.terms(x.repeat(k, 1, 1, 1), gen(4))
    diff = log_w.flatten() + t.recon + t.kl.sum(1)  # (k * B,)
    stderr = diff.std() / math.sqrt(len(diff))
    assert diff.std() > 1  # the test has something to average
    assert diff.mean().abs() < 4 * stderr, (diff.mean(), stderr)


@torch.no_grad()
def test_importance_weighting_tightens_and_chunks():
    model, x = tiny(), binary_images(8)
    k = 300
    log_w = model.log_weights(x, k, gen(5))  # (300, 8)
    by_k = [nll_estimate(log_w.view(k // n, n, 8).transpose(0, 1)).mean().item() for n in (1, 10, 100)]
    assert by_k[0] > by_k[1] + 1 and by_k[1] > by_k[2], by_k  # nats: the bound tightens with k
    chunked = model.log_weights(x, k, gen(5), max_images=8 * 32)  # chunks of 32 draws, the last of 12
    assert chunked.shape == (k, 8)
    few = model.log_weights(x, 40, gen(6), max_images=8 * 16)
    assert torch.equal(few, model.log_weights(x, 40, gen(6), max_images=8 * 16))  # deterministic
    assert not torch.equal(chunked, log_w)  # other draws, the same distribution:
    stderr = (log_w.var(0) / k + chunked.var(0) / k).sqrt()
    assert ((log_w.mean(0) - chunked.mean(0)).abs() < 4 * stderr).all()


@torch.no_grad()
def test_temperatures():
    model = tiny()
    perturb(model)
    cold = model.sample(4, 0.0, gen(0))
    assert torch.equal(cold, model.sample(4, 0.0, gen(1)))
    assert torch.equal(cold, model.sample(4, [0.0] * 4, gen(2)))
    assert not torch.equal(model.sample(4, 1.0, gen(0)), model.sample(4, 1.0, gen(1)))
    top_only = [1.0, 0.0, 0.0, 0.0]  # the top group varies, the lower ones at their means
    assert not torch.equal(model.sample(4, top_only, gen(0)), model.sample(4, top_only, gen(1)))
    px, z = model.decode_noise(model.prior_noise(4, gen(0)), top_only)
    assert torch.allclose(px.mean, model.decode(z).mean, atol=1e-6)  # decode: lower groups at T = 0
    with pytest.raises(ConfigError, match="list of 4"):
        model.sample(4, [1.0, 0.5])


def test_training_lowers_the_loss():
    model, x = tiny(), binary_images(16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        t = model.terms(x, report=False)
        loss = (t.recon + t.kl.sum(1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < 0.6 * start, (start, end)  # ~680 nats at initialisation -> ~250 after 60 steps


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(encoder_blocks="28x1,14"), "model.encoder_blocks"),
        (dict(encoder_blocks="28x1,14xa"), "model.encoder_blocks"),
        (dict(decoder_blocks="1x0,7x1"), "model.decoder_blocks"),
        (dict(encoder_blocks="14x1,7x1"), "model.encoder_blocks"),  # not the image size
        (dict(encoder_blocks="28x1,28x1"), "model.encoder_blocks"),  # not decreasing
        (dict(decoder_blocks="7x1,1x1"), "model.decoder_blocks"),  # not increasing
        (dict(decoder_blocks="1x1,5x1"), r"model.decoder_blocks.*encoder resolutions \[28, 14, 7, 1\]"),
        (dict(width=0), "model.width"),
        (dict(latent_channels=2.5), "model.latent_channels"),
        (dict(output_blocks=-1), "model.output_blocks"),
        (dict(bottleneck=0.0), "model.bottleneck"),
        (dict(likelihood="nope"), "model.likelihood"),
    ],
)
def test_bad_architecture_is_a_config_error(overrides, key):
    with pytest.raises(ConfigError, match=key):
        tiny(**overrides)


# --- an oracle for the hierarchical importance-weighted estimator ------------------------
class LinearGaussianHierarchy(LatentVariableModel):
    """z1 ~ N(0, I), z2 | z1 ~ N(A z1, s² I), x | z2 ~ N(W z2 + b, σ² I), in float64, and a
    deliberately imperfect q(z1|x) q(z2|x, z1): the exact Gaussian conditionals with their
    means shifted (0.8 std along each Cholesky direction) and their covariances ×1.4²."""

    def __init__(self, d1=3, d2=3, dim=5, s=0.6, sigma=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(d2, d1, generator=g, dtype=torch.float64) / math.sqrt(d1)
        self.W = torch.randn(dim, d2, generator=g, dtype=torch.float64) / math.sqrt(d2)
        self.b = torch.randn(dim, generator=g, dtype=torch.float64)
        self.s, self.sigma = s, sigma
        eye = torch.eye
        p2 = eye(d2, dtype=torch.float64) / s**2 + self.W.T @ self.W / sigma**2  # precision of z2 | z1, x
        self.cov2 = torch.linalg.inv(p2)
        wa = self.W @ self.A
        self.cov_x1 = s**2 * self.W @ self.W.T + sigma**2 * eye(dim, dtype=torch.float64)  # of x | z1
        p1 = eye(d1, dtype=torch.float64) + wa.T @ torch.linalg.solve(self.cov_x1, wa)  # precision of z1 | x
        self.cov1 = torch.linalg.inv(p1)
        self.gain1 = self.cov1 @ wa.T @ torch.linalg.inv(self.cov_x1)  # E[z1 | x] = gain1 (x − b)
        shift, widen = 0.8, 1.4
        self.q1_chol = widen * torch.linalg.cholesky(self.cov1)
        self.q2_chol = widen * torch.linalg.cholesky(self.cov2)
        self.shift1 = shift * torch.linalg.cholesky(self.cov1).sum(1)
        self.shift2 = shift * torch.linalg.cholesky(self.cov2).sum(1)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ (self.A @ self.A.T + self.s**2 * torch.eye(len(self.A))) @ self.W.T
        return MultivariateNormal(self.b, cov + self.sigma**2 * torch.eye(len(self.b))).log_prob(x)

    def posterior_context(self, x):
        return (x - self.b) @ self.gain1.T + self.shift1  # mean of q(z1 | x), (B, d1)

    def log_weight_terms(self, x, k, generator=None, context=None):
        eps1 = standard_noise(generator, (k, *context.shape), x)  # (k, B, d1)
        z1 = context + eps1 @ self.q1_chol.T
        prior_mean2 = z1 @ self.A.T  # (k, B, d2)
        q2_mean = (prior_mean2 / self.s**2 + (x - self.b) @ self.W / self.sigma**2) @ self.cov2 + self.shift2
        eps2 = standard_noise(generator, q2_mean.shape, x)
        z2 = q2_mean + eps2 @ self.q2_chol.T
        log_p = (
            Independent(Normal(torch.zeros_like(z1), 1.0), 1).log_prob(z1)
            + Independent(Normal(prior_mean2, self.s), 1).log_prob(z2)
            + Independent(Normal(z2 @ self.W.T + self.b, self.sigma), 1).log_prob(x)
        )
        # z = mean + L ε, so log q(z) = log N(ε; 0, I) − log |det L|
        standard = Independent(Normal(torch.zeros_like(z1), 1.0), 1)
        log_q = standard.log_prob(eps1) + standard.log_prob(eps2) - self.q1_chol.diagonal().log().sum()
        log_q = log_q - self.q2_chol.diagonal().log().sum()
        return log_p - log_q, log_p  # (k, B); the second is unused here


@torch.no_grad()
def test_importance_weighted_estimate_closes_the_gap_on_a_known_model():
    model = LinearGaussianHierarchy()
    g = gen(7)
    z1 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    z2 = z1 @ model.A.T + model.s * torch.randn(8, 3, generator=g, dtype=torch.float64)
    x = z2 @ model.W.T + model.b + model.sigma * torch.randn(8, 5, generator=g, dtype=torch.float64)
    true_nll = -model.exact_log_px(x)  # (8,)
    gaps = {}
    for k in (1, 10, 5000):
        estimates = [nll_estimate(model.log_weights(x, k, g, max_images=8 * 1000)) for _ in range(20)]
        gaps[k] = (torch.stack(estimates) - true_nll).mean().item()  # nats, ≥ 0 in expectation
    assert gaps[1] > 1 and gaps[1] > gaps[10] > gaps[5000] >= -0.05, gaps
    assert abs(gaps[5000]) < 0.05, gaps
