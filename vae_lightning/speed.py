"""Speed options of the VAE's networks, set in the model config: ``model.channels_last``
(NHWC memory layout, faster convolutions on CPUs and on tensor-core GPUs) and
``model.compile`` (``torch.compile`` of the encoder and decoder, in place, so checkpoints
keep the same keys and load without it). Mixed precision is a Trainer setting
(``trainer.precision=bf16-mixed``); the VAE computes the KL and log p(x|z) in float32."""

import torch
from torch import nn


def apply_speed_options(networks: list[nn.Module], channels_last: bool) -> None:
    """Convert the networks' weights to the channels-last layout (4-D weights only)."""
    if channels_last:
        for net in networks:
            net.to(memory_format=torch.channels_last)


def compile_networks(networks: list[nn.Module]) -> None:
    """``torch.compile`` each network in place (its ``state_dict`` keys are unchanged)."""
    for net in networks:
        net.compile()


def channels_last_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images ``(B, C, H, W)`` in the layout the networks expect."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
