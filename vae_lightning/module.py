"""The VAE system: encoder, reparameterised sampler, decoder, prior and loss in one
LightningModule. Networks are plain ``nn.Module``s built from config dicts, so a
checkpoint rebuilds its model with ``VAE.load_from_checkpoint(path)`` and nothing else.
"""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.building import build_from_config, plain_config, stretch_schedule
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import build_likelihood
from vae_lightning.metrics import (
    LatentStatistics,
    PerImageMean,
    SampleFID,
    bits_per_dim,
    importance_weighted_nll,
)
from vae_lightning.objectives import Objective, gaussian_kl, log_importance_weights
from vae_lightning.speed import apply_speed_options, channels_last_input, compile_networks
from vae_lightning.stability import (
    StepGuard,
    TrainingDiverged,
    poison_if_nonfinite,
    rng_state,
    set_rng_state,
)

log = logging.getLogger(__name__)
STAGES = ("val", "test")
LOGVAR_RANGE = (-30.0, 20.0)  # σ in [3e-7, 2e4]: wide, but exp() never overflows
WHOLE_RUN_KEYS = ("total_steps", "T_max")  # scheduler lengths that "auto" sets to the whole run
EVAL_SEED = 0  # validation and test noise: a generator seeded from this and the batch's number


def _by_norm(algorithm: str | None) -> bool:
    """Whether Lightning's gradient clipping is by norm (``None`` means norm there)."""
    return (algorithm or "norm") == "norm"


class VAE(L.LightningModule):
    """Variational autoencoder with a N(0, I) prior and a diagonal Gaussian posterior.

    Args:
        encoder: config of an ``nn.Module`` mapping ``(B, *image_shape)`` to
            ``(B, 2 * latent_dim)``; ``image_shape`` and ``latent_dim`` are passed in.
        decoder: config of an ``nn.Module`` mapping ``(B, latent_dim)`` to the likelihood's
            parameters; ``image_shape``, ``latent_dim`` and ``out_channels`` are passed in.
        image_shape: ``(C, H, W)`` of the data, taken from the data config.
        latent_dim: size of z.
        likelihood: p(x|z): ``bernoulli``, ``gaussian`` or ``logistic`` (likelihoods.py);
            ``likelihood_sigma`` and ``likelihood_mixtures`` configure the last two.
        beta, kl_warmup_steps, free_bits, iw_samples: the training objective (objectives.py).
        optimizer: config of a ``torch.optim.Optimizer`` (``params`` is passed in).
        scheduler: optional config of a ``torch.optim.lr_scheduler.LRScheduler``, stepped
            every optimizer step; ``total_steps`` / ``T_max`` are filled in from the Trainer.
        skip_grad_norm, max_skipped_steps: steps with a non-finite loss or gradient norm (or
            a norm above ``skip_grad_norm``) are skipped; so many in a row stop the run.
        eval_iw_samples: k of the importance-weighted ``test/nll``.
        iw_max_images: images decoded at once while estimating ``test/nll``.
        fid, fid_samples: compute ``test/fid`` on this many prior samples (needs ``.[fid]``).
        channels_last, compile: speed options of the networks (``speed.py``); ``compile``
            applies to training only.
    """

    def __init__(
        self,
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        image_shape: Sequence[int],
        latent_dim: int = 32,
        likelihood: str = "bernoulli",
        likelihood_sigma: float | str = 0.1,
        likelihood_mixtures: int = 1,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 1,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        skip_grad_norm: float | None = None,
        max_skipped_steps: int = 20,
        eval_iw_samples: int = 1000,
        iw_max_images: int = 2048,
        fid: bool = False,
        fid_samples: int = 10000,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        hparams = {
            key: plain_config(value) for key, value in locals().items() if key not in ("self", "__class__")
        }
        hparams["image_shape"] = [int(s) for s in hparams["image_shape"]]
        hparams["optimizer"] = hparams["optimizer"] or {"_target_": "torch.optim.Adam", "lr": 1e-3}
        for key, low in (("latent_dim", 1), ("eval_iw_samples", 1), ("fid_samples", 1)):
            if hparams[key] < low:
                raise ConfigError(f"model.{key} must be >= {low}, got {hparams[key]}")
        self.save_hyperparameters(hparams)
        self.image_shape, self.latent_dim = tuple(hparams["image_shape"]), int(latent_dim)
        self.likelihood = build_likelihood(
            likelihood, self.image_shape, likelihood_sigma, likelihood_mixtures
        )
        self.objective = Objective(beta, kl_warmup_steps, free_bits, iw_samples)
        self.guard = StepGuard(skip_grad_norm, max_skipped_steps)
        net_args = {"image_shape": self.image_shape, "latent_dim": self.latent_dim}
        self.encoder = build_from_config(hparams["encoder"], nn.Module, "model.encoder", **net_args)
        out_channels = self.image_shape[0] * self.likelihood.params_per_channel
        self.decoder = build_from_config(
            hparams["decoder"], nn.Module, "model.decoder", out_channels=out_channels, **net_args
        )
        apply_speed_options([self.encoder, self.decoder], channels_last)
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(self.latent_dim), persistent=False)
        self.terms = ["loss", "recon", "kl", "nelbo"] + (["bpd"] if self.likelihood.discrete_8bit else [])
        self.metrics = nn.ModuleDict(
            {s: nn.ModuleDict({t: PerImageMean() for t in self.terms}) for s in STAGES}
        )
        self.latent_stats = nn.ModuleDict({s: LatentStatistics(self.latent_dim) for s in STAGES})
        self.test_nll = PerImageMean()
        self._fid = {}  # SampleFID, created for testing only (kept out of the state dict)
        self._eval_generator: torch.Generator | None = None
        self._data_checked = False

    # --- the probabilistic model -------------------------------------------------------
    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z|x), each ``(B, latent_dim)``."""
        x = channels_last_input(x, self.hparams.channels_last)
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
    def _shared_step(self, batch: Any, stage: str, report: bool = True) -> dict[str, torch.Tensor]:
        """The batch's training loss (scalar) and per-image terms in nats, ``(B,)``; without
        ``report`` only what the loss needs (training steps whose values nobody records)."""
        x = batch[0]
        if not self._data_checked:
            self.likelihood.check_data(x)  # one host sync, on the first batch only
            self._data_checked = True
        mu, logvar = self.posterior_params(x)
        kl_per_dim = gaussian_kl(mu, logvar)  # (B, D)
        if self.objective.iw_samples > 1:  # IWAE: recon from the first of the k samples
            q = Independent(Normal(mu, (0.5 * logvar).exp(), validate_args=False), 1)
            log_w, log_px = log_importance_weights(self, x, q, self.objective.iw_samples, reparameterize=True)
            recon, loss = -log_px[0], self.objective.iwae_loss(log_w)
        else:
            z = mu + (0.5 * logvar).exp() * self._noise(mu, stage)  # reparameterised sample
            recon = self.likelihood.nll(self.decoder(z).float(), x)  # (B,) −log p(x|z), float32
            loss = self.objective.elbo_loss(recon, kl_per_dim, self.global_step)
        terms = {"loss": loss, "recon": recon, "mu": mu, "kl_per_dim": kl_per_dim}
        if report:
            terms["kl"] = kl_per_dim.sum(dim=1)
            terms["nelbo"] = recon + terms["kl"]
            if self.likelihood.discrete_8bit:
                terms["bpd"] = bits_per_dim(terms["nelbo"], x[0].numel())
        return terms

    def _noise(self, mu: torch.Tensor, stage: str) -> torch.Tensor:
        """ε ~ N(0, I); for val/test from the generator of the batch (``_seed_eval_noise``)."""
        if stage == "train" or self._eval_generator is None:
            return torch.randn_like(mu)
        return torch.randn(mu.shape, generator=self._eval_generator, device=mu.device, dtype=mu.dtype)

    def _seed_eval_noise(self, batch_idx: int) -> None:
        """Seed the val/test noise from the batch's number in the whole evaluation set, so that
        a checkpoint gets the same numbers every time and on any number of processes: with
        DDP, rank r of w evaluates global batches r, r + w, ... (``data.batched``)."""
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self._eval_generator is None or self._eval_generator.device != self.device:
            self._eval_generator = torch.Generator(device=self.device)
        self._eval_generator.manual_seed(EVAL_SEED * 1_000_003 + batch_idx * world + rank)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logging_step = self._logging_step()  # the values the loggers record: every log_every_n_steps
        terms = self._shared_step(batch, "train", report=logging_step)
        if logging_step:
            self.log("train/loss", terms["loss"], prog_bar=True)
            self.log_dict({f"train/{k}": terms[k].mean() for k in self.terms[1:]})
            self.log("train/beta", self.objective.beta_at(self.global_step))
        return poison_if_nonfinite(terms["loss"])  # NaN gradients: StepGuard skips the step

    def _logging_step(self) -> bool:
        """Whether the loggers record this step. ``self.log`` costs ~2 ms a call in Lightning
        2.6 (more than a whole MLP step on a GPU), so train scalars are only given to it then;
        Lightning's own LearningRateMonitor asks the same question."""
        trainer = self._trainer
        if trainer is None:
            return False
        return trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step (gradients set to None) when its gradient is not finite; else clip
        to ``trainer.gradient_clip_val`` with the same norm (``configure_gradient_clipping``)."""
        clip = self.trainer.gradient_clip_val if _by_norm(self.trainer.gradient_clip_algorithm) else None
        # the optimizer's parameters: self.parameters() walks every submodule (~0.5 ms a step)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        try:
            norm, _ = self.guard.check(params, self.global_step, clip)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err}.\n  {self._save_last_good_state()}") from None
        if self._logging_step():
            self.log("train/grad_norm", norm)
            self.log("train/lr", optimizer.param_groups[0]["lr"])
            self.log("train/skipped_steps", float(self.guard.skipped))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if not _by_norm(gradient_clip_algorithm):  # clipping by norm: done by the guard, which has the norm
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _save_last_good_state(self) -> str:
        """Checkpoint the weights of the last good step (skipped steps changed nothing)."""
        callback = self.trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        if folder is None:
            return "No checkpoint was written (no checkpoint callback)."
        path = folder / "last.ckpt"
        self.trainer.save_checkpoint(path, weights_only=False)
        return f"The weights of the last good step are in {path}; resume with ckpt_path={path}"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.guard.skipped
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.skipped = int(checkpoint.get("skipped_steps", 0))
        self._resumed_rng = checkpoint.get("rng_state")  # applied when training goes on

    def on_train_start(self) -> None:
        """A resumed run with another ``trainer.max_epochs``: the restored whole-run schedule
        is stretched to the new length (``building.stretch_schedule``)."""
        if not any((self.hparams.scheduler or {}).get(key) == "auto" for key in WHOLE_RUN_KEYS):
            return
        total = int(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            if stretch_schedule(config.scheduler, total):
                log.info("model.scheduler: fitted to the run's %d steps", total)

    def on_train_epoch_start(self) -> None:
        """After a resume: the random state of the checkpoint, set just before the epoch
        draws its data order, so the run goes on as if it had not been interrupted."""
        if getattr(self, "_resumed_rng", None) is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        self._seed_eval_noise(batch_idx)
        terms = self._shared_step(batch, stage)
        terms["loss"] = terms["loss"].expand(len(batch[0]))  # a batch-level objective, per image
        for key in self.terms:
            self.metrics[stage][key].update(terms[key])
            self.log(f"{stage}/{key}", self.metrics[stage][key], prog_bar=key == "nelbo")
        self.latent_stats[stage].update(terms["mu"], terms["kl_per_dim"])

    def _log_latent_stats(self, stage: str) -> None:
        stats = self.latent_stats[stage].compute()
        self.log(f"{stage}/active_units", stats["active_units"].float())
        self.log_dict({f"{stage}/kl_per_dim/{d:03d}": v for d, v in enumerate(stats["kl_per_dim"])})
        self.latent_stats[stage].reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_latent_stats("val")

    def on_test_start(self) -> None:
        if self.hparams.fid:
            self._fid["metric"] = SampleFID(self.hparams.fid_samples).to(self.device)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")
        k, chunk = self.hparams.eval_iw_samples, self.hparams.iw_max_images
        self.test_nll.update(importance_weighted_nll(self, batch[0], k, chunk, self._eval_generator))
        self.log("test/nll", self.test_nll, prog_bar=True)
        if "metric" in self._fid:
            self._fid["metric"].update_real(batch[0])

    def on_test_epoch_end(self) -> None:
        self._log_latent_stats("test")
        if "metric" in self._fid:
            self.log("test/fid", self._fid.pop("metric").compute_for(self))

    def on_fit_start(self) -> None:
        """Fail before training when the data's value range is outside the likelihood's."""
        data_range = getattr(self.trainer.datamodule, "value_range", None)
        lo, hi = self.likelihood.support
        if data_range is not None and (data_range[0] < lo or data_range[1] > hi):
            raise ConfigError(
                f"the data's pixel values lie in {list(data_range)}, but model.likelihood="
                f"{self.likelihood.name} only covers [{lo}, {hi}]; choose another likelihood"
            )
        if self.hparams.compile:
            compile_networks([self.encoder, self.decoder])

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        optimizer = build_from_config(
            self.hparams.optimizer, torch.optim.Optimizer, "model.optimizer", params=params
        )
        if not self.hparams.scheduler:
            return optimizer
        cfg = dict(self.hparams.scheduler)
        total = self.trainer.estimated_stepping_batches  # optimizer steps of the whole fit
        for key in WHOLE_RUN_KEYS:  # OneCycleLR, CosineAnnealingLR: the whole run
            if cfg.get(key) == "auto":
                cfg[key] = int(total)
        scheduler = build_from_config(
            cfg, torch.optim.lr_scheduler.LRScheduler, "model.scheduler", optimizer=optimizer
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
