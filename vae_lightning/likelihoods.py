"""Families for p(x|z) as ``torch.distributions`` objects.

A likelihood turns the decoder's output ``(B, params_per_channel * C, H, W)`` into a
distribution with batch shape ``(B,)`` and event shape ``(C, H, W)``, so
``px.log_prob(x)`` is log p(x|z) in nats per image, summed over pixels, and
``px.mean`` is the image a user looks at (floats in [0, 1]).

Argument validation is off in the hot path: it would force a device sync per step.
Add a family by subclassing ``Likelihood`` and naming it in ``LIKELIHOODS``.
"""

import torch
from torch.distributions import Bernoulli, Distribution, Independent

from vae_lightning.errors import ConfigError


class Likelihood:
    """Maps decoder outputs to p(x|z). Subclasses set ``params_per_channel``."""

    name: str = ""
    params_per_channel: int = 1

    def __call__(self, params: torch.Tensor) -> Distribution:
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ConfigError when a batch of data lies outside this family's support."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli per pixel, parameterised by logits; for binary images.

    log p(x|z) = Σ_pixels [x log σ(l) + (1 - x) log σ(-l)], nats per image.
    """

    name = "bernoulli"
    params_per_channel = 1

    def __call__(self, logits: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def check_data(self, x: torch.Tensor) -> None:
        if not torch.all((x == 0) | (x == 1)):
            raise ConfigError(
                "model.likelihood=bernoulli needs binary pixels (0 or 1), but the data has "
                f"values in [{x.min().item():.3g}, {x.max().item():.3g}]. Binarise the data "
                "(data.binarize=true) or choose a likelihood for continuous pixels."
            )


LIKELIHOODS: dict[str, type[Likelihood]] = {cls.name: cls for cls in (BernoulliLikelihood,)}


def build_likelihood(name: str, **kwargs) -> Likelihood:
    """The likelihood called ``name``; a ValueError lists the valid names otherwise."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown model.likelihood={name!r}; valid: {', '.join(sorted(LIKELIHOODS))}")
    return LIKELIHOODS[name](**kwargs)
