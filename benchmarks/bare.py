"""The floor the framework is measured against: a bare PyTorch training loop, written
out here with nothing from Lightning, for the same encoder and decoder ``nn.Module``s.

Data is a uint8 tensor ``(N, C, H, W)`` in memory, shuffled with ``randperm`` and
indexed a batch at a time; each batch becomes floats in [0, 1] and, for binary data, a
fresh Bernoulli draw (dynamic binarisation) -- exactly what the DataModules do. The loss
is the negative ELBO, mean over the batch: −log p(x|z) (Bernoulli logits, or a Gaussian
with fixed σ, mean = the decoder output) plus the closed-form KL to N(0, I).
"""

import math
import time

import torch
import torch.nn.functional as F
from torch import nn


def negative_elbo(
    encoder: nn.Module, decoder: nn.Module, x: torch.Tensor, likelihood: str, sigma: float = 0.1
) -> torch.Tensor:
    """−ELBO per image ``(B,)`` in nats, one reparameterised sample."""
    mu, logvar = encoder(x).chunk(2, dim=1)  # (B, D) each
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    out = decoder(z)  # (B, C, H, W)
    if likelihood == "bernoulli":
        recon = F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
    elif likelihood == "gaussian":
        log_norm = math.log(sigma) + 0.5 * math.log(2 * math.pi)
        recon = (0.5 * ((x - out) / sigma) ** 2 + log_norm).flatten(1).sum(1)
    else:
        raise ValueError(f"the bare loop has bernoulli and gaussian, not {likelihood}")
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return recon + kl


def clip(params: list[torch.Tensor], clip_norm: float | None, read_norm: bool = False) -> None:
    """The gradients' total norm, used the way the framework's step guard uses it: read on
    the host (free on a CPU; on a GPU only with ``read_norm``, the guard's one sync per
    step), and the gradients rescaled to ``clip_norm`` only when it is exceeded (always
    when the norm stays on the GPU, ``clip_grad_norm_``'s way)."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    value = float(norm) if read_norm or not norm.is_cuda else None
    if clip_norm is not None and (value is None or value > clip_norm):
        torch.nn.utils.clip_grads_with_norm_(params, clip_norm, norm)


def batches(images: torch.Tensor, batch_size: int, binarize: bool, generator: torch.Generator):
    """Endless shuffled training batches, floats in [0, 1] (binarised afresh when asked)."""
    while True:
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):  # whole batches only
            x = images[order[i : i + batch_size]].float().div_(255)
            yield torch.bernoulli(x) if binarize else x


def train_steps(
    encoder: nn.Module,
    decoder: nn.Module,
    optimizer: torch.optim.Optimizer,
    data,
    steps: int,
    likelihood: str,
    sync_after: tuple[int, ...] = (),
    clip_norm: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    read_norm: bool = False,
) -> list[float]:
    """Run ``steps`` optimizer steps; return ``time.perf_counter()`` after each one (on a
    GPU, stamps are exact only after the steps in ``sync_after``, which wait for the
    device). ``clip_norm``, ``read_norm``: the gradient norm before each step (``clip``);
    ``scheduler``: stepped after each step."""
    encoder.train(), decoder.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stamps = []
    cuda = next(encoder.parameters()).is_cuda
    for step in range(steps):
        x = next(data)
        loss = negative_elbo(encoder, decoder, x, likelihood).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None or read_norm:
            clip(params, clip_norm, read_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if cuda and step + 1 in sync_after:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return stamps
