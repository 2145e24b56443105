"""Families for p(x|z) as ``torch.distributions`` objects.

A likelihood turns the decoder's output ``(B, params_per_channel * C, H, W)`` into a
distribution with batch shape ``(B,)`` and event shape ``(C, H, W)``, so
``px.log_prob(x)`` is log p(x|z) in nats per image, summed over pixels, and
``px.mean`` is the image a user looks at (floats in [0, 1]).

Likelihoods are ``nn.Module``s so that learned parameters (a Gaussian σ) train with the
model. Argument validation is off in the hot path: it would force a device sync per step.
Add a family by subclassing ``Likelihood`` and naming it in ``LIKELIHOODS``.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, constraints

from vae_lightning.errors import ConfigError

BINS = 255  # 8-bit pixels: x ∈ {0, 1/255, …, 1}


class Likelihood(nn.Module):
    """Maps decoder outputs to p(x|z). Subclasses set ``name`` and ``params_per_channel``."""

    name: str = ""
    params_per_channel: int = 1
    discrete: bool = False  # draws x ~ p(x|z) lie in the data space (binary, 8-bit levels)
    discrete_8bit: bool = False  # log p is a probability of 8-bit pixels: bits/dim are defined
    support: tuple[float, float] = (0.0, 1.0)  # pixel values the family can explain

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """−log p(x|z) in nats per image, ``(B,)``: ``-self(params).log_prob(x)``. Families
        override it with the same number computed without building distribution objects
        (the training step's path)."""
        return -self(params).log_prob(x)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ConfigError when a batch of data lies outside this family's support."""
        lo, hi = x.min().item(), x.max().item()
        if lo < self.support[0] or hi > self.support[1]:
            raise ConfigError(
                f"model.likelihood={self.name} covers pixel values in {list(self.support)}, but the "
                f"data has values in [{lo:.3g}, {hi:.3g}]; rescale the data or choose another likelihood"
            )


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli per pixel, parameterised by logits; for binary images.

    log p(x|z) = Σ_pixels [x log σ(l) + (1 - x) log σ(-l)], nats per image.
    """

    name = "bernoulli"
    discrete = True

    def forward(self, logits: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # what Bernoulli.log_prob negates, summed over (C, H, W) in the same order: bit-identical
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)

    def check_data(self, x: torch.Tensor) -> None:
        if not torch.all((x == 0) | (x == 1)):
            raise ConfigError(
                "model.likelihood=bernoulli needs binary pixels (0 or 1), but the data has "
                f"values in [{x.min().item():.3g}, {x.max().item():.3g}]. Binarise the data "
                "(data.binarize=true) or choose a likelihood for grey levels (gaussian, logistic)."
            )


class GaussianLikelihood(Likelihood):
    """N(x; μ(z), σ²) per pixel, a density on data in [0, 1] (nats per image, not bits/dim).

    ``sigma``: a fixed float, ``"learned_channel"`` (one σ per channel) or
    ``"learned_pixel"`` (one σ per pixel and channel); learned σ start at 0.1.
    """

    name = "gaussian"
    SIGMAS = ("learned_channel", "learned_pixel")

    def __init__(self, image_shape: Sequence[int], sigma: float | str = 0.1):
        super().__init__()
        c, h, w = image_shape
        if isinstance(sigma, str):
            if sigma not in self.SIGMAS:
                raise ConfigError(
                    f"model.likelihood_sigma={sigma!r}: give a number > 0 or one of {', '.join(self.SIGMAS)}"
                )
            shape = (c, 1, 1) if sigma == "learned_channel" else (c, h, w)
            self.log_sigma = nn.Parameter(torch.full(shape, math.log(0.1)))
        else:
            if not float(sigma) > 0:
                raise ConfigError(f"model.likelihood_sigma must be > 0, got {sigma}")
            self.register_buffer("log_sigma", torch.full((1, 1, 1), math.log(float(sigma))))
        self.support = (-math.inf, math.inf)

    def forward(self, mean: torch.Tensor) -> Distribution:
        scale = self.log_sigma.clamp(-9.0, 3.0).exp().expand_as(mean)
        return Independent(Normal(mean, scale, validate_args=False), 3, validate_args=False)


class DiscretizedLogisticMixture(Distribution):
    """A mixture of k logistics discretised to the 256 levels of 8-bit pixels, per pixel
    (Salimans et al., 2017): P(x) = Σ_k π_k [σ((x⁺ − μ_k)/s_k) − σ((x⁻ − μ_k)/s_k)], with the
    edge bins taking the tails. Works on x ∈ [0, 1] rescaled to [−1, 1]; bin half-width 1/255.

    ``logit_weights``, ``means``, ``log_scales``: ``(k, *shape)``.
    """

    arg_constraints: dict = {}
    support = constraints.interval(0.0, 1.0)

    def __init__(self, logit_weights: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor):
        self.log_weights = F.log_softmax(logit_weights, dim=0)
        self.means, self.log_scales = means, log_scales.clamp(min=-7.0)
        super().__init__(batch_shape=means.shape[1:], validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        y = value * 2 - 1  # [0, 1] -> [-1, 1]
        centered = y - self.means  # (k, *shape)
        inv_s = torch.exp(-self.log_scales)
        plus, minus = inv_s * (centered + 1 / BINS), inv_s * (centered - 1 / BINS)
        log_cdf_plus = plus - F.softplus(plus)  # log σ(plus): the lowest bin
        log_sf_minus = -F.softplus(minus)  # log (1 − σ(minus)): the highest bin
        delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * centered  # when the bin mass underflows, density × bin width
        log_mid = mid - self.log_scales - 2 * F.softplus(mid) + math.log(2 / BINS)
        log_inner = torch.where(delta > 1e-5, delta.clamp(min=1e-12).log(), log_mid)
        log_p = torch.where(y < -0.999, log_cdf_plus, torch.where(y > 0.999, log_sf_minus, log_inner))
        return torch.logsumexp(log_p + self.log_weights, dim=0)

    @property
    def mean(self) -> torch.Tensor:
        """The mixture of the component locations, in [0, 1] (what a user looks at)."""
        loc = (self.log_weights.exp() * self.means).sum(0)
        return ((loc + 1) / 2).clamp(0, 1)

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        """Pick a component per pixel, draw from its logistic, round to the 8-bit grid."""
        with torch.no_grad():
            sample_shape = torch.Size(sample_shape)
            k = torch.distributions.Categorical(logits=self.log_weights.movedim(0, -1)).sample(sample_shape)
            onehot = F.one_hot(k, len(self.means)).movedim(-1, 0).to(self.means.dtype)  # (k, *S, *batch)
            extra = (1,) * len(sample_shape)  # broadcast the parameters over the sample dims
            loc = (onehot * self.means.view(len(self.means), *extra, *self.batch_shape)).sum(0)
            log_s = (onehot * self.log_scales.view(len(self.means), *extra, *self.batch_shape)).sum(0)
            u = torch.rand_like(loc).clamp(1e-5, 1 - 1e-5)
            y = loc + log_s.exp() * (u.log() - (-u).log1p())  # inverse CDF of the logistic
            return torch.round((y.clamp(-1, 1) + 1) / 2 * BINS) / BINS


class LogisticLikelihood(Likelihood):
    """Discretised logistic (mixture of ``mixtures`` components) over 8-bit pixels: the
    standard for natural images; log p is a probability, so bits/dim are defined."""

    name = "logistic"
    discrete = discrete_8bit = True

    def __init__(self, mixtures: int = 1):
        super().__init__()
        if mixtures < 1:
            raise ConfigError(f"model.likelihood_mixtures must be >= 1, got {mixtures}")
        self.mixtures = mixtures
        self.params_per_channel = 2 if mixtures == 1 else 3 * mixtures

    def forward(self, params: torch.Tensor) -> Distribution:
        b, _, h, w = params.shape
        p = params.view(b, self.params_per_channel, -1, h, w).movedim(1, 0)  # (P, B, C, H, W)
        if self.mixtures == 1:
            weights, means, log_scales = torch.zeros_like(p[:1]), p[:1], p[1:]
        else:
            weights, means, log_scales = p.chunk(3, dim=0)
        return Independent(DiscretizedLogisticMixture(weights, means, log_scales), 3, validate_args=False)

    def check_data(self, x: torch.Tensor) -> None:
        super().check_data(x)
        off_grid = (x * BINS - torch.round(x * BINS)).abs().max().item()
        if off_grid > 1e-3:
            raise ConfigError(
                "model.likelihood=logistic is discretised to 8-bit pixels, but the data is not on "
                f"the 1/255 grid (off by up to {off_grid:.3g}/255). Use data without interpolation "
                "after quantisation, or model.likelihood=gaussian."
            )


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (BernoulliLikelihood, GaussianLikelihood, LogisticLikelihood)
}


def build_likelihood(
    name: str, image_shape: Sequence[int] = (1, 28, 28), sigma: float | str = 0.1, mixtures: int = 1
) -> Likelihood:
    """The likelihood called ``name``; a ConfigError lists the valid names otherwise."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown model.likelihood={name!r}; valid: {', '.join(sorted(LIKELIHOODS))}")
    if name == "gaussian":
        return GaussianLikelihood(image_shape, sigma)
    if name == "logistic":
        return LogisticLikelihood(mixtures)
    return LIKELIHOODS[name]()
