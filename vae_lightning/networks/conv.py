"""DCGAN-style convolutional encoder and decoder.

The encoder halves the resolution with each strided 4x4 conv (28 -> 14 -> 7, or
64 -> 32 -> 16 -> 8 -> 4), then one linear layer gives μ ‖ log σ². The decoder is its
mirror image. The depth is ``len(channels)``, so the same class serves 28x28 grey and
64x64 RGB images: only the config changes.
"""

from collections.abc import Sequence

import torch
from torch import nn

from vae_lightning.errors import ConfigError
from vae_lightning.networks.checks import check_image_shape, check_input


def _feature_size(image_shape: tuple[int, int, int], depth: int, who: str) -> int:
    """Side of the smallest feature map; the image must halve cleanly ``depth`` times."""
    _, h, w = image_shape
    if h != w:
        raise ConfigError(f"{who} needs square images, got height {h} and width {w}")
    if h % (2**depth) != 0:
        raise ConfigError(
            f"{who} with {depth} stride-2 layers needs an image size divisible by {2**depth}, "
            f"got {h}. Use {depth - 1} channel entries (e.g. [32, 64] for 28x28) "
            "or a size that halves cleanly (e.g. 64)."
        )
    return h // 2**depth


class ConvEncoder(nn.Module):
    """``(B, C, S, S)`` -> ``(B, 2 * latent_dim)``."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64)):
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        side = _feature_size(self.image_shape, len(channels), type(self).__name__)
        layers: list[nn.Module] = []
        c_in = self.image_shape[0]
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * side * side, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.image_shape, type(self).__name__)
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """``(B, latent_dim)`` -> ``(B, out_channels, S, S)``: linear to a small map, then
    transposed convs that double the resolution (``channels`` given widest-first)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        channels: Sequence[int] = (64, 32),
    ):
        super().__init__()
        shape = check_image_shape(image_shape)
        self.latent_dim = latent_dim
        self.side = _feature_size(shape, len(channels), type(self).__name__)
        self.c0 = channels[0]
        self.head = nn.Sequential(nn.Linear(latent_dim, self.c0 * self.side**2), nn.ReLU())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(channels[-1], out_channels, 4, stride=2, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, (self.latent_dim,), type(self).__name__)
        h = self.head(z).view(-1, self.c0, self.side, self.side)  # (B, C0, s, s)
        return self.features(h)
