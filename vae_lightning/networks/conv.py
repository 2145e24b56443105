"""DCGAN-style convolutional encoder and decoder.

The encoder halves the resolution with each strided 4x4 conv until the feature map is
small (28 -> 14 -> 7, 64 -> 32 -> 16 -> 8 -> 4, 128 -> ... -> 4), then one linear layer
gives μ ‖ log σ². The decoder is its mirror image. ``channels`` lists the widths from the
first level on; the image size decides how many of them are used, so one config serves
28x28 grey and 64x64 RGB images. ``hidden_dims`` optionally puts fully connected layers
between the feature map and the latent code (both ways), which is cheap and helps on MNIST.
"""

from collections.abc import Sequence

import torch
from torch import nn

from vae_lightning.errors import ConfigError
from vae_lightning.networks.checks import check_image_shape, check_input
from vae_lightning.networks.mlp import mlp

MIN_SIDE = 4  # stop halving before the feature map gets smaller than this


def conv_levels(image_shape: tuple[int, int, int], channels: Sequence[int], who: str) -> tuple[int, int]:
    """(number of stride-2 levels, side of the smallest feature map) for this image size."""
    _, h, w = image_shape
    if h != w:
        raise ConfigError(f"{who} needs square images, got height {h} and width {w}")
    depth, side = 0, h
    while depth < len(channels) and side % 2 == 0 and side // 2 >= MIN_SIDE:
        depth, side = depth + 1, side // 2
    if depth == 0:
        raise ConfigError(
            f"{who} cannot halve a {h}x{w} image (it needs an even size of at least {2 * MIN_SIDE}); "
            "resize the data (data.image_size) or use model=vae"
        )
    return depth, side


class ConvEncoder(nn.Module):
    """``(B, C, S, S)`` -> ``(B, 2 * latent_dim)``."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        hidden_dims: Sequence[int] = (),
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        depth, side = conv_levels(self.image_shape, channels, type(self).__name__)
        layers: list[nn.Module] = []
        c_in = self.image_shape[0]
        for c_out in channels[:depth]:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = mlp([c_in * side * side, *hidden_dims, 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.image_shape, type(self).__name__)
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """``(B, latent_dim)`` -> ``(B, out_channels, S, S)``: linear to the smallest feature
    map, then transposed convs that double the resolution. ``channels`` is given in the
    encoder's order (narrowest first) and used in reverse."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        hidden_dims: Sequence[int] = (),
    ):
        super().__init__()
        shape = check_image_shape(image_shape)
        self.latent_dim = latent_dim
        depth, self.side = conv_levels(shape, channels, type(self).__name__)
        widths = list(channels[:depth])[::-1]  # widest first
        self.c0 = widths[0]
        self.head = mlp([latent_dim, *hidden_dims, self.c0 * self.side**2], last_activation=True)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, (self.latent_dim,), type(self).__name__)
        h = self.head(z).view(-1, self.c0, self.side, self.side)  # (B, C0, s, s)
        return self.features(h)
