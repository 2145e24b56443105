"""Speed options of the VAE's networks, set in the model config: ``model.channels_last``
(NHWC memory layout, faster convolutions on CPUs and on tensor-core GPUs) and
``model.compile`` (``torch.compile`` of the encoder and decoder, in place, so checkpoints
keep the same keys and load without it). Mixed precision is a Trainer setting
(``trainer.precision=bf16-mixed``); the VAE computes the KL and log p(x|z) in float32.
Also the one process-wide fix applied on import (``skip_failing_nvml_probe``)."""

import ctypes
import os

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


NVML_PROBE = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_failing_nvml_probe() -> bool:
    """Turn off torch's NVML-based CUDA check where NVML cannot be loaded; True if it did.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` so that asking whether
    CUDA is available does not initialise CUDA before DDP forks. torch then tries to load
    ``libnvidia-ml.so.1`` on *every* ``torch.cuda.is_available()`` call -- the optimizers
    ask once or more per step -- and on a machine without an NVIDIA driver each failed
    attempt costs ~0.1 ms: 1 ms per step of the MLP on MNIST on 2 CPU cores (6 %). Where
    the library does not load, torch falls back to the CUDA runtime's count on every call
    anyway, so the variable protects nothing there and is removed. Machines with a driver
    keep it, and so do ROCm builds (their check asks AMD's library, not NVML).
    """
    if os.environ.get(NVML_PROBE) != "1" or torch.version.hip:
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # the library torch's check loads
    except OSError:
        del os.environ[NVML_PROBE]
        return True
    return False
