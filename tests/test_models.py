"""The interface every probabilistic model implements (``models.LatentVariableModel``),
checked on each family that ``conf/model/`` offers: the MLP, conv and ResNet flat VAEs
and the hierarchical VAE, built from their real configs at tiny sizes."""

import pytest
import torch
from hydra.utils import instantiate

from vae_lightning.checkpoints import build_vae, check_vae_checkpoint
from vae_lightning.errors import ConfigError

TINY = {
    "vae": ["model.encoder.hidden_dims=[32]", "model.decoder.hidden_dims=[32]", "model.latent_dim=4"],
    "conv_vae": ["model.encoder.channels=[4,8]", "model.latent_dim=4"],
    "resnet_vae": ["model.encoder.channels=[4,8]", "model.latent_dim=4"],
    "hvae": [
        "model.width=8",
        "model.latent_channels=2",
        "model.encoder_blocks='28x1,14x1,7x1,1x1'",
        "model.decoder_blocks='1x1,7x2,14x1'",
    ],
}
FAMILIES = list(TINY)


@pytest.fixture(params=FAMILIES)
def family(request, make_cfg):
    """(name, VAE system) of a tiny model of each family, weights perturbed away from the
    initialisation (a zero-initialised prior would make some checks trivially true)."""
    torch.manual_seed(0)
    vae = instantiate(make_cfg(f"model={request.param}", *TINY[request.param]).model)
    with torch.no_grad():
        for p in vae.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return request.param, vae.eval()


def binary(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def test_log_weights_shape_and_one_sample_agrees_with_the_elbo_terms(family):
    _, vae = family
    model, x = vae.model, binary(6)
    assert model.log_weights(x, 5, seeded(0)).shape == (5, 6)
    log_w, log_px = model.log_weight_terms(x, 1, seeded(1))
    terms = model.terms(x, seeded(1))  # the same draws of z
    assert (
        terms.recon.shape == (6,)
        and terms.kl.shape[0] == 6
        and terms.kl.shape[1] == model.num_groups
        or (model.num_groups == 1 and terms.kl.shape[1] == model.latent_dim)
    )
    torch.testing.assert_close(log_px[0], -terms.recon, rtol=1e-5, atol=1e-3)
    # in expectation over z, log w = log p(x|z) − (log q − log p)(z) is −(recon + KL):
    # within 5 standard errors of the two Monte Carlo means
    log_w = model.log_weights(x, 3000, seeded(2), max_images=6000)  # (3000, B)
    nelbo = torch.stack([(lambda t: t.recon + t.kl.sum(1))(model.terms(x, seeded(s))) for s in range(300)])
    se = (log_w.var(0) / len(log_w) + nelbo.var(0) / len(nelbo)).sqrt()
    gap = (-log_w.mean(0) - nelbo.mean(0)).abs()
    assert torch.all(gap < 5 * se + 1e-3), (gap, se)


@torch.no_grad()
def test_the_importance_weighted_estimate_is_below_the_elbo_and_falls_with_k(family):
    _, vae = family
    model, x = vae.model, binary(8, seed=3)
    nll = {}
    for k in (1, 10, 100):
        log_w = torch.stack([model.log_weights(x, k, seeded(10 * k + r)) for r in range(20)])  # (R, k, B)
        nll[k] = -(torch.logsumexp(log_w, dim=1) - torch.log(torch.tensor(float(k)))).mean().item()
    assert nll[1] > nll[10] > nll[100], nll


@torch.no_grad()
def test_sampling_at_temperature_zero_is_deterministic(family):
    _, vae = family
    a = vae.sample(4, temperature=0.0, generator=seeded(0))
    b = vae.sample(4, temperature=0.0, generator=seeded(1))
    assert a.shape == (4, 1, 28, 28) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c, d = vae.sample(4, generator=seeded(0)), vae.sample(4, generator=seeded(1))
    assert not torch.equal(c, d)  # noise matters at T = 1
    with pytest.raises(ConfigError, match="temperature"):
        vae.sample(2, temperature=[1.0] * (vae.model.num_groups + 1))


@torch.no_grad()
def test_a_checkpoint_loads_with_weights_only_and_gives_the_same_log_weights(family, tmp_path):
    _, vae = family
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": vae.state_dict(), "hyper_parameters": dict(vae.hparams)}, path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    loaded = build_vae(raw, path)
    assert check_vae_checkpoint(raw, path) == dict(vae.hparams)
    x = binary(4)
    torch.testing.assert_close(
        loaded.log_weights(x, 7, seeded(5)), vae.log_weights(x, 7, seeded(5)), rtol=0, atol=0
    )


@torch.no_grad()
def test_the_latent_tools_see_one_gaussian_latent(family):
    _, vae = family
    model, x = vae.model, binary(3)
    q = model.encode(x)
    assert q.batch_shape == (3,) and q.event_shape == (model.latent_dim,)
    assert model.prior().event_shape == (model.latent_dim,)
    px = model.decode(q.mean)
    assert px.batch_shape == (3,) and px.event_shape == (1, 28, 28) and px.log_prob(x).shape == (3,)
    assert model.reconstruct(x).mean.shape == (3, 1, 28, 28)
    assert sum(model.group_sizes) >= model.latent_dim and len(model.group_sizes) == model.num_groups


def test_the_ema_averages_the_weights_and_forgets_the_initialisation():
    from vae_lightning.ema import ema_copy, update_ema, warmed_up_decay

    model = torch.nn.Linear(3, 2)
    ema = ema_copy(model)
    assert not any(p.requires_grad for p in ema.parameters())
    before = ema.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight)
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1) and warmed_up_decay(0.999, 10**5) == 0.999
    weight_of_init = 1.0
    for step in range(860):  # one MNIST epoch at batch 64
        weight_of_init *= warmed_up_decay(0.999, step)
    assert weight_of_init < 1e-3  # a fixed 0.999 would leave 0.42
