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
