"""Every recipe is one config switch away: likelihoods, objectives and networks train for
real on tiny data, and their numbers keep their meaning (nelbo stays the true −ELBO)."""

import csv
import json
import math

import pytest
import torch

from vae_lightning.errors import ConfigError, find_user_error
from vae_lightning.training import instantiate_data, train

D = 28 * 28


def run(make_cfg, tmp_path, *overrides):
    train(make_cfg("trainer.max_epochs=1", *overrides))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    return metrics


def history(tmp_path, key):
    rows = csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv"))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.parametrize(
    "overrides",
    [
        ("model=resnet_vae", "model.encoder.channels=[8,16]"),
        ("data.binarize=false", "model.likelihood=gaussian", "model.likelihood_sigma=learned_channel"),
        ("model.iw_samples=4",),
        ("model.beta=4", "model.free_bits=0.25"),
    ],
    ids=["resnet", "gaussian-learned-sigma", "iwae", "beta-free-bits"],
)
def test_recipe_trains_and_reports_true_nelbo(make_cfg, tmp_path, overrides):
    m = run(make_cfg, tmp_path, *overrides)
    assert m["test/nelbo"] == pytest.approx(m["test/recon"] + m["test/kl"], rel=1e-5)
    assert 0 <= m["val/active_units"] <= 32
    assert len([k for k in m if k.startswith("val/kl_per_dim/")]) == 32
    if "model.iw_samples=4" not in overrides and "data.binarize=false" not in overrides:
        assert m["test/nll"] <= m["test/nelbo"]


def test_logistic_likelihood_reports_bits_per_dim(make_cfg, tmp_path):
    m = run(
        make_cfg, tmp_path, "data.binarize=false", "model.likelihood=logistic", "model.likelihood_mixtures=2"
    )
    assert m["test/bpd"] == pytest.approx(m["test/nelbo"] / (D * math.log(2)), rel=1e-5)
    assert m["val/bpd"] == pytest.approx(m["val/nelbo"] / (D * math.log(2)), rel=1e-5)
    assert 0 < m["test/bpd"] < 8.5  # at most a little worse than uniform over 256 levels


def test_kl_warmup_is_logged_and_ramps(make_cfg, tmp_path):
    train(
        make_cfg(
            "trainer.max_epochs=2",
            "model.kl_warmup_steps=20",
            "model.beta=2",
            "++trainer.log_every_n_steps=1",
        )
    )
    betas = history(tmp_path, "train/beta")
    assert betas[0] < 0.2 and betas[-1] == 2.0 and betas == sorted(betas)


def test_the_mlp_learning_rate_is_the_peak_of_its_one_cycle_schedule(make_cfg, tmp_path):
    """model=vae: model.optimizer.lr is the one LR knob (an Optuna search over it works)."""
    train(make_cfg("trainer.max_epochs=2", "model.optimizer.lr=3e-3", "++trainer.log_every_n_steps=1"))
    lrs = history(tmp_path, "train/lr")  # 2 epochs x 14 steps: warm-up over the first 3
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[0] < 3e-3 / 10 and lrs[-1] < 3e-3 / 100


def test_bernoulli_on_grey_data_fails_before_training(make_cfg):
    with pytest.raises(ConfigError, match="needs binary pixels"):
        train(make_cfg("data.binarize=false"))


def test_logistic_on_off_grid_data_fails(make_cfg, monkeypatch):
    from vae_lightning.data import MNISTDataModule

    original = MNISTDataModule.preprocess
    monkeypatch.setattr(MNISTDataModule, "preprocess", lambda self, x, train=False: original(self, x) * 0.999)
    with pytest.raises(ConfigError, match="not on the 1/255 grid"):
        train(make_cfg("data.binarize=false", "model.likelihood=logistic"))


def test_data_range_outside_the_likelihood_is_refused(make_cfg, monkeypatch):
    from vae_lightning.data import MNISTDataModule

    monkeypatch.setattr(MNISTDataModule, "value_range", property(lambda self: (-1.0, 1.0)))
    with pytest.raises(ConfigError, match=r"lie in \[-1.0, 1.0\].*only covers \[0.0, 1.0\]"):
        train(make_cfg("data.binarize=false", "model.likelihood=logistic"))


def test_unknown_likelihood_from_config(make_cfg):
    with pytest.raises(Exception) as err:  # Hydra wraps it; the CLI unwraps it for the user
        train(make_cfg("model.likelihood=gausian"))
    assert "valid: bernoulli, gaussian, logistic" in str(find_user_error(err.value))


def test_binarisation_follows_the_likelihood(make_cfg, tmp_path):
    """data=fashion_mnist model.likelihood=logistic trains on the 8-bit grey levels (it
    inherited binarize: true from MNIST's config and reported a meaningless bits/dim)."""
    cfg = make_cfg("data=fashion_mnist", "model.likelihood=logistic")
    assert cfg.data.binarize is False and make_cfg("data=fashion_mnist").data.binarize is True
    dm = instantiate_data(cfg.data, "logistic")
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.preprocess(dm.splits["train"].images[:64], train=True)  # (64, 1, 28, 28) in [0, 1]
    assert len(torch.unique(batch)) > 32 and len(torch.unique(dm.splits["val"].images)) > 32
    m = run(make_cfg, tmp_path, "data=fashion_mnist", "model.likelihood=logistic")
    binary = run(make_cfg, tmp_path, "data=fashion_mnist")  # Bernoulli on 0/1 pixels
    assert m["test/bpd"] > 1.0 > binary["test/nelbo"] / (D * math.log(2))
