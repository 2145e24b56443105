"""The VAE system: encoder, reparameterised sampler, decoder, prior and loss in one
LightningModule. Networks are plain ``nn.Module``s built from config dicts, so a
checkpoint rebuilds its model with ``VAE.load_from_checkpoint(path)`` and nothing else.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import build_likelihood
from vae_lightning.metrics import PerImageMean, importance_weighted_nll
from vae_lightning.objectives import ELBO, gaussian_kl

STAGES = ("val", "test")
TERMS = ("loss", "recon", "kl", "nelbo")
LOGVAR_RANGE = (-30.0, 20.0)  # σ in [3e-7, 2e4]: wide, but exp() never overflows


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists, so checkpoints load with weights_only=True."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _build(cfg: Mapping[str, Any], base: type, what: str, **kwargs: Any) -> Any:
    """Construct ``cfg["_target_"]`` with the other keys plus ``kwargs``.

    Only subclasses of ``base`` are built: a checkpoint names its classes as strings, and
    loading one must never call an arbitrary function.
    """
    target = cfg.get("_target_")
    try:
        cls = get_class(target)
    except Exception as err:
        raise ConfigError(f"{what}._target_={target!r} cannot be imported: {err}") from None
    if not issubclass(cls, base):
        raise ConfigError(f"{what}._target_={target!r} is not a {base.__module__}.{base.__name__}")
    args = {key: value for key, value in cfg.items() if not key.startswith("_")}
    return cls(**args, **kwargs)


class VAE(L.LightningModule):
    """Variational autoencoder with a N(0, I) prior and a diagonal Gaussian posterior.

    Args:
        encoder: config of an ``nn.Module`` mapping ``(B, *image_shape)`` to
            ``(B, 2 * latent_dim)``; ``image_shape`` and ``latent_dim`` are passed in.
        decoder: config of an ``nn.Module`` mapping ``(B, latent_dim)`` to the likelihood's
            parameters; ``image_shape``, ``latent_dim`` and ``out_channels`` are passed in.
        image_shape: ``(C, H, W)`` of the data, taken from the data config.
        latent_dim: size of z.
        likelihood: name of the p(x|z) family (see ``vae_lightning.likelihoods``).
        beta: weight of the KL term in the training loss.
        optimizer: config of a ``torch.optim.Optimizer`` (``params`` is passed in).
        eval_iw_samples: k of the importance-weighted ``test/nll``.
        iw_max_images: images decoded at once while estimating ``test/nll``.
    """

    def __init__(
        self,
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        image_shape: Sequence[int],
        latent_dim: int = 32,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        optimizer: Mapping[str, Any] | None = None,
        eval_iw_samples: int = 1000,
        iw_max_images: int = 2048,
    ):
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {latent_dim}")
        if eval_iw_samples < 1:
            raise ConfigError(f"model.eval_iw_samples must be >= 1, got {eval_iw_samples}")
        hparams = {
            "encoder": _plain(encoder),
            "decoder": _plain(decoder),
            "image_shape": [int(s) for s in _plain(image_shape)],
            "latent_dim": int(latent_dim),
            "likelihood": str(likelihood),
            "beta": float(beta),
            "optimizer": _plain(optimizer) or {"_target_": "torch.optim.Adam", "lr": 1e-3},
            "eval_iw_samples": int(eval_iw_samples),
            "iw_max_images": int(iw_max_images),
        }
        self.save_hyperparameters(hparams)
        self.image_shape = tuple(hparams["image_shape"])
        self.latent_dim = hparams["latent_dim"]
        self.likelihood = build_likelihood(hparams["likelihood"])
        self.objective = ELBO(beta=hparams["beta"])
        net_args = {"image_shape": self.image_shape, "latent_dim": self.latent_dim}
        self.encoder = _build(hparams["encoder"], nn.Module, "model.encoder", **net_args)
        out_channels = self.image_shape[0] * self.likelihood.params_per_channel
        self.decoder = _build(
            hparams["decoder"], nn.Module, "model.decoder", out_channels=out_channels, **net_args
        )
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(self.latent_dim), persistent=False)
        self.metrics = nn.ModuleDict(
            {stage: nn.ModuleDict({t: PerImageMean() for t in TERMS}) for stage in STAGES}
        )
        self.test_nll = PerImageMean()
        self._data_checked = False

    # --- the probabilistic model -------------------------------------------------------
    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z|x), each ``(B, latent_dim)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x) for images ``(B, C, H, W)`` in [0, 1]: batch ``(B,)``, event ``(latent_dim,)``."""
        mu, logvar = self.posterior_params(x)
        return Independent(Normal(mu, (0.5 * logvar).exp(), validate_args=False), 1)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z) for latents ``(B, latent_dim)``: batch ``(B,)``, event ``(C, H, W)``."""
        return self.likelihood(self.decoder(z))

    def prior(self) -> Distribution:
        """p(z) = N(0, I), event ``(latent_dim,)``."""
        return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction: the mean of p(x|z) at z = E[q(z|x)], ``(B, C, H, W)`` in [0, 1]."""
        mu, _ = self.posterior_params(x)
        return self.decode(mu).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None):
        """``n`` images ``(n, C, H, W)`` in [0, 1]: the mean of p(x|z), z ~ N(0, T² I)."""
        device = generator.device if generator is not None else self.device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device) * temperature
        return self.decode(z.to(self.device)).mean.clamp(0, 1)

    # --- training and evaluation -------------------------------------------------------
    def _shared_step(self, batch: Any, stage: str) -> dict[str, torch.Tensor]:
        """Per-image terms (nats), shape ``(B,)``, for one batch of ``(x, y)``."""
        x = batch[0]
        if not self._data_checked:
            self.likelihood.check_data(x)  # one host sync, on the first batch only
            self._data_checked = True
        mu, logvar = self.posterior_params(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)  # reparameterised sample
        recon = -self.decode(z).log_prob(x)  # (B,) −log p(x|z)
        kl = gaussian_kl(mu, logvar).sum(dim=1)  # (B,)
        return {"loss": self.objective(recon, kl), "recon": recon, "kl": kl, "nelbo": recon + kl}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        terms = {key: value.mean() for key, value in self._shared_step(batch, "train").items()}
        self.log("train/loss", terms["loss"], prog_bar=True, on_epoch=True)
        self.log_dict({f"train/{k}": terms[k] for k in TERMS[1:]}, on_epoch=True)
        return terms["loss"]

    def _eval_step(self, batch: Any, stage: str) -> None:
        for key, values in self._shared_step(batch, stage).items():
            metric = self.metrics[stage][key]
            metric.update(values)
            self.log(f"{stage}/{key}", metric, prog_bar=key == "nelbo")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")
        k = self.hparams.eval_iw_samples
        self.test_nll.update(importance_weighted_nll(self, batch[0], k, self.hparams.iw_max_images))
        self.log("test/nll", self.test_nll, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.hparams.optimizer
        return _build(optimizer, torch.optim.Optimizer, "model.optimizer", params=self.parameters())
