"""The VAE system: one LightningModule that trains and evaluates any probabilistic model
of ``vae_lightning.models`` (flat or hierarchical) through their common interface.

The model (``model.family``) owns the networks, the likelihood and the latent structure;
the system owns what training needs around it: the objective (β, warm-up, free bits,
IWAE), the optimizer and schedule, the step guard, the optional EMA copy of the weights,
seeded evaluation noise and the metrics. ``VAE.load_from_checkpoint(path)`` rebuilds any
model from the checkpoint's hyper-parameters.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.distributions import Distribution

from vae_lightning.building import build_from_config, plain_config
from vae_lightning.data.batched import is_padding
from vae_lightning.ema import ema_copy, update_ema, warmed_up_decay
from vae_lightning.errors import ConfigError
from vae_lightning.metrics import (
    LatentStatistics,
    PerImageMean,
    SampleFID,
    bits_per_dim,
    importance_weighted_nll,
)
from vae_lightning.models.base import LatentVariableModel
from vae_lightning.objectives import Objective
from vae_lightning.speed import apply_speed_options, channels_last_input, compile_networks
from vae_lightning.stability import poison_if_nonfinite
from vae_lightning.training_state import TrainingState

log = logging.getLogger(__name__)
STAGES = ("val", "test")
FLAT = "vae_lightning.models.FlatVAE"
EVAL_SEED = 0  # validation and test noise: a generator seeded from this and the batch's number


class VAE(TrainingState, L.LightningModule):
    """Trains ``family`` (a ``LatentVariableModel`` class, built with ``image_shape`` and
    ``**model_args``, e.g. ``encoder``, ``decoder``, ``latent_dim``, ``likelihood``).

    Args:
        beta, kl_warmup_steps, free_bits, iw_samples: the training objective (objectives.py).
        optimizer: config of a ``torch.optim.Optimizer`` (``params`` is passed in).
        scheduler: optional config of a ``torch.optim.lr_scheduler.LRScheduler``, stepped
            every optimizer step; ``total_steps`` / ``T_max`` ``auto`` is the whole run.
        skip_grad_norm, max_skipped_steps: the step guard (stability.py).
        eval_iw_samples, iw_max_images: k of the importance-weighted ``test/nll``, and the
            images decoded at once while estimating it.
        fid, fid_samples: ``test/fid`` on this many prior samples (needs ``.[fid]``).
        channels_last, compile: speed options of the networks (speed.py).
        ema_decay: keep an exponential moving average of the weights with this decay for
            validation, test, panels and sampling (null: the trained weights themselves).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        family: str = FLAT,
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
        ema_decay: float | None = None,
        **model_args: Any,
    ):
        super().__init__()
        named = {k: v for k, v in locals().items() if k not in ("self", "__class__", "model_args")}
        hparams = {key: plain_config(value) for key, value in {**named, **model_args}.items()}
        hparams["image_shape"] = [int(s) for s in hparams["image_shape"]]
        hparams["optimizer"] = hparams["optimizer"] or {"_target_": "torch.optim.Adam", "lr": 1e-3}
        for key, low in (("eval_iw_samples", 1), ("fid_samples", 1)):
            if hparams[key] < low:
                raise ConfigError(f"model.{key} must be >= {low}, got {hparams[key]}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ConfigError(f"model.ema_decay must be in (0, 1) (null: no EMA), got {ema_decay}")
        self.save_hyperparameters(hparams)
        config = {"_target_": family, **{k: hparams[k] for k in model_args}}
        self.model: LatentVariableModel = build_from_config(
            config, LatentVariableModel, "model", "model.family", image_shape=hparams["image_shape"]
        )
        apply_speed_options(self.model.networks(), channels_last)
        self.ema = ema_copy(self.model) if ema_decay is not None else None
        self.objective = Objective(beta, kl_warmup_steps, free_bits, iw_samples)
        self.init_guard(skip_grad_norm, max_skipped_steps)
        self.terms = ["loss", "recon", "kl", "nelbo"] + (["bpd"] if self.discrete_8bit else [])
        self.metrics = nn.ModuleDict(
            {s: nn.ModuleDict({t: PerImageMean() for t in self.terms}) for s in STAGES}
        )
        sizes = self.model.group_sizes
        self.latent_stats = nn.ModuleDict(
            {s: nn.ModuleList(LatentStatistics(d) for d in sizes) for s in STAGES}
        )
        self.test_nll = nn.ModuleDict(
            {key: PerImageMean() for key in ("nll", "nll_bpd")[: 1 + self.discrete_8bit]}
        )
        self._fid = {}  # SampleFID, created for testing only (kept out of the state dict)
        self._eval_generator: torch.Generator | None = None
        self._data_checked = False

    # --- the model's public API (the EMA weights when there are some) -------------------
    @property
    def eval_model(self) -> LatentVariableModel:
        """The weights that evaluation, panels and sampling use: the EMA copy, if any."""
        return self.ema if self.ema is not None else self.model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.model.image_shape

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def discrete_8bit(self) -> bool:
        return self.model.likelihood.discrete_8bit

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x) (a hierarchy: of its top group), batch ``(B,)``, event ``(latent_dim,)``."""
        return self.eval_model.encode(x)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z) for ``(B, latent_dim)``: batch ``(B,)``, event ``(C, H, W)``."""
        return self.eval_model.decode(z)

    def prior(self) -> Distribution:
        return self.eval_model.prior()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``(B, C, H, W)`` in [0, 1]: the mean of p(x|ẑ), ẑ the posterior mean."""
        return self.eval_model.reconstruct(x).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float | list[float] = 1.0, generator: torch.Generator | None = None
    ):
        """``n`` images ``(n, C, H, W)`` in [0, 1] from the prior at ``temperature``."""
        return self.eval_model.sample(n, temperature, generator)

    def log_weights(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, max_images: int | None = None
    ) -> torch.Tensor:
        """log p(x, z) − log q(z|x) for k draws z ~ q(z|x): ``(k, B)``, decoded at most
        ``max_images`` (default ``model.iw_max_images``) images at a time."""
        return self.eval_model.log_weights(x, k, generator, max_images or self.hparams.iw_max_images)

    # --- training and evaluation -------------------------------------------------------
    def _shared_step(self, batch: Any, stage: str, report: bool = True) -> dict[str, Any]:
        """The batch's loss (scalar) and, with ``report``, its per-image terms in nats ``(B,)``
        and latent statistics; without, only what the loss needs (unlogged training steps)."""
        x = channels_last_input(batch[0], self.hparams.channels_last)
        if not self._data_checked:
            self.model.likelihood.check_data(x)  # one host sync, on the first batch only
            self._data_checked = True
        model = self.model if stage == "train" else self.eval_model
        generator = None if stage == "train" else self._eval_generator
        out: dict[str, Any] = {}
        if self.objective.iw_samples > 1:  # IWAE; the reported terms come from one more draw
            log_w, _ = model.log_weight_terms(x, self.objective.iw_samples, generator)
            out["loss"] = self.objective.iwae_loss(log_w)
            if not report:
                return out
        terms = model.terms(x, generator, report)
        if "loss" not in out:
            out["loss"] = self.objective.elbo_loss(terms.recon, terms.kl, self.global_step)
        out.update(recon=terms.recon, groups=terms.groups)
        if report:
            out["kl"] = terms.kl.sum(dim=1)
            out["nelbo"] = terms.recon + out["kl"]
            if self.discrete_8bit:
                out["bpd"] = bits_per_dim(out["nelbo"], x[0].numel())
        return out

    def _global_batch(self, batch_idx: int) -> int:
        """The number in the whole evaluation set of this rank's batch ``batch_idx``: with DDP,
        rank r of w evaluates batches r, r + w, ... (``data.batched.EvalShard``)."""
        trainer = self._trainer
        return batch_idx if trainer is None else batch_idx * trainer.world_size + trainer.global_rank

    def _seed_eval_noise(self, batch_idx: int) -> None:
        """Seed the val/test noise from the batch's number in the whole evaluation set, so that
        a checkpoint gets the same numbers every time and on any number of processes."""
        if self._eval_generator is None or self._eval_generator.device != self.device:
            self._eval_generator = torch.Generator(device=self.device)
        self._eval_generator.manual_seed(EVAL_SEED * 1_000_003 + self._global_batch(batch_idx))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logging_step = self._logging_step()  # the values the loggers record: every log_every_n_steps
        terms = self._shared_step(batch, "train", report=logging_step)
        if logging_step:
            self.log("train/loss", terms["loss"], prog_bar=True)
            self.log_dict({f"train/{k}": terms[k].mean() for k in self.terms[1:]})
            self.log("train/beta", self.objective.beta_at(self.global_step))
        return poison_if_nonfinite(terms["loss"])  # NaN gradients: the guard skips the step

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            update_ema(self.ema, self.model, warmed_up_decay(self.hparams.ema_decay, self.global_step))

    def _counts(self, stage: str) -> bool:
        """False on a DDP rank that only repeats batch 0 of a split with fewer batches than
        processes (``data.batched.EvalShard``): it runs, so that every rank reduces the
        metrics, but adds nothing to them."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return True
        return not is_padding(trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders)

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> bool:
        """Update the stage's metrics with a batch; returns whether it counted (``_counts``)."""
        self._seed_eval_noise(batch_idx)
        counts = self._counts(stage)
        terms = self._shared_step(batch, stage)
        terms["loss"] = terms["loss"].expand(len(batch[0]))  # a batch-level objective, per image
        for key in self.terms:
            if counts:
                self.metrics[stage][key].update(terms[key])
            self.log(f"{stage}/{key}", self.metrics[stage][key], prog_bar=key == "nelbo")
        for stats, (mean, kl) in zip(self.latent_stats[stage], terms["groups"], strict=True):
            if counts:
                stats.update(mean, kl)
        return counts

    def _log_latent_stats(self, stage: str) -> None:
        """Active units and KL per dimension (one latent group) or per group (a hierarchy)."""
        stats = [s.compute() for s in self.latent_stats[stage]]
        self.log(f"{stage}/active_units", sum(s["active_units"] for s in stats).float())
        if len(stats) == 1:
            self.log_dict({f"{stage}/kl_per_dim/{d:03d}": v for d, v in enumerate(stats[0]["kl_per_dim"])})
        else:
            for g, s in enumerate(stats):
                self.log(f"{stage}/kl_group/{g:02d}", s["kl_per_dim"].sum())
                self.log(f"{stage}/active_units_group/{g:02d}", s["active_units"].float())
        for s in self.latent_stats[stage]:
            s.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_latent_stats("val")

    def on_test_start(self) -> None:
        if self.hparams.fid:  # prior samples in chunks of the test batch size, split across ranks
            batch_size = getattr(self.trainer.test_dataloaders, "batch_size", None) or 250
            self._fid["metric"] = SampleFID(self.hparams.fid_samples, batch_size, EVAL_SEED).to(self.device)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        counts = self._eval_step(batch, batch_idx, "test")
        if counts:  # a padding batch (see _counts) needs no IW estimate: it adds nothing
            k, chunk = self.hparams.eval_iw_samples, self.hparams.iw_max_images
            nll = importance_weighted_nll(self.eval_model, batch[0], k, chunk, self._eval_generator)
            self.test_nll["nll"].update(nll)
            if self.discrete_8bit:
                self.test_nll["nll_bpd"].update(bits_per_dim(nll, batch[0][0].numel()))
        for key, metric in self.test_nll.items():
            self.log(f"test/{key}", metric, prog_bar=key == "nll")
        if "metric" in self._fid and counts:  # with the batch's place in the whole test set
            fid = self._fid["metric"]
            fid.update_real(batch[0], self._global_batch(batch_idx) * fid.batch_size)

    def on_test_epoch_end(self) -> None:
        self._log_latent_stats("test")
        if "metric" in self._fid:
            fid = self._fid.pop("metric")
            self.log("test/fid", fid.compute_for(self.eval_model, self.global_rank, self.trainer.world_size))

    def on_fit_start(self) -> None:
        """Fail before training when the data's value range is outside the likelihood's."""
        data_range = getattr(self.trainer.datamodule, "value_range", None)
        likelihood = self.model.likelihood
        lo, hi = likelihood.support
        if data_range is not None and (data_range[0] < lo or data_range[1] > hi):
            raise ConfigError(
                f"the data's pixel values lie in {list(data_range)}, but model.likelihood="
                f"{likelihood.name} only covers [{lo}, {hi}]; choose another likelihood"
            )
        if self.hparams.compile:
            compile_networks(self.model.networks())

    def configure_optimizers(self) -> Any:
        optimizer = build_from_config(
            self.hparams.optimizer, torch.optim.Optimizer, "model.optimizer", params=self.model.parameters()
        )
        return self.with_scheduler(optimizer)
