"""Evaluation metrics that reduce correctly across batches and processes.

States are sums and counts (``dist_reduce_fx="sum"``): a mean of per-rank means is
wrong when shards are uneven, a ratio of summed sums and counts is not.
"""

import math

import torch
from torchmetrics import Metric


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


@torch.no_grad()
def importance_weighted_nll(model, x: torch.Tensor, k: int, max_images: int = 8192) -> torch.Tensor:
    """−log p(x) estimated with k importance samples from q(z|x) (Burda et al., 2016).

    log p(x) ≈ log (1/k) Σᵢ p(x|zᵢ) p(zᵢ) / q(zᵢ|x),  zᵢ ~ q(z|x).

    ``model`` offers ``encode``, ``decode`` and ``prior`` (the VAE's Python API).
    The k samples are decoded in chunks of at most ``max_images`` images, so memory stays
    bounded for any k. k = 1 is a one-sample ELBO estimate (equal to −ELBO in
    expectation); the estimate decreases towards −log p(x) as k grows.
    Returns ``(B,)`` nats per image.
    """
    if k < 1:
        raise ValueError(f"the number of importance samples must be >= 1, got {k}")
    q = model.encode(x)  # batch (B,), event (D,)
    prior = model.prior()
    batch = x.shape[0]
    chunk = max(1, max_images // batch)
    log_w = []
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        z = q.sample((m,))  # (m, B, D)
        px = model.decode(z.flatten(0, 1))  # batch (m * B,)
        log_px = px.log_prob(x.expand(m, *x.shape).flatten(0, 1)).view(m, batch)
        log_w.append(log_px + prior.log_prob(z) - q.log_prob(z))  # (m, B)
    log_w = torch.cat(log_w)  # (k, B)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))
