import math

import pytest
import torch

from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import build_likelihood


def test_bernoulli_log_prob_is_summed_log_likelihood_in_nats():
    logits = torch.randn(4, 1, 5, 5)
    x = torch.bernoulli(torch.full((4, 1, 5, 5), 0.5))
    px = build_likelihood("bernoulli")(logits)
    assert px.batch_shape == (4,) and px.event_shape == (1, 5, 5)
    p = torch.sigmoid(logits)
    direct = (x * p.log() + (1 - x) * (1 - p).log()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(px.log_prob(x), direct, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(px.mean, p)


def test_unknown_likelihood_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown model.likelihood='gausian'; valid: bernoulli"):
        build_likelihood("gausian")


def test_bernoulli_refuses_grey_data():
    with pytest.raises(ConfigError, match="needs binary pixels"):
        build_likelihood("bernoulli").check_data(torch.full((2, 1, 4, 4), 0.3))
    build_likelihood("bernoulli").check_data(torch.ones(2, 1, 4, 4))  # binary: fine


def grid(shape, seed=0):
    """Random 8-bit pixels as floats in [0, 1], including both edge values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=g).float() / 255
    x.view(-1)[:2] = torch.tensor([0.0, 1.0])
    return x


def test_gaussian_fixed_sigma_matches_normal_log_density():
    lik = build_likelihood("gaussian", (1, 4, 4), sigma=0.2)
    mean, x = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    direct = (-0.5 * ((x - mean) / 0.2) ** 2 - math.log(0.2) - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    torch.testing.assert_close(lik(mean).log_prob(x), direct, rtol=1e-5, atol=1e-4)
    assert not list(lik.parameters())  # fixed σ: nothing to learn


@pytest.mark.parametrize("sigma, shape", [("learned_channel", (3, 1, 1)), ("learned_pixel", (3, 4, 4))])
def test_gaussian_learned_sigma_is_a_parameter(sigma, shape):
    lik = build_likelihood("gaussian", (3, 4, 4), sigma=sigma)
    (param,) = list(lik.parameters())
    assert param.shape == shape
    loss = -lik(torch.zeros(2, 3, 4, 4)).log_prob(torch.full((2, 3, 4, 4), 0.5)).sum()
    loss.backward()
    assert param.grad is not None and param.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="learned_channel, learned_pixel"):
        build_likelihood("gaussian", (3, 4, 4), sigma="learned")


@pytest.mark.parametrize("mixtures", [1, 3])
def test_logistic_is_a_distribution_over_the_256_levels(mixtures):
    lik = build_likelihood("logistic", mixtures=mixtures)
    params = torch.randn(1, lik.params_per_channel * 2, 1, 3)  # 2 channels, 1x3 pixels
    px = lik(params)
    levels = torch.arange(256).float() / 255  # every value a pixel can take
    x = levels.view(256, 1, 1, 1).expand(256, 2, 1, 3)
    per_pixel = px.base_dist.log_prob(x)  # (256, 2, 1, 3): broadcast over the levels
    total = per_pixel.exp().sum(0)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=1e-4, atol=1e-4)


def test_logistic_single_component_matches_cdf_difference():
    lik = build_likelihood("logistic")
    mean, log_s = torch.tensor(0.1), torch.tensor(-2.0)
    params = torch.stack([mean, log_s]).view(1, 2, 1, 1)
    x = torch.tensor(140 / 255).view(1, 1, 1, 1)
    y, h = 2 * x - 1, 1 / 255
    cdf = lambda v: torch.sigmoid((v - mean) / log_s.exp())  # noqa: E731
    direct = torch.log(cdf(y + h) - cdf(y - h)).view(1)
    torch.testing.assert_close(lik(params).log_prob(x), direct, rtol=1e-5, atol=1e-5)
    # edge bins take the tails
    x0 = torch.zeros(1, 1, 1, 1)
    torch.testing.assert_close(lik(params).log_prob(x0), torch.log(cdf(-1 + h)).view(1), rtol=1e-5, atol=1e-5)


def test_logistic_samples_and_mean_live_on_the_pixel_grid():
    lik = build_likelihood("logistic", mixtures=2)
    px = lik(torch.randn(4, 6 * 3, 5, 5))
    assert px.event_shape == (3, 5, 5) and px.batch_shape == (4,)
    draw = px.sample()
    assert draw.shape == (4, 3, 5, 5) and 0 <= draw.min() and draw.max() <= 1
    torch.testing.assert_close(draw * 255, torch.round(draw * 255))
    assert px.sample((2,)).shape == (2, 4, 3, 5, 5)
    assert 0 <= px.mean.min() and px.mean.max() <= 1
    lik.check_data(grid((2, 3, 5, 5)))  # on the grid: fine
    with pytest.raises(ConfigError, match="not on the 1/255 grid"):
        lik.check_data(torch.full((2, 3, 5, 5), 0.5 / 255))
    with pytest.raises(ConfigError, match=r"covers pixel values in \[0.0, 1.0\]"):
        lik.check_data(torch.full((2, 3, 5, 5), -1.0))


def test_bits_per_dim_of_a_uniform_8bit_image_is_8():
    from vae_lightning.metrics import bits_per_dim

    dims = 3 * 32 * 32
    assert bits_per_dim(torch.tensor(dims * math.log(256)), dims).item() == pytest.approx(8.0)


@pytest.mark.parametrize(
    "name, kwargs, channels_per_pixel",
    [("bernoulli", {}, 1), ("gaussian", {"sigma": "learned_pixel"}, 1), ("logistic", {"mixtures": 3}, 9)],
)
def test_nll_is_minus_the_distributions_log_prob(name, kwargs, channels_per_pixel):
    """The training step's −log p(x|z) (``Likelihood.nll``) is the distribution's number, and
    its gradient too; Bernoulli's own shortcut is bit-identical (resumed runs stay exact)."""
    torch.manual_seed(0)
    likelihood = build_likelihood(name, (1, 6, 5), **kwargs)
    params = torch.randn(4, channels_per_pixel, 6, 5, requires_grad=True)
    x = torch.randint(0, 256, (4, 1, 6, 5)).float() / 255
    if name == "bernoulli":
        x = torch.bernoulli(x)
    nll = likelihood.nll(params, x)
    (grad,) = torch.autograd.grad(nll.sum(), params)
    reference = -likelihood(params).log_prob(x)
    (grad_ref,) = torch.autograd.grad(reference.sum(), params)
    assert nll.shape == (4,)
    if name == "bernoulli":
        assert torch.equal(nll, reference) and torch.equal(grad, grad_ref)
    else:
        torch.testing.assert_close(nll, reference)
        torch.testing.assert_close(grad, grad_ref)
