"""Fully connected encoder and decoder: the classic MNIST VAE (Kingma & Welling, 2014)."""

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from vae_lightning.errors import ConfigError
from vae_lightning.networks.checks import check_image_shape, check_input

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def activation_layer(name: str) -> nn.Module:
    """The activation called ``name`` (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], last_activation: bool = False, activation: str = "relu") -> nn.Sequential:
    """Linear layers through ``sizes`` with activations between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers.append(activation_layer(activation))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """``(B, C, H, W)`` -> ``(B, 2 * latent_dim)``: flatten, hidden layers, then μ ‖ log σ²."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (512, 256),
        activation: str = "relu",
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.net = mlp([prod(self.image_shape), *hidden_dims, 2 * latent_dim], activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.image_shape, type(self).__name__)
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """``(B, latent_dim)`` -> ``(B, out_channels, H, W)``: the encoder's hidden sizes reversed."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        hidden_dims: Sequence[int] = (256, 512),
        activation: str = "relu",
    ):
        super().__init__()
        _, h, w = check_image_shape(image_shape)
        self.latent_dim = latent_dim
        self.out_shape = (out_channels, h, w)
        self.net = mlp([latent_dim, *hidden_dims, prod(self.out_shape)], activation=activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, (self.latent_dim,), type(self).__name__)
        return self.net(z).view(-1, *self.out_shape)
