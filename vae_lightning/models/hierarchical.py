"""A top-down hierarchical VAE in the style of VDVAE (Child 2021, "Very Deep VAEs").

Bottom-up, the ``Encoder`` keeps one activation per resolution. Top-down, a state starts
as a learned tensor at the coarsest decoder resolution; each latent group l (a
``TopDownBlock``) reads its prior p(z_l | z_<l) from the state, its posterior
q(z_l | x, z_<l) from the state and the encoder's activation at its resolution, and adds
z_l back into the state. Between resolutions the state is upsampled (nearest) and a
learned bias is added. After the last group, ``output_blocks`` residual blocks at image
resolution and a 1x1 conv give the likelihood's parameters.

The architecture is a config string: ``encoder_blocks="28x1,14x2,7x2,1x1"`` means one
block at 28x28, two at 14x14, … (bottom-up, resolutions decreasing); ``decoder_blocks=
"1x1,7x3,14x3"`` means one latent group at 1x1, three at 7x7, three at 14x14 (top-down,
resolutions increasing, each one the encoder has). All numbers are nats per image; the
KL, log q, log p and log p(x|z) are computed in float32. The latent tools (``encode``,
``decode``, ``prior``) see the top group, the one that depends on x only.
"""

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import build_likelihood
from vae_lightning.models.base import LatentVariableModel, Noise, Terms, standard_noise, temperatures
from vae_lightning.networks.blocks import Encoder, TopDownDecoder, bottleneck_width
from vae_lightning.networks.checks import check_image_shape, check_input

Activations = dict[int, torch.Tensor]  # resolution R -> encoder activation (B, width, R, R)


def parse_blocks(spec: str, key: str, example: str) -> list[tuple[int, int]]:
    """``"28x1,14x2"`` -> [(28, 1), (14, 2)]: (resolution, blocks) pairs, both >= 1."""
    try:
        stages = [tuple(int(v) for v in part.split("x")) for part in str(spec).split(",")]
        valid = all(len(s) == 2 and min(s) >= 1 for s in stages)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"model.{key}={spec!r}: expected comma-separated RESOLUTIONxBLOCKS entries with "
            f"numbers >= 1, e.g. {example!r}"
        )
    return [(s[0], s[1]) for s in stages]


def check_stages(encoder: list, decoder: list, size: int, spec: tuple[str, str]) -> None:
    """Encoder resolutions strictly decreasing from the image size; decoder resolutions
    strictly increasing, each among the encoder's."""
    enc = [r for r, _ in encoder]
    dec = [r for r, _ in decoder]
    if enc[0] != size or any(a <= b for a, b in pairwise(enc)):
        raise ConfigError(
            f"model.encoder_blocks={spec[0]!r}: resolutions must start at the image size {size} and "
            f"strictly decrease, e.g. '{size}x1,{max(1, size // 2)}x2,1x1'"
        )
    if any(a >= b for a, b in pairwise(dec)) or not set(dec) <= set(enc):
        raise ConfigError(
            f"model.decoder_blocks={spec[1]!r}: resolutions must strictly increase and each be one of "
            f"the encoder resolutions {enc} (model.encoder_blocks)"
        )


def check_sizes(**sizes: int) -> None:
    """Each size an integer, >= 0 for ``output_blocks`` and >= 1 otherwise."""
    for key, value in sizes.items():
        low = 0 if key == "output_blocks" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"model.{key}={value!r}: must be an integer >= {low}")


def gaussian_kl(q_mean, q_std, p_mean, p_std) -> torch.Tensor:
    """KL(N(q_mean, q_std²) ‖ N(p_mean, p_std²)) per element, nats."""
    ratio = q_std / p_std
    return 0.5 * (ratio.square() + ((q_mean - p_mean) / p_std).square() - 1) - ratio.log()


class HierarchicalVAE(LatentVariableModel):
    """VDVAE-style top-down VAE on square ``image_shape`` (C, S, S) images; see the module
    docstring for the architecture strings. ``width``: channels of the residual stream;
    ``bottleneck``: inner width of a block as a fraction of ``width``; ``latent_channels``:
    channels of each group's z (a group at resolution R has latent_channels * R² units)."""

    @property
    def group_sizes(self) -> list[int]:
        """Latent units per group, latent_channels x R², top-down."""
        return self._group_sizes

    def __init__(
        self,
        image_shape: Sequence[int],
        likelihood: str = "bernoulli",
        likelihood_sigma: float | str = 0.1,
        likelihood_mixtures: int = 1,
        width: int = 32,
        bottleneck: float = 0.25,
        latent_channels: int = 8,
        encoder_blocks: str = "28x1,14x2,7x2,1x1",
        decoder_blocks: str = "1x1,7x3,14x3",
        output_blocks: int = 1,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        channels, size, other = self.image_shape
        if size != other:
            raise ConfigError(f"HierarchicalVAE needs square images, got image_shape={self.image_shape}")
        check_sizes(width=width, latent_channels=latent_channels, output_blocks=output_blocks)
        if not (isinstance(bottleneck, int | float) and bottleneck > 0):
            raise ConfigError(f"model.bottleneck={bottleneck!r}: must be a number > 0 (e.g. 0.25)")
        encoder = parse_blocks(encoder_blocks, "encoder_blocks", "28x1,14x2,7x2,1x1")
        decoder = parse_blocks(decoder_blocks, "decoder_blocks", "1x1,7x3,14x3")
        check_stages(encoder, decoder, size, (encoder_blocks, decoder_blocks))
        shape = self.image_shape
        self.likelihood = build_likelihood(likelihood, shape, likelihood_sigma, likelihood_mixtures)
        mid = bottleneck_width(width, bottleneck)
        resolutions = [r for r, n in decoder for _ in range(n)]  # one per group, top-down
        self.num_groups = len(resolutions)
        self.latent_dim = latent_channels * resolutions[0] ** 2
        self._group_sizes = [latent_channels * r**2 for r in resolutions]
        self.encoder = Encoder(channels, width, mid, encoder)
        out_channels = channels * self.likelihood.params_per_channel
        self.decoder = TopDownDecoder(
            width, mid, latent_channels, resolutions, size, out_channels, output_blocks
        )

    # --- training and evaluation --------------------------------------------------------
    def posterior_context(self, x: torch.Tensor) -> Activations:
        check_input(x, self.image_shape, type(self).__name__)
        return self.encoder(x)

    def terms(self, x: torch.Tensor, generator: torch.Generator | None = None, report: bool = True) -> Terms:
        """recon (B,) = −log p(x|z); kl (B, groups): analytic KL(q(z_l|x, z_<l) ‖ p(z_l|z_<l))
        per group at the sampled z_<l (a one-sample estimate of the hierarchy's KL)."""
        acts = self.posterior_context(x)
        params, draws = self.decoder("sample", acts, self.prior_noise(len(x), generator))
        recon = self.likelihood.nll(params.float(), x)
        kls = [gaussian_kl(*draw[1:]) for draw in draws]  # (B, zc, R, R) each
        kl = torch.stack([k.flatten(1).sum(1) for k in kls], dim=1)  # (B, groups)
        stats = [(d[1].flatten(1), k.flatten(1)) for d, k in zip(draws, kls, strict=True)]  # views
        return Terms(recon, kl, stats if report else [])

    def log_weight_terms(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log w = log p(x|z) + Σ_l [log p(z_l|z_<l) − log q(z_l|x, z_<l)], (k, B), with sample
        i of image b at index i * B + b of one top-down pass over k * B; with k = 1 it draws
        the same ε as ``terms``."""
        check_input(x, self.image_shape, type(self).__name__)
        acts = self.posterior_context(x) if context is None else context
        acts = {res: a.repeat(k, 1, 1, 1) for res, a in acts.items()}  # (k * B, width, R, R)
        noise = self.prior_noise(k * len(x), generator)
        params, draws = self.decoder("sample", acts, noise)
        log_px = -self.likelihood.nll(params.float(), x.repeat(k, 1, 1, 1)).view(k, len(x))
        log_w = log_px
        for eps, (z, _, q_std, p_mean, p_std) in zip(noise, draws, strict=True):
            # log N(z; p) − log N(z; q), the 2π terms cancel; (z − q mean) / q std = ε
            ratio = (q_std / p_std).log() + 0.5 * (eps.square() - ((z - p_mean) / p_std).square())
            log_w = log_w + ratio.flatten(1).sum(1).view(k, len(x))
        return log_w, log_px

    def reconstruct(self, x: torch.Tensor) -> Distribution:
        """p(x | z_l = mean of q(z_l | x, z_<l) at every group): no noise."""
        params, _ = self.decoder("mean", self.posterior_context(x))
        return self.likelihood(params.float())

    # --- sampling -----------------------------------------------------------------------
    def prior_noise(self, n: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """ε ~ N(0, I) per group, top-down: [(n, latent_channels, R_l, R_l), …], float32 (the
        parameters' dtype) on the model's device; ``terms`` and the log weights draw theirs
        here too, in the same order."""
        zc = self.decoder.groups[0].latent_channels
        shapes = [(n, zc, g.resolution, g.resolution) for g in self.decoder.groups]
        return [standard_noise(generator, shape, self.decoder.start) for shape in shapes]

    def decode_noise(
        self, noise: Noise, temperature: float | list[float] = 1.0
    ) -> tuple[Distribution, torch.Tensor]:
        """p(x|z) for z_l = p mean + T_l · p std · ε_l, and the top z (n, latent_dim)."""
        temps = temperatures(temperature, self.num_groups)
        if isinstance(noise, torch.Tensor) or len(noise) != self.num_groups:
            name = type(self).__name__
            raise ValueError(f"{name} needs a list of {self.num_groups} noise tensors (see prior_noise)")
        scaled = [t * eps.to(self.decoder.start) for t, eps in zip(temps, noise, strict=True)]
        params, draws = self.decoder("prior", noise=scaled)
        return self.likelihood(params.float()), draws[0][0].flatten(1)

    # --- the latent tools: the top group ------------------------------------------------
    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z_top | x), event (latent_dim,)."""
        top, start = self.decoder.groups[0], self.decoder.start
        acts = self.posterior_context(x)
        *_, mean, std = top(start.repeat(len(x), 1, 1, 1), acts[top.resolution])
        return Independent(Normal(mean.flatten(1), std.flatten(1)), 1)

    def prior(self) -> Distribution:
        """p(z_top), event (latent_dim,): N(0, I) at initialisation, learned afterwards."""
        mean, std, *_ = self.decoder.groups[0](self.decoder.start)  # (1, zc, R0, R0)
        return Independent(Normal(mean.flatten(), std.flatten()), 1)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x | z_top = z (B, latent_dim), every lower group at its prior mean)."""
        check_input(z, (self.latent_dim,), f"{type(self).__name__}.decode")
        top = self.decoder.groups[0]
        z_top = z.to(self.decoder.start).view(len(z), top.latent_channels, top.resolution, top.resolution)
        params, _ = self.decoder("decode", z_top=z_top)
        return self.likelihood(params.float())

    def networks(self) -> list[nn.Module]:
        """What torch.compile compiles: the bottom-up encoder and the whole top-down decoder,
        each one graph (all noise is drawn before the decoder runs)."""
        return [self.encoder, self.decoder]
