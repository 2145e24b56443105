"""Residual encoder and decoder: pre-activation residual blocks at each resolution,
stride-2 convs between them (down), transposed convs (up) in the decoder.

Like the conv nets, ``channels`` lists the widths per level and the image size picks how
many levels are used (28 -> 14 -> 7, 64 -> 32 -> 16 -> 8 -> 4).
"""

from collections.abc import Sequence

import torch
from torch import nn

from vae_lightning.networks.checks import check_image_shape, check_input
from vae_lightning.networks.conv import conv_levels


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs, same width and resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _blocks(channels: int, n: int) -> list[nn.Module]:
    return [ResidualBlock(channels) for _ in range(n)]


class ResNetEncoder(nn.Module):
    """``(B, C, S, S)`` -> ``(B, 2 * latent_dim)``."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        blocks_per_level: int = 1,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        depth, side = conv_levels(self.image_shape, channels, type(self).__name__)
        widths = list(channels[:depth])
        layers: list[nn.Module] = [nn.Conv2d(self.image_shape[0], widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            layers += _blocks(width, blocks_per_level)
            out = widths[min(i + 1, depth - 1)]
            layers.append(nn.Conv2d(width, out, 4, stride=2, padding=1))  # halve the resolution
        layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] * side * side, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.image_shape, type(self).__name__)
        return self.head(self.features(x).flatten(1))


class ResNetDecoder(nn.Module):
    """``(B, latent_dim)`` -> ``(B, out_channels, S, S)``, the encoder's mirror image
    (``channels`` in the encoder's order, used widest first)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        blocks_per_level: int = 1,
    ):
        super().__init__()
        shape = check_image_shape(image_shape)
        self.latent_dim = latent_dim
        depth, self.side = conv_levels(shape, channels, type(self).__name__)
        widths = list(channels[:depth])[::-1]  # widest first
        self.c0 = widths[0]
        self.head = nn.Linear(latent_dim, self.c0 * self.side**2)
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += _blocks(width, blocks_per_level)
            out = widths[min(i + 1, depth - 1)]
            layers += [nn.ReLU(), nn.ConvTranspose2d(width, out, 4, stride=2, padding=1)]  # double it
        layers += [nn.ReLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, (self.latent_dim,), type(self).__name__)
        return self.features(self.head(z).view(-1, self.c0, self.side, self.side))
